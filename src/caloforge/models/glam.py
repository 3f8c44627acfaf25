"""GLaM (Geometry Latent Mapping): irregular per-layer binnings onto one regular grid, and back.

CaloDiffusion (Amram & Pedro, arXiv 2308.03876, sec. 3.3) runs its convolutional U-Net on CaloChallenge
dataset 1, whose layers are binned differently, by mapping every layer onto a common regular
(alpha, radial) grid with a learnable linear map initialised to the geometric overlap of the bins, and
mapping the U-Net's output back with a second learnable map; both are trained with the diffusion loss.

Here (``GLaM``):

* the regular grid (``latent_geometry``) has one layer per non-empty readout layer, the largest number
  of alpha bins of any layer, and the union of all layers' radial edges as radial bins (dataset-1
  photons: 5 x 10 x 30 = 1500 cells for 368 voxels);
* each layer has one learnable radial matrix per direction: ``encode`` (R_grid, R_layer) starts at the
  area overlap of the grid's ring i with the layer's ring j divided by the area of ring i, ``decode``
  (R_layer, R_grid) at the overlap divided by the area of ring j (the overlap's transpose, normalised).
  The model space holds standardised per-voxel values, which are intensive, so a grid cell starts as the
  area-weighted mean of the bins it overlaps and a bin as the mean of the cells covering it; when the
  grid refines a layer's edges (as the union does), decode(encode(x)) = x exactly at initialisation;
* the angular map is fixed by symmetry (not learned): the same overlap rule over alpha fractions, so a
  layer with one alpha bin spreads evenly over all of the grid's alpha bins and is read back as their
  mean; a layer with the grid's alpha binning maps one to one;
* a tiny normal perturbation (``init_noise``, CaloDiffusion's O(1e-5)) breaks the exact symmetry of the
  initial matrices, as in the paper.

Everything is matrix products on static slices, so it traces into the ONNX graph with the sampler.
Regular geometries need none of this (``caloforge.families.edm_unet`` uses GLaM only when the geometry
is irregular).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from caloforge.errors import InputError
from caloforge.geometry import CylindricalGeometry

__all__ = [
    "GLaM",
    "GLaMBackbone",
    "GLaMConfig",
    "alpha_overlap",
    "latent_geometry",
    "radial_overlap",
]

F64 = NDArray[np.float64]


@dataclass
class GLaMConfig:
    """The GLaM maps of an irregular geometry.

    Args:
        init_noise: standard deviation of the normal perturbation added to the overlap initialisation.
        trainable: learn the radial matrices with the diffusion loss (False keeps the geometric overlap).
    """

    init_noise: float = 1e-5
    trainable: bool = True

    def __post_init__(self) -> None:
        if not self.init_noise >= 0:
            raise InputError(None, "model.glam.init_noise", f"is {self.init_noise}", "a number >= 0")


# ---- geometry helpers -------------------------------------------------------------------------------------
def latent_geometry(geometry: CylindricalGeometry) -> CylindricalGeometry:
    """The regular grid GLaM maps ``geometry`` onto: non-empty layers x most alpha bins x union of radial
    edges (module doc). Layer depths are the non-empty layers' mean (they only name positions)."""
    layers = [b for b in geometry.layers if b.n_voxels > 0]
    edges = sorted({float(e) for b in layers for e in b.r_edges})
    depths = [t for b, t in zip(geometry.layers, geometry.layer_thickness_mm, strict=True) if b.n_voxels > 0]
    return CylindricalGeometry.regular(
        f"{geometry.name}-glam", len(layers), max(b.n_alpha for b in layers), edges,
        float(np.mean(depths)), geometry.material,
        f"GLaM's regular grid for '{geometry.name}'",
    )


def radial_overlap(rows: F64 | tuple[float, ...], cols: F64 | tuple[float, ...]) -> F64:
    """Area (mm^2 / pi) of the overlap of ring i of edges ``rows`` with ring j of edges ``cols``:
    (len(rows) - 1, len(cols) - 1)."""
    a, b = np.asarray(rows, dtype=np.float64), np.asarray(cols, dtype=np.float64)
    lo = np.maximum(a[:-1, None], b[None, :-1])
    hi = np.minimum(a[1:, None], b[None, 1:])
    return np.where(hi > lo, hi**2 - lo**2, 0.0)


def alpha_overlap(n_rows: int, n_cols: int) -> F64:
    """Overlap (fraction of a turn) of alpha bin i of ``n_rows`` equal bins with bin j of ``n_cols``
    (both over [-pi, pi) from the same origin): (n_rows, n_cols)."""
    a, b = np.linspace(0, 1, n_rows + 1), np.linspace(0, 1, n_cols + 1)
    lo = np.maximum(a[:-1, None], b[None, :-1])
    hi = np.minimum(a[1:, None], b[None, 1:])
    return np.clip(hi - lo, 0.0, None)


