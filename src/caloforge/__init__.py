"""caloforge: generative models that stand in for Geant4 in calorimeter shower simulation."""

from caloforge.data import CONDITION_NAMES, ShowerSet
from caloforge.errors import CaloforgeError, InputError, UnknownNameError
from caloforge.geometry import PRESETS, CylindricalGeometry, LayerBinning, get_geometry

__all__ = [
    "CONDITION_NAMES",
    "PRESETS",
    "CaloforgeError",
    "CylindricalGeometry",
    "InputError",
    "LayerBinning",
    "ShowerSet",
    "UnknownNameError",
    "get_geometry",
]

__version__ = "0.1.0"
