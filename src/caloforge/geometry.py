"""Cylindrical calorimeter readouts and the one definition of voxel ordering.

A readout is a stack of layers along the shower axis z; each layer is divided into ``n_alpha`` equal
angular bins over [-pi, pi) and radial bins with edges in mm. Layers may differ (CaloChallenge dataset 1)
or all be the same (datasets 2 and 3, Par04); a layer with no radial bins is empty and has no voxels.

Voxel ordering (CaloChallenge, binning XML + ``XMLHandler.py``): the flat vector runs over layers, then
alpha bins, then radial bins fastest. For a regular geometry ``flat.reshape(N, n_layers, n_alpha, n_radial)``
gives the (z, alpha, r) grid. Par04/LEMURS files store the same grid as ``(N, R, PHI, Z)``; Par04's C++
reads a flat (Nr x Nphi x Nz) vector with z fastest, which is that array in C order. Every reshape between
these lives here and nowhere else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
from numpy.typing import NDArray

from caloforge.errors import InputError, UnknownNameError

__all__ = [
    "PRESETS",
    "CylindricalGeometry",
    "LayerBinning",
    "geometries_matching",
    "get_geometry",
]


@dataclass(frozen=True)
class LayerBinning:
    """Binning of one readout layer.

    Args:
        r_edges: radial bin edges in mm, increasing from 0; ``(0.0,)`` marks an empty layer.
        n_alpha: number of equal angular bins over [-pi, pi).
    """

    r_edges: tuple[float, ...]
    n_alpha: int

    def __post_init__(self) -> None:
        if len(self.r_edges) < 1 or any(b <= a for a, b in zip(self.r_edges, self.r_edges[1:], strict=False)):
            raise ValueError(f"r_edges must be strictly increasing, got {self.r_edges}")
        if self.n_alpha < 1:
            raise ValueError(f"n_alpha must be >= 1, got {self.n_alpha}")

    @property
    def n_radial(self) -> int:
        return len(self.r_edges) - 1

    @property
    def n_voxels(self) -> int:
        return self.n_radial * self.n_alpha if self.n_radial > 0 else 0


@dataclass(frozen=True)
class CylindricalGeometry:
    """A cylindrical readout: layers along z, each with alpha x radial bins.

    Args:
        name: preset name or a user's label.
        layers: one ``LayerBinning`` per readout layer, front to back.
        layer_thickness_mm: depth of each readout layer along z in mm (one value per layer).
        material: name of the calorimeter medium, a key of ``caloforge.simulate.materials``.
        description: one line a person reads in ``caloforge geometries``.
    """

    name: str
    layers: tuple[LayerBinning, ...]
    layer_thickness_mm: tuple[float, ...]
    material: str
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if len(self.layers) == 0:
            raise ValueError("a geometry needs at least one layer")
        if len(self.layer_thickness_mm) != len(self.layers):
            raise ValueError(
                f"layer_thickness_mm has {len(self.layer_thickness_mm)} values for {len(self.layers)} layers"
            )
        if self.n_voxels == 0:
            raise ValueError("a geometry needs at least one voxel")

    # ---- construction -------------------------------------------------------------------------------
    @classmethod
    def regular(
        cls,
        name: str,
        n_layers: int,
        n_alpha: int,
        r_edges_mm: tuple[float, ...] | list[float] | NDArray[np.floating],
        layer_thickness_mm: float,
        material: str,
        description: str = "",
    ) -> CylindricalGeometry:
        """Every layer binned alike: ``n_layers`` x ``n_alpha`` x ``len(r_edges_mm) - 1`` voxels."""
        layer = LayerBinning(tuple(float(r) for r in r_edges_mm), int(n_alpha))
        return cls(name, (layer,) * n_layers, (float(layer_thickness_mm),) * n_layers, material, description)

    # ---- sizes --------------------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @cached_property
    def n_voxels(self) -> int:
        return sum(layer.n_voxels for layer in self.layers)

    @cached_property
    def is_regular(self) -> bool:
        """True when every layer has the same binning, so the voxels form a (z, alpha, r) grid."""
        return all(layer == self.layers[0] for layer in self.layers)

    def _require_regular(self, what: str) -> LayerBinning:
        if not self.is_regular:
            raise ValueError(f"{what} needs a regular geometry; '{self.name}' has per-layer binning")
        return self.layers[0]

    @property
    def n_alpha(self) -> int:
        """Angular bins per layer (regular geometries only)."""
        return self._require_regular("n_alpha").n_alpha

    @property
    def n_radial(self) -> int:
        """Radial bins per layer (regular geometries only)."""
        return self._require_regular("n_radial").n_radial

    @property
    def r_edges_mm(self) -> NDArray[np.float64]:
        """Radial bin edges in mm, shape (n_radial + 1,) (regular geometries only)."""
        return np.asarray(self._require_regular("r_edges_mm").r_edges, dtype=np.float64)

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        """(n_layers, n_alpha, n_radial) of a regular geometry."""
        layer = self._require_regular("grid_shape")
        return (self.n_layers, layer.n_alpha, layer.n_radial)

    @property
    def depth_mm(self) -> float:
        """Total depth of the readout along z in mm."""
        return float(sum(self.layer_thickness_mm))

    @property
    def outer_radius_mm(self) -> float:
        """Largest radial edge over all layers in mm."""
        return max(layer.r_edges[-1] for layer in self.layers)

    def detector_difference(self, other: CylindricalGeometry) -> str | None:
        """What makes ``other`` a different detector rather than another readout of this one (layers,
        their depths, the medium or the outer radius), or ``None`` when only the cells within the layers
        differ: the condition for moving a readout-free model (point clouds) from one to the other."""
        checks = (
            ("layers", self.n_layers, other.n_layers),
            ("layer depths (mm)", self.layer_thickness_mm, other.layer_thickness_mm),
            ("medium", self.material, other.material),
            ("outer radius (mm)", self.outer_radius_mm, other.outer_radius_mm),
        )
        for what, mine, theirs in checks:
            if mine != theirs:
                return f"its {what} {theirs} differ from {self.name}'s {mine}"
        return None

    # ---- voxel ordering: the one definition ---------------------------------------------------------
    @cached_property
    def layer_offsets(self) -> NDArray[np.int64]:
        """Flat index where each layer starts, shape (n_layers + 1,); the last entry is n_voxels."""
        return np.concatenate([[0], np.cumsum([layer.n_voxels for layer in self.layers])]).astype(np.int64)

    def flat_index(self, layer: int, alpha: int, radial: int) -> int:
        """Flat voxel index of (layer, alpha bin, radial bin): radial fastest, then alpha, then layer."""
        binning = self.layers[layer]
        if not (0 <= alpha < binning.n_alpha and 0 <= radial < binning.n_radial):
            raise IndexError(
                f"(alpha={alpha}, radial={radial}) outside layer {layer} "
                f"({binning.n_alpha} alpha x {binning.n_radial} radial bins)"
            )
        return int(self.layer_offsets[layer]) + alpha * binning.n_radial + radial

    @cached_property
    def voxel_indices(self) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
        """(layer, alpha, radial) index of every flat voxel, each shape (n_voxels,)."""
        parts = []
        for index, binning in enumerate(self.layers):
            if binning.n_voxels == 0:
                continue
            alpha, radial = np.meshgrid(
                np.arange(binning.n_alpha), np.arange(binning.n_radial), indexing="ij"
            )
            layer = np.full(binning.n_voxels, index)
            parts.append(np.stack([layer, alpha.ravel(), radial.ravel()]))
        stacked = np.concatenate(parts, axis=1).astype(np.int64)
        return stacked[0], stacked[1], stacked[2]

    @cached_property
    def voxel_centres(self) -> dict[str, NDArray[np.float64]]:
        """Centre of every flat voxel, each shape (n_voxels,).

        Keys: ``r`` (mm, midpoint of the radial bin), ``alpha`` (radians, midpoint of the angular bin of
        linspace(-pi, pi, n_alpha + 1); 0 for a single bin), ``x`` = r cos(alpha) and ``y`` = r sin(alpha)
        (mm; the CaloChallenge's "eta" and "phi" directions), ``z`` (mm, middle of the layer).
        """
        layer, alpha, radial = self.voxel_indices
        r = np.empty(self.n_voxels)
        a = np.empty(self.n_voxels)
        z_starts = np.concatenate([[0.0], np.cumsum(self.layer_thickness_mm)])
        z_mid = 0.5 * (z_starts[:-1] + z_starts[1:])
        for index, binning in enumerate(self.layers):
            sel = layer == index
            if not sel.any():
                continue
            edges = np.asarray(binning.r_edges)
            a_edges = np.linspace(-math.pi, math.pi, binning.n_alpha + 1)
            r[sel] = 0.5 * (edges[:-1] + edges[1:])[radial[sel]]
            a[sel] = 0.5 * (a_edges[:-1] + a_edges[1:])[alpha[sel]]
        return {"r": r, "alpha": a, "x": r * np.cos(a), "y": r * np.sin(a), "z": z_mid[layer]}

    def _check_voxels(self, showers: NDArray[Any]) -> None:
        if showers.shape[-1] != self.n_voxels:
            raise InputError(
                None, "showers", f"last axis has {showers.shape[-1]} voxels",
                f"{self.n_voxels} for geometry '{self.name}'",
            )

    def to_grid(self, showers: NDArray[Any]) -> NDArray[Any]:
        """Flat (..., n_voxels) -> grid (..., n_layers, n_alpha, n_radial); a view, no copy."""
        self._check_voxels(showers)
        return showers.reshape(*showers.shape[:-1], *self.grid_shape)

    def from_grid(self, grid: NDArray[Any]) -> NDArray[Any]:
        """Grid (..., n_layers, n_alpha, n_radial) -> flat (..., n_voxels)."""
        if tuple(grid.shape[-3:]) != self.grid_shape:
            raise InputError(None, "showers", f"grid shape {grid.shape[-3:]}", f"{self.grid_shape}")
        return grid.reshape(*grid.shape[:-3], self.n_voxels)

    def to_par04(self, showers: NDArray[Any]) -> NDArray[Any]:
        """Flat (N, n_voxels) -> Par04/LEMURS (N, R, PHI, Z), C-contiguous (z fastest, as Par04 reads it)."""
        return np.ascontiguousarray(np.moveaxis(self.to_grid(showers), (-3, -2, -1), (-1, -2, -3)))

    def from_par04(self, showers: NDArray[Any]) -> NDArray[Any]:
        """Par04/LEMURS (N, R, PHI, Z) -> flat (N, n_voxels) in CaloChallenge order."""
        n_layers, n_alpha, n_radial = self.grid_shape
        if tuple(showers.shape[-3:]) != (n_radial, n_alpha, n_layers):
            raise InputError(
                None, "showers", f"shape (R, PHI, Z) = {showers.shape[-3:]}",
                f"{(n_radial, n_alpha, n_layers)} for geometry '{self.name}'",
            )
        grid = np.moveaxis(showers, (-3, -2, -1), (-1, -2, -3))
        return np.ascontiguousarray(grid).reshape(*showers.shape[:-3], self.n_voxels)

    # ---- serialisation (checkpoints, HDF5 attributes) -----------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain-types description; ``from_dict(to_dict())`` gives an equal geometry."""
        return {
            "name": self.name,
            "layers": [{"r_edges": list(b.r_edges), "n_alpha": b.n_alpha} for b in self.layers],
            "layer_thickness_mm": list(self.layer_thickness_mm),
            "material": self.material,
            "description": self.description,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CylindricalGeometry:
        return cls(
            name=str(data["name"]),
            layers=tuple(
                LayerBinning(tuple(map(float, b["r_edges"])), int(b["n_alpha"])) for b in data["layers"]
            ),
            layer_thickness_mm=tuple(map(float, data["layer_thickness_mm"])),
            material=str(data["material"]),
            description=str(data.get("description", "")),
        )


# ---- presets ---------------------------------------------------------------------------------------------
# CaloChallenge dataset 1 is the ATLAS barrel at 0.2 < |eta| < 0.25; its 24 layer slots are ATLAS's
# calorimeter samplings (0 PreSamplerB, 1-3 EMB1-3, 4-7 the EM end-cap, 8-11 HEC, 12-14 TileBar0-2,
# 15-17 TileGap, 18-20 TileExt, 21-23 FCal), of which the barrel showers fill 0-3 and 12(-14).
# The challenge's files give no depths, so they are encoded here from the published thicknesses at
# eta = 0 (ATLAS detector paper, JINST 3 (2008) S08003: sec. 5.2 and Fig. 5.4 for the LAr barrel, sec. 5.3
# for the Tile barrel), in radiation lengths X0:
#   PreSamplerB 11 mm of LAr = 11 / 140.0 = 0.079 X0 (PDG X0(LAr) = 14.0 cm);
#   EMB1 (strips) 4.3 X0, EMB2 16 X0, EMB3 2 X0 (together the "> 22 X0" of the barrel);
#   TileBar0-2 (layers A, BC, D) 1.5, 4.1 and 1.8 interaction lengths, converted with the Tile's
#   lambda / X0 = 9.20 (steel : scintillator = 4.7 : 1 by volume; PDG: Fe X0 17.57 mm, lambda_I 167.7 mm,
#   polystyrene X0 413.1 mm, lambda_I 770.7 mm: X0 = 21.1 mm, lambda = 194.4 mm), i.e. 13.8, 37.7, 16.6 X0;
# each times cosh(0.225) = 1.0254 for the longer path at the bin's centre. The GFlash simulator fills
# dataset 1 with ONE effective medium (``caloforge.simulate.materials``, "ATLAS": the accordion's
# 1.53 mm Pb + 4.2 mm LAr, X0 = ATLAS_X0_MM), so every depth below is in mm OF THAT MEDIUM: the layer's
# X0 times ATLAS_X0_MM (the Tile layers become Pb/LAr of equal X0; the end-cap, HEC, gap, extended and
# forward slots are not on a barrel shower's path and are 0 mm deep; the cryostat between EMB3 and Tile
# is left out). Radial bin edges stay the challenge's own.
ATLAS_X0_MM = 18.934006924326997  # X0 of the "ATLAS" effective medium (a test checks it against materials)
ATLAS_DATASET1_X0: dict[int, float] = {
    0: 11.0 / 140.0, 1: 4.3, 2: 16.0, 3: 2.0, 12: 1.5 * 9.20, 13: 4.1 * 9.20, 14: 1.8 * 9.20,
}
ATLAS_DATASET1_ETA = 0.225  # centre of the dataset's 0.2 < |eta| < 0.25


def _calochallenge_dataset1(name: str, pid_name: str, layers: dict[int, tuple[tuple[float, ...], int]]) -> (
    CylindricalGeometry
):
    """Dataset 1 (ATLAS-like, 24 layer slots, most empty), binning from code/binning_dataset_1_*.xml,
    depths from ``ATLAS_DATASET1_X0`` (comment above)."""
    binnings = tuple(LayerBinning(*layers.get(i, ((0.0,), 1))) for i in range(24))
    path = math.cosh(ATLAS_DATASET1_ETA)
    depths = tuple(round(ATLAS_DATASET1_X0.get(i, 0.0) * path * ATLAS_X0_MM, 4) for i in range(24))
    return CylindricalGeometry(
        name, binnings, depths, "ATLAS",
        f"CaloChallenge dataset 1 {pid_name} (ATLAS-like, irregular per-layer binning)",
    )


# Dataset 2/3 binning: CaloChallenge/homepage code/binning_dataset_{2,3}.xml (all 45 layers alike).
# Layer depth: Par04 SiW, 2 x (1.4 mm W + 0.3 mm Si) = 3.4 mm per readout layer (CaloChallenge README).
_DS2_EDGES = tuple(round(4.65 * i, 4) for i in range(10))  # 0 .. 41.85 mm, 9 bins of 4.65 mm
_DS3_EDGES = tuple(round(2.325 * i, 4) for i in range(19))  # 0 .. 41.85 mm, 18 bins of 2.325 mm

PRESETS: dict[str, CylindricalGeometry] = {
    g.name: g
    for g in [
        CylindricalGeometry.regular(
            "calochallenge-2", 45, 16, _DS2_EDGES, 3.4, "SiW",
            "CaloChallenge dataset 2: Par04 SiW, 45 x 16 x 9 = 6480 voxels",
        ),
        CylindricalGeometry.regular(
            "calochallenge-3", 45, 50, _DS3_EDGES, 3.4, "SiW",
            "CaloChallenge dataset 3: Par04 SiW, 45 x 50 x 18 = 40500 voxels",
        ),
        _calochallenge_dataset1(
            "calochallenge-1-photons", "photons",
            {
                0: ((0, 5, 10, 30, 50, 100, 200, 400, 600), 1),
                1: ((0, 2, 4, 6, 8, 10, 12, 15, 20, 30, 40, 50, 70, 90, 120, 150, 200), 10),
                2: (
                    (0, 2, 5, 10, 15, 20, 25, 30, 40, 50, 60, 80, 100, 130, 160, 200, 250, 300, 350, 400),
                    10,
                ),
                3: ((0, 50, 100, 200, 400, 600), 1),
                12: ((0, 100, 200, 400, 1000, 2000), 1),
            },
        ),
        _calochallenge_dataset1(
            "calochallenge-1-pions", "pions",
            {
                0: ((0, 5, 10, 30, 50, 100, 200, 400, 600), 1),
                1: ((0, 1, 4, 7, 10, 15, 30, 50, 90, 150, 200), 10),
                2: ((0, 5, 10, 20, 30, 50, 80, 130, 200, 300, 400), 10),
                3: ((0, 50, 100, 200, 400, 600), 1),
                12: ((0, 10, 20, 30, 50, 80, 100, 130, 160, 200, 250, 300, 350, 400, 1000, 2000), 10),
                13: ((0, 10, 20, 30, 50, 80, 100, 130, 160, 200, 250, 300, 350, 400, 600, 1000, 2000), 10),
                14: ((0, 50, 100, 150, 200, 250, 300, 400, 600, 1000, 2000), 1),
            },
        ),
        # Geant4 Par04 SiW (examples/extended/parameterisations/Par04, Geant4 11.4,
        # common_settings_highgran.mac and training_vae/core/constants.py): 90 physical layers of
        # 1.4 mm W + 0.3 mm Si, readout mesh 18 rho x 50 phi x 45 z cells of 2.325 mm (~0.25 R_M of W)
        # by 3.4 mm (two physical layers). Same binning as CaloChallenge dataset 3, which was made with
        # it. The low-granularity mesh (9 x 16 x 45, 4.65 mm; common_settings_lowgran.mac) that
        # CaloDiT-2 and LEMURS' Par04 SiW use is exactly `calochallenge-2`, so it has no second name.
        CylindricalGeometry.regular(
            "par04-siw", 45, 50, _DS3_EDGES, 3.4, "SiW",
            "Geant4 Par04 SiW (90 x 1.4 mm W + 0.3 mm Si), VAE mesh 45 x 50 x 18 of 2.325 mm",
        ),
        # Par04 SciPb, the second geometry of the Par04 VAE training set (Zenodo record 6082201), as
        # configured in the g4fastsim documentation's Par04 "Training data" macro: 45 layers of
        # 4.4 mm G4_Pb + 1.2 mm G4_POLYSTYRENE, mesh setNbOfRhoCells 18, setNbOfPhiCells 50,
        # setNbOfZCells 45, setSizeOfRhoCells 4 mm, setSizeOfZCells 5.6 mm (one physical layer).
        # LEMURS' Par04 SciPb (arXiv 2509.05108) re-bins onto its own grid, whose cell sizes we could
        # not find in a public source we can read; it is therefore not encoded here.
        CylindricalGeometry.regular(
            "par04-scipb", 45, 50, tuple(4.0 * i for i in range(19)), 5.6, "SciPb",
            "Geant4 Par04 SciPb (45 x 4.4 mm Pb + 1.2 mm scintillator), mesh 45 x 50 x 18 of 4 mm",
        ),
        # Par04 PbWO4: the example's built-in default when no macro sets the detector
        # (Par04DetectorConstruction.{hh,cc}, Geant4 11.4): 24 layers of 1 cm G4_PbWO4 (homogeneous,
        # 24 cm deep), default mesh fMeshNbOfCells = {40, 50, 48} (rho, phi, z) with
        # fMeshSizeOfCells = {5 mm, 2 pi / 50, 5 mm}.
        CylindricalGeometry.regular(
            "par04-pbwo4", 48, 50, tuple(5.0 * i for i in range(41)), 5.0, "PbWO4",
            "Geant4 Par04 default PbWO4 (24 x 10 mm crystal layers), mesh 48 x 50 x 40 of 5 mm",
        ),
    ]
}


def get_geometry(name: str) -> CylindricalGeometry:
    """The preset called ``name``; an unknown name raises ``UnknownNameError`` naming the closest ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise UnknownNameError("geometry preset", name, PRESETS) from None


def geometries_matching(n_voxels: int) -> list[CylindricalGeometry]:
    """Presets with exactly ``n_voxels`` voxels (used to recognise a CaloChallenge file)."""
    return [g for g in PRESETS.values() if g.n_voxels == n_voxels]