def _normalise_rows(m: F64) -> F64:
    sums = m.sum(axis=1, keepdims=True)
    return np.divide(m, sums, out=np.zeros_like(m), where=sums > 0)


# ---- the mapping -----------------------------------------------------------------------------------------
class GLaM(nn.Module):
    """Per-layer linear maps between an irregular geometry's voxels (N, V) and the regular grid of
    ``latent_geometry`` (N, L' * A * R), flattened in the usual order (radial fastest).

    Attributes:
        encoders, decoders: per non-empty layer, the learnable radial matrices (R, R_l) and (R_l, R).
        alpha_in_k, alpha_out_k (buffers): the fixed angular maps (A, A_l) and (A_l, A) of layer k.
    """

    def __init__(self, geometry: CylindricalGeometry, config: GLaMConfig | None = None) -> None:
        super().__init__()
        config = config or GLaMConfig()
        self.latent = latent_geometry(geometry)
        _, n_alpha, _ = self.latent.grid_shape
        grid_edges = self.latent.r_edges_mm
        self.slices: list[tuple[int, int, int, int]] = []  # (start, stop, n_alpha, n_radial) per layer
        self.encoders = nn.ParameterList()
        self.decoders = nn.ParameterList()
        offsets = geometry.layer_offsets
        for index, binning in enumerate(geometry.layers):
            if binning.n_voxels == 0:
                continue
            k = len(self.slices)
            start, stop = int(offsets[index]), int(offsets[index + 1])
            self.slices.append((start, stop, binning.n_alpha, binning.n_radial))
            overlap = radial_overlap(grid_edges, binning.r_edges)  # (R, R_l)
            encode = torch.from_numpy(_normalise_rows(overlap)).float()
            decode = torch.from_numpy(_normalise_rows(overlap.T)).float()
            if config.init_noise > 0:
                encode = encode + config.init_noise * torch.randn(encode.shape)
                decode = decode + config.init_noise * torch.randn(decode.shape)
            self.encoders.append(nn.Parameter(encode, requires_grad=config.trainable))
            self.decoders.append(nn.Parameter(decode, requires_grad=config.trainable))
            angular = alpha_overlap(n_alpha, binning.n_alpha)  # (A, A_l)
            self.register_buffer(f"alpha_in_{k}", torch.from_numpy(_normalise_rows(angular)).float())
            self.register_buffer(f"alpha_out_{k}", torch.from_numpy(_normalise_rows(angular.T)).float())
        self.n_voxels = geometry.n_voxels

    def _alpha(self, direction: str, k: int) -> Tensor:
        buffer = getattr(self, f"alpha_{direction}_{k}")
        assert isinstance(buffer, Tensor)
        return buffer

    def encode(self, x: Tensor) -> Tensor:
        """x (N, V) in the readout's order -> (N, L' * A * R) on the regular grid."""
        n = x.shape[0]
        layers = []
        for k, (start, stop, n_alpha, n_radial) in enumerate(self.slices):
            x_l = x[:, start:stop].reshape(n, n_alpha, n_radial)  # (N, A_l, R_l)
            z = torch.matmul(self._alpha("in", k), x_l)  # (N, A, R_l)
            layers.append(torch.matmul(z, self.encoders[k].t()))  # (N, A, R)
        return torch.stack(layers, dim=1).reshape(n, -1)

    def decode(self, z: Tensor) -> Tensor:
        """z (N, L' * A * R) on the regular grid -> (N, V) in the readout's order."""
        n = z.shape[0]
        grid = z.reshape(n, *self.latent.grid_shape)  # (N, L', A, R)
        parts = []
        for k, (_, _, n_alpha, n_radial) in enumerate(self.slices):
            x_l = torch.matmul(self._alpha("out", k), grid[:, k])  # (N, A_l, R)
            parts.append(torch.matmul(x_l, self.decoders[k].t()).reshape(n, n_alpha * n_radial))
        return torch.cat(parts, dim=1)


class GLaMBackbone(nn.Module):
    """A regular-grid backbone behind GLaM: F(x) = decode(backbone(encode(x), c_noise, cond)).

    ``forward(x, c_noise, cond)``: x (N, V) -> (N, V), the backbone's signature, so the diffusion
    wrapper and samplers see an ordinary backbone on the readout's own voxels.
    """

    def __init__(self, glam: GLaM, backbone: nn.Module) -> None:
        super().__init__()
        self.glam = glam
        self.backbone = backbone

    def forward(self, x: Tensor, c_noise: Tensor, cond: Tensor) -> Tensor:
        return self.glam.decode(self.backbone(self.glam.encode(x), c_noise, cond))

