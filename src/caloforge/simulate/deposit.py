"""Energy spots -> voxels of any ``CylindricalGeometry``.

Spots are points (x, y, z) in the readout frame (mm; z along the readout axis from the front face,
x, y transverse; see ``caloforge.data``). A spot lands in the layer whose z range holds it, the radial
bin of r = hypot(x, y) in that layer's own edges, and the angular bin of alpha = atan2(y, x) over
[-pi, pi) (the geometry's convention). Spots before the front face, past the last layer or outside a
layer's outer edge are lost (leakage); empty layers (no radial bins) lose what falls in them.
Histogramming is one ``np.bincount`` over flat (shower, voxel) indices, so the cost is linear in the
number of spots.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from caloforge.geometry import CylindricalGeometry

__all__ = ["VoxelMap", "deposit"]

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]


def _uniform_step(edges: NDArray[np.float64]) -> float | None:
    """The bin width when ``edges`` start at 0 and are equally spaced, else None."""
    steps = np.diff(edges)
    if edges[0] == 0.0 and len(steps) > 0 and np.allclose(steps, steps[0], rtol=1e-9, atol=0.0):
        return float(steps[0])
    return None


@dataclass(frozen=True)
class VoxelMap:
    """Lookup tables of a geometry for binning spots; build once with ``VoxelMap.of(geometry)``."""

    geometry: CylindricalGeometry
    z_edges: F64  # (n_layers + 1,) layer boundaries in mm
    dz: float | None  # common layer thickness, or None
    dr: float | None  # common radial bin width of a regular geometry with uniform edges, or None

    @classmethod
    def of(cls, geometry: CylindricalGeometry) -> VoxelMap:
        z_edges = np.concatenate([[0.0], np.cumsum(geometry.layer_thickness_mm)])
        thick = np.asarray(geometry.layer_thickness_mm)
        dz = float(thick[0]) if np.allclose(thick, thick[0], rtol=1e-12) else None
        dr = _uniform_step(geometry.r_edges_mm) if geometry.is_regular else None
        return cls(geometry, z_edges, dz, dr)

    def layer_of(self, z: NDArray[np.floating]) -> I64:
        """Layer index of depths z (mm); -1 before the front, n_layers past the back."""
        if self.dz is not None:
            return np.floor(z / self.dz).astype(np.int64).clip(-1, self.geometry.n_layers)
        return (np.searchsorted(self.z_edges, z, side="right") - 1).astype(np.int64)


def _bins(
    r: NDArray[np.floating],
    alpha_bin_frac: NDArray[np.floating],
    edges: tuple[float, ...],
    n_alpha: int,
    dr: float | None,
) -> tuple[I64, I64]:
    """(radial bin, alpha bin) within one binning; radial bin == n_radial marks 'outside'."""
    if dr is not None:
        r_bin = np.minimum(r / dr, len(edges) - 1).astype(np.int64)
    else:
        r_bin = (np.searchsorted(np.asarray(edges), r, side="right") - 1).astype(np.int64)
    a_bin = np.minimum((alpha_bin_frac * n_alpha).astype(np.int64), n_alpha - 1)
    return r_bin, a_bin


def deposit(
    vmap: VoxelMap,
    shower: I64,
    r: NDArray[np.floating],
    alpha_frac: NDArray[np.floating],
    z: NDArray[np.floating],
    energy: F64,
    out: NDArray[np.floating],
) -> NDArray[np.floating]:
    """Add spot energies to the voxels of ``out`` (in place) and return it.

    Args:
        vmap: the geometry's lookup tables.
        shower: (M,) index in [0, n_showers) of the shower each spot belongs to.
        r: (M,) radial distance from the readout axis in mm.
        alpha_frac: (M,) (alpha + pi) / (2 pi) in [0, 1), the angular position as a fraction of a turn.
        z: (M,) depth from the front face in mm.
        energy: (M,) energy of each spot in MeV.
        out: (n_showers, n_voxels) float32 or float64, C-contiguous, MeV in the geometry's flat voxel
            order.
    """
    geometry = vmap.geometry
    n_vox = geometry.n_voxels
    layer = vmap.layer_of(z)
    if geometry.is_regular:
        binning = geometry.layers[0]
        r_bin, a_bin = _bins(r, alpha_frac, binning.r_edges, binning.n_alpha, vmap.dr)
        keep = (layer >= 0) & (layer < geometry.n_layers) & (r_bin >= 0) & (r_bin < binning.n_radial)
        flat = (layer * binning.n_alpha + a_bin) * binning.n_radial + r_bin
    else:
        flat = np.full(layer.shape, -1, dtype=np.int64)
        offsets = geometry.layer_offsets
        for index, binning in enumerate(geometry.layers):
            if binning.n_voxels == 0:
                continue
            sel = np.flatnonzero(layer == index)
            if sel.size == 0:
                continue
            r_bin, a_bin = _bins(r[sel], alpha_frac[sel], binning.r_edges, binning.n_alpha,
                                 _uniform_step(np.asarray(binning.r_edges)))
            inside = (r_bin >= 0) & (r_bin < binning.n_radial)
            flat[sel[inside]] = offsets[index] + a_bin[inside] * binning.n_radial + r_bin[inside]
        keep = flat >= 0
    # np.add.at on the flat output beats a bincount with a (n_showers x n_voxels) temporary (numpy >= 2).
    np.add.at(out.reshape(-1), shower[keep] * n_vox + flat[keep], energy[keep].astype(out.dtype, copy=False))
    return out
