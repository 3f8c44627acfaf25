"""The embedded GFlash-style electromagnetic shower simulator (Grindhammer & Peters, hep-ex/0001020).

``simulate(geometry, energy_mev, theta, phi)`` fills any ``CylindricalGeometry`` with showers;
``simulate_to_file`` writes them in chunks to a CaloChallenge or Par04 HDF5 file.
"""

from caloforge.simulate.gflash import GFlashTuning
from caloforge.simulate.materials import MATERIALS, CalorimeterMaterial, get_material
from caloforge.simulate.simulator import GFlashConfig, simulate, simulate_to_file

__all__ = [
    "MATERIALS",
    "CalorimeterMaterial",
    "GFlashConfig",
    "GFlashTuning",
    "get_material",
    "simulate",
    "simulate_to_file",
]
