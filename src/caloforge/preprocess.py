"""Fitted, invertible transform between showers in MeV and the standardised space a model learns.

Forward, for voxel energy E (MeV) of a shower with incident energy E_inc (MeV):

    u = ln((E + eps) / E_inc)                    (log of the energy fraction; eps in MeV keeps zeros finite)
    z = (u - mean) / std                          (per voxel, or one global mean/std)

Inverse: E = E_inc * exp(z * std + mean) - eps, then every E below ``threshold`` (MeV) is set to 0.

Why an offset in MeV rather than in the fraction: calorimeter cells read out above a threshold in MeV
(15.15 keV in Par04/CaloChallenge), so an eps tied to that threshold puts empty cells one constant step
below the faintest real cell at every incident energy. With the defaults, for d_min the smallest nonzero
deposit in the training set, ``eps = d_min / 2`` (``eps_fraction``) and ``threshold = 0.999 d_min`` (the
readout threshold the data show, less a margin for float rounding): a zero maps to ln(eps / E_inc), the
faintest deposit to ln(3 eps / E_inc), generated cells fainter than any real one read zero as in the
detector, and the round trip of training showers is exact up to float precision.

That step (ln 3, ~0.5 standard deviations of z) lets a model's spread of the empty cells' point mass
leak into faint hits; a wider one (``eps_fraction`` 1/20, ln 21) removed most of that excess in short
runs but, over the 60-minute benchmark, left the showers short of moderate hits and scored worse
(docs/decisions.md, Preprocessing), so the default stays 1/2.

E_tot / E_inc, the first thing physicists look at, is a sum over thousands of voxels that a voxel-level
model only gets right on average. With ``energy_ratio`` (off by default; on in the dataset-2 configs
and the demo), preprocessing also fits the conditional distribution of r = E_tot / E_inc given ln E_inc
as a table of quantiles in bins of ln E_inc (``EnergyRatio``); generation draws r from it (inverse CDF
of a uniform, interpolated linearly between quantiles and between neighbouring energy bins) and
rescales each generated shower to E_tot = r E_inc, so the energy response is modelled explicitly (the
idea of CaloDREAM's and CaloDiffusion's energy-first stages, here with a non-parametric 1D model).

With ``layer_energies`` (on in the dataset-2 configs and the demo), preprocessing also fits the
standardisation of each shower's layer vector (``LayerEnergies``), which the layer-energy stage
(``caloforge.models.layer_mlp``) learns; generation rescales the DiT's shower layer by layer to the layer
energies that stage draws. It models E_tot / E_inc too, so it replaces ``energy_ratio`` when both are on.

``ln(...)`` is clamped above at ``log_max`` (the largest value in training plus ln 2) before exp, so a
sample far out in a tail cannot overflow. ``PreprocessTransform`` is the torch version (ONNX-traceable).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from caloforge.data import ShowerChunks, ShowerSet
from caloforge.errors import InputError
from caloforge.geometry import CylindricalGeometry
from caloforge.sampler import zero_below

__all__ = [
    "EnergyRatio",
    "LayerEnergies",
    "LayerMoments",
    "PreprocessConfig",
    "PreprocessTransform",
    "ShowerPreprocessor",
    "energy_bin_weights",
    "fit_energy_ratio",
    "layer_matrix",
    "smallest_layer_fraction",
]

_CHUNK = 4096  # showers per chunk when transforming: bounds memory on large sets


@dataclass
class PreprocessConfig:
    """How showers are transformed (see module doc).

    Args:
        standardize: "voxel" (a mean and std per voxel) or "global" (one of each).
        zero_threshold_mev: deposits below this (MeV) come back as 0; ``None`` = 0.999 x the smallest
            nonzero deposit in the training set.
        eps_mev: offset inside the log (MeV); ``None`` = ``eps_fraction`` x the smallest nonzero deposit
            (or x the zero threshold when that is given).
        eps_fraction: eps as a fraction of the smallest deposit when ``eps_mev`` is not set (module doc).
        std_floor: smallest std used, so voxels that never fire do not divide by zero.
        energy_ratio: fit the E_tot / E_inc model and rescale generated showers with it (module doc).
        ratio_bins: bins in ln E_inc of that model (fewer when the training set is small).
        ratio_quantiles: quantiles per bin.
        layer_energies: fit the layer vector's standardisation for the layer-energy stage (module doc).
        layer_delta_fraction: the layer vector's offset delta as a fraction of the smallest nonzero layer
            fraction in training (``LayerEnergies``).
    """

    standardize: str = "voxel"
    zero_threshold_mev: float | None = None
    eps_mev: float | None = None
    eps_fraction: float = 0.5
    std_floor: float = 1e-3
    energy_ratio: bool = False
    ratio_bins: int = 24
    ratio_quantiles: int = 129
    layer_energies: bool = False
    layer_delta_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.standardize not in ("voxel", "global"):
            raise InputError(
                None, "preprocess.standardize", f"is '{self.standardize}'", "'voxel' or 'global'"
            )
        for name in ("eps_fraction", "layer_delta_fraction"):
            value = getattr(self, name)
            if not 0 < value < 1:
                raise InputError(None, f"preprocess.{name}", f"is {value}", "a number in (0, 1)")


class PreprocessTransform(nn.Module):
    """Torch form of a fitted ``ShowerPreprocessor``: ``forward`` MeV -> model space, ``inverse`` back.

    Shapes: showers and model-space values (N, n_voxels), energy (N,) in MeV.
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self, mean: Tensor, std: Tensor, eps_mev: float, threshold_mev: float, log_max: float
    ) -> None:
        super().__init__()
        self.register_buffer("mean", mean.float(), persistent=False)
        self.register_buffer("std", std.float(), persistent=False)
        self.eps_mev = float(eps_mev)
        self.threshold_mev = float(threshold_mev)
        self.log_max = float(log_max)

    def forward(self, showers: Tensor, energy: Tensor) -> Tensor:
        u = torch.log((showers + self.eps_mev) / energy[:, None])  # (N, V)
        return (u - self.mean) / self.std

    def support(self, energy: Tensor, n_voxels: int) -> tuple[Tensor, Tensor]:
        """The model-space range (low, high), each (N, V = ``n_voxels``), of showers with incident energies
        (N,) MeV: from an empty cell, ln(eps / E_inc), to the ``log_max`` clamp of ``inverse`` (also with
        one global mean and std, which alone would broadcast to (N, 1))."""
        log_energy = torch.log(energy)[:, None]  # (N, 1)
        low = (math.log(self.eps_mev) - log_energy - self.mean) / self.std
        high = (self.log_max - self.mean) / self.std + torch.zeros_like(log_energy)
        return low.expand(-1, n_voxels), high.expand(-1, n_voxels)

    def log_fraction(self, z: Tensor) -> Tensor:
        """ln((E + eps) / E_inc) (N, V) of model-space values z (N, V), before any threshold: how near each
        cell is to being lit, comparable across cells (the scores ``LayerEnergies.rescale`` fills by)."""
        return torch.clamp(z * self.std + self.mean, max=self.log_max)

    def inverse(self, z: Tensor, energy: Tensor) -> Tensor:
        u = self.log_fraction(z)  # (N, V)
        showers = energy[:, None] * torch.exp(u) - self.eps_mev
        # Cells below the threshold read zero (module doc)
        return zero_below(showers, self.threshold_mev)


def energy_bin_weights(
    energy: Tensor, log_lo: float, log_hi: float, n_bins: int
) -> tuple[Tensor, Tensor, Tensor]:
    """For ``n_bins`` equal bins of ln E over [log_lo, log_hi], the two bins whose centres enclose each
    energy (N,) MeV, b0 and b1 (N,) int64, and the weight of b1, (N, 1): linear interpolation between bin
    centres, clamped to the first and last centre (no extrapolation). Torch ops only (ONNX-traceable)."""
    pos = (torch.log(energy) - log_lo) / (log_hi - log_lo) * n_bins - 0.5
    pos = torch.clamp(pos, 0.0, float(n_bins - 1))
    b0 = torch.clamp(torch.floor(pos), max=float(max(n_bins - 2, 0))).long()
    b1 = torch.clamp(b0 + 1, max=n_bins - 1)
    return b0, b1, (pos - b0.to(pos.dtype))[:, None]


class EnergyRatio(nn.Module):
    """Conditional model of r = E_tot / E_inc given E_inc: quantile table (n_bins, n_quantiles) over equal
    bins of ln E_inc in [log_lo, log_hi]. Torch ops only (ONNX-traceable).

    ``forward(energy, u)``: energy (N,) MeV, u (N,) uniform in [0, 1) -> r (N,).
    ``rescale(showers, energy, u)``: showers (N, V) MeV scaled so that each sums to r * E_inc; cells
    pushed below ``threshold_mev`` read zero.
    """

    table: Tensor

    def __init__(self, table: Tensor, log_lo: float, log_hi: float, threshold_mev: float) -> None:
        super().__init__()
        self.register_buffer("table", table.float(), persistent=False)
        self.log_lo, self.log_hi = float(log_lo), float(log_hi)
        self.threshold_mev = float(threshold_mev)

    def forward(self, energy: Tensor, u: Tensor) -> Tensor:
        n_bins, n_q = self.table.shape
        b0, b1, wb = energy_bin_weights(energy, self.log_lo, self.log_hi, n_bins)
        q = torch.clamp(u, 0.0, 1.0) * (n_q - 1)
        q0 = torch.clamp(torch.floor(q), max=float(n_q - 2)).long()[:, None]
        wq = q[:, None] - q0.to(q.dtype)

        def quantile(rows: Tensor) -> Tensor:  # inverse CDF of each shower's bin, (N, 1)
            table = self.table[rows]  # (N, n_q)
            return torch.gather(table, 1, q0) * (1 - wq) + torch.gather(table, 1, q0 + 1) * wq

        return ((1 - wb) * quantile(b0) + wb * quantile(b1))[:, 0]

    def rescale(self, showers: Tensor, energy: Tensor, u: Tensor) -> Tensor:
        target = self(energy, u) * energy  # (N,) MeV
        total = showers.sum(dim=1)
        scale = torch.where(total > 0, target / torch.clamp(total, min=1e-30), torch.ones_like(total))
        scaled = showers * scale[:, None]
        scaled = zero_below(scaled, self.threshold_mev)
        # Cells scaled below the threshold vanish; scaling the survivors once more restores the total
        # (that factor is >= 1, so no survivor falls below the threshold).
        kept = scaled.sum(dim=1)
        again = torch.where(kept > 0, target / torch.clamp(kept, min=1e-30), torch.ones_like(kept))
        return scaled * again[:, None]


def fit_energy_ratio(
    ratio: NDArray[np.floating], energy: NDArray[np.floating], n_bins: int, n_quantiles: int
) -> tuple[NDArray[np.float64], float, float]:
    """Quantile table (n_bins', n_quantiles) of ``ratio`` in equal bins of ln ``energy``, and the bin range.

    Uses fewer bins when there are fewer than 200 showers per bin, so each quantile function is
    estimated from enough showers.
    """
    log_e = np.log(np.asarray(energy, dtype=np.float64))
    lo, hi = float(log_e.min()), float(log_e.max())
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    n_bins = int(max(1, min(n_bins, len(log_e) // 200)))
    index = np.clip(((log_e - lo) / (hi - lo) * n_bins).astype(np.int64), 0, n_bins - 1)
    levels = np.linspace(0.0, 1.0, n_quantiles)
    table = np.empty((n_bins, n_quantiles))
    for b in range(n_bins):
        values = ratio[index == b]
        table[b] = np.quantile(values, levels) if values.size else np.quantile(ratio, levels)
    return table, lo, hi


def layer_matrix(geometry: CylindricalGeometry) -> NDArray[np.float32]:
    """One-hot (V, L): entry [v, l] is 1 where voxel v lies in layer l (any geometry, regular or not)."""
    offsets = geometry.layer_offsets
    matrix = np.zeros((geometry.n_voxels, geometry.n_layers), dtype=np.float32)
    for layer in range(geometry.n_layers):
        matrix[offsets[layer] : offsets[layer + 1], layer] = 1.0
    return matrix


def layer_vector(
    showers: NDArray[np.floating], energy: NDArray[np.floating], matrix: NDArray[np.floating], delta: float
) -> NDArray[np.float64]:
    """The layer vector y (N, 1 + L) of ``LayerEnergies`` from showers (N, V) MeV and energy (N,) MeV."""
    layers = np.asarray(showers, dtype=np.float64) @ matrix.astype(np.float64)  # (N, L) MeV
    total = np.maximum(layers.sum(axis=1), 1e-300)
    ratio = total / np.asarray(energy, dtype=np.float64).reshape(-1)
    return np.concatenate([np.log(ratio)[:, None], np.log(layers / total[:, None] + delta)], axis=1)


class LayerEnergies(nn.Module):
    """The layer-energy stage's data side: y <-> standardised space, and rescaling showers to it.

    A shower with incident energy E_inc (MeV), total E_tot and layer energies E_l has the layer vector

        y_0 = ln(E_tot / E_inc),   y_l = ln(E_l / E_tot + delta)   (l = 1 .. L),

    standardised per component with ``mean``/``std`` (1 + L,). ``delta`` is a fraction (``preprocess.
    layer_delta_fraction``, default 1/2) of the smallest nonzero layer fraction in training, so an empty
    layer sits one constant step (ln 3) below the faintest real one; fractions below ``threshold`` (0.999 x
    that smallest fraction) come back as empty. (The larger step that helps the voxels, ln 21, did not
    help here: docs/decisions.md, Preprocessing.) On the way back each component is
    clamped to ``span`` (2, 1 + L), the least and greatest y in training: a fraction is exponential in y,
    so a draw a few standard deviations out would otherwise put most of a shower in one deep layer.
    Torch ops only (ONNX-traceable).

    ``inverse(z)``: (N, 1 + L) -> ratio E_tot / E_inc (N,), fractions (N, L).
    ``rescale(showers, energy, z, scores=None)``: showers (N, V) MeV rescaled so that layer l holds
    fraction_l * ratio * E_inc; the fractions of layers the shower leaves empty are shared out over its
    other layers, and cells pushed below ``threshold_mev`` read zero. With ``scores`` (N, V), such a layer
    instead gets one cell, the one with the highest score (``fill_layers``), so the draw is honoured.
    """

    mean: Tensor
    std: Tensor
    span: Tensor
    matrix: Tensor
    cells: Tensor

    def __init__(
        self,
        mean: Tensor,
        std: Tensor,
        delta: float,
        span: Tensor,
        matrix: Tensor,
        threshold_mev: float,
        threshold: float,
    ) -> None:
        super().__init__()
        self.register_buffer("mean", mean.float(), persistent=False)
        self.register_buffer("std", std.float(), persistent=False)
        self.register_buffer("span", span.float(), persistent=False)
        self.register_buffer("matrix", matrix.float(), persistent=False)
        # The voxels of each layer, (L, C) with C the most cells of any layer, padded with V (the index of
        # the column _best_cells appends, which never wins and is dropped).
        members = [torch.nonzero(column > 0).flatten() for column in matrix.T]
        width = max(len(m) for m in members)
        cells = torch.full((len(members), width), matrix.shape[0], dtype=torch.int64)
        for layer, m in enumerate(members):
            cells[layer, : len(m)] = m
        self.register_buffer("cells", cells, persistent=False)
        self.delta, self.threshold_mev, self.threshold = float(delta), float(threshold_mev), float(threshold)

    @property
    def dim(self) -> int:
        """1 + L, the size of the vector the stage models."""
        return int(self.mean.shape[0])

    def forward(self, showers: Tensor, energy: Tensor) -> Tensor:
        """Standardised layer vectors (N, 1 + L) of showers (N, V) MeV."""
        layers = showers @ self.matrix  # (N, L)
        total = torch.clamp(layers.sum(dim=1), min=1e-30)
        fraction = layers / total[:, None]
        y = torch.cat([torch.log(total / energy)[:, None], torch.log(fraction + self.delta)], dim=1)
        return (y - self.mean) / self.std

    def bound(self, z: Tensor) -> Tensor:
        """Standardised layer vectors z (N, 1 + L) clamped to ``span``, the range seen in training."""
        return torch.clamp(z, (self.span[0] - self.mean) / self.std, (self.span[1] - self.mean) / self.std)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        y = torch.clamp(z * self.std + self.mean, self.span[0], self.span[1])
        ratio = torch.exp(torch.clamp(y[:, 0], max=0.0))  # a calorimeter never holds more than E_inc
        fraction = torch.exp(torch.clamp(y[:, 1:], max=0.0)) - self.delta
        fraction = zero_below(fraction, self.threshold)
        return ratio, fraction

    def _best_cells(self, scores: Tensor, need: Tensor) -> Tensor:
        """(N, V): 1 at the cell with the highest ``scores`` (N, V) of each layer where ``need`` (N, L) is
        true, 0 elsewhere."""
        floor = torch.full_like(scores[:, :1], torch.finfo(scores.dtype).min)
        padded = torch.cat([scores, floor], dim=1)  # (N, V + 1); column V is the cells table's padding
        n_layers, width = self.cells.shape
        best = padded[:, self.cells.flatten()].reshape(-1, n_layers, width).argmax(dim=2)  # (N, L)
        offsets = torch.arange(n_layers, device=best.device) * width
        voxel = self.cells.flatten()[best + offsets]  # (N, L) the chosen cell of each layer
        return torch.zeros_like(padded).scatter(1, voxel, need.to(padded.dtype))[:, :-1]

    def rescale(self, showers: Tensor, energy: Tensor, z: Tensor, scores: Tensor | None = None) -> Tensor:
        ratio, fraction = self.inverse(z)
        have = showers @ self.matrix  # (N, L) MeV the shower holds per layer
        if scores is not None:
            # A layer the draw gives energy but the shower leaves empty gets 1 MeV in the cell with the
            # highest score (the shape model's value before its threshold: the cell it came closest to
            # lighting), scaled below to the draw. Without it the DiT's deep layers were empty in 56 % of the
            # showers where Geant4's are in 44 % (layer 30), whatever the draw said (docs/decisions.md).
            need = (have <= 0) & (fraction > 0)  # (N, L)
            showers = showers + self._best_cells(scores, need)
            have = have + need.to(have.dtype)
        fraction = torch.where(have > 0, fraction, torch.zeros_like(fraction))
        norm = fraction.sum(dim=1, keepdim=True)
        own = have / torch.clamp(have.sum(dim=1, keepdim=True), min=1e-30)  # for a shower with none left
        fraction = torch.where(norm > 0, fraction / torch.clamp(norm, min=1e-30), own)
        scale = fraction * (ratio * energy)[:, None] / torch.clamp(have, min=1e-30)  # (N, L)
        scaled = showers * (scale @ self.matrix.T)  # (N, V)
        return zero_below(scaled, self.threshold_mev)


def smallest_layer_fraction(showers: NDArray[np.floating], matrix: NDArray[np.floating]) -> float:
    """The smallest nonzero fraction E_l / E_tot over showers (N, V) MeV (inf when there is none)."""
    layers = np.asarray(showers, dtype=np.float64) @ matrix.astype(np.float64)
    fraction = layers / np.maximum(layers.sum(axis=1, keepdims=True), 1e-300)
    return float(fraction[fraction > 0].min()) if np.any(fraction > 0) else math.inf


class LayerMoments:
    """Accumulates the fit of ``LayerEnergies`` over chunks of showers: mean and std (1 + L,) and the range
    (2, 1 + L) (least and greatest y per component). ``delta`` is ``delta_fraction`` x the smallest nonzero
    layer fraction of the same showers (``smallest_layer_fraction``, found in an earlier pass)."""

    def __init__(self, matrix: NDArray[np.floating], smallest: float, delta_fraction: float = 0.5) -> None:
        self.matrix = matrix
        self.delta = delta_fraction * (smallest if math.isfinite(smallest) else 2e-9)
        width = 1 + matrix.shape[1]
        self.sums, self.sums_sq, self.n = np.zeros(width), np.zeros(width), 0
        self.span = np.array([np.full(width, np.inf), np.full(width, -np.inf)])

    def add(self, showers: NDArray[np.floating], energy: NDArray[np.floating]) -> None:
        """Showers (n, V) MeV, energy (n,) MeV."""
        y = layer_vector(showers, energy, self.matrix, self.delta)
        self.sums += y.sum(axis=0)
        self.sums_sq += (y * y).sum(axis=0)
        self.span = np.array([np.minimum(self.span[0], y.min(axis=0)),
                              np.maximum(self.span[1], y.max(axis=0))])
        self.n += len(y)

    def result(
        self, std_floor: float
    ) -> tuple[NDArray[np.float64], NDArray[np.float64], float, NDArray[np.float64]]:
        """mean, std (floored), delta, span."""
        mean = self.sums / self.n
        std = np.sqrt(np.maximum(self.sums_sq / self.n - mean**2, 0.0))
        return mean, np.maximum(std, std_floor), self.delta, self.span


def _apply_chunked(module: nn.Module, showers: ShowerSet, width: int) -> NDArray[np.float32]:
    """``module(showers MeV, energy MeV)`` over ``showers`` in chunks of ``_CHUNK`` -> (N, width) float32."""
    out = np.empty((len(showers), width), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, len(showers), _CHUNK):
            stop = start + _CHUNK
            out[start:stop] = module(
                torch.from_numpy(np.asarray(showers.showers[start:stop], np.float32)),
                torch.from_numpy(showers.energy[start:stop].astype(np.float32)),
            ).numpy()
    return out


def _pieces(showers: ShowerChunks) -> Iterator[ShowerSet]:
    """The set's chunks, each cut to at most ``_CHUNK`` showers (float64 work arrays stay small)."""
    for chunk in showers.chunks():
        yield from chunk.chunks(_CHUNK)


@dataclass
class ShowerPreprocessor:
    """A fitted transform (see module doc); build with ``fit``, save with ``to_dict``.

    Attributes: threshold_mev and eps_mev in MeV; mean and std (n_voxels,) or (1,) in log space;
    log_max the clamp of the log before exp; ratio_table and ratio_log_range the E_tot / E_inc model;
    layer_mean, layer_std (1 + L,), layer_delta and layer_span (2, 1 + L) the layer vector's
    standardisation and range (``LayerEnergies``).
    """

    config: PreprocessConfig
    threshold_mev: float
    eps_mev: float
    mean: NDArray[np.float64]
    std: NDArray[np.float64]
    log_max: float
    ratio_table: NDArray[np.float64] | None = None
    ratio_log_range: tuple[float, float] = (0.0, 1.0)
    layer_mean: NDArray[np.float64] | None = None
    layer_std: NDArray[np.float64] | None = None
    layer_delta: float = 0.0
    layer_span: NDArray[np.float64] | None = None

    @classmethod
    def fit(cls, showers: ShowerChunks, config: PreprocessConfig | None = None) -> ShowerPreprocessor:
        """Fit on a training set (energies must be > 0 and deposits >= 0): a ``ShowerSet`` in memory or
        an ``io.ShowerSource`` on disk, read in two passes over its chunks (the first finds the smallest
        deposit and layer fraction, which set eps and delta; the second the moments), so memory is
        bounded by a chunk, not by the set."""
        config = config or PreprocessConfig()
        matrix = layer_matrix(showers.geometry) if config.layer_energies else None
        d_min, smallest, log_max, n = math.inf, math.inf, -math.inf, 0
        energies, ratios = [], []
        for chunk in _pieces(showers):
            chunk.check()
            deposits = chunk.showers[chunk.showers > 0]
            if deposits.size:
                d_min = min(d_min, float(deposits.min()))
            energies.append(chunk.energy.astype(np.float64))
            ratios.append(chunk.showers.sum(axis=1, dtype=np.float64) / energies[-1])
            if matrix is not None:
                smallest = min(smallest, smallest_layer_fraction(chunk.showers, matrix))
        if config.zero_threshold_mev is not None:
            threshold = float(config.zero_threshold_mev)
            d_min = threshold
        elif math.isfinite(d_min):
            threshold = 0.999 * d_min
        else:
            raise InputError(showers.source, "showers", "are all zero", "some nonzero deposits to fit on")
        eps = float(config.eps_mev) if config.eps_mev is not None else config.eps_fraction * d_min
        if eps <= 0 or threshold <= 0:
            raise InputError(
                None, "preprocess", f"eps_mev={eps}, zero_threshold_mev={threshold}", "values > 0"
            )
        n_voxels = showers.geometry.n_voxels
        total, total_sq = np.zeros(n_voxels), np.zeros(n_voxels)
        layers = None if matrix is None else LayerMoments(matrix, smallest, config.layer_delta_fraction)
        for chunk in _pieces(showers):
            u = np.log((chunk.showers.astype(np.float64) + eps) / chunk.energy.astype(np.float64)[:, None])
            total += u.sum(axis=0)
            total_sq += (u * u).sum(axis=0)
            log_max = max(log_max, float(u.max()))
            n += len(chunk)
            if layers is not None:
                layers.add(chunk.showers, chunk.energy)
        if config.standardize == "global":
            total, total_sq, n = total.sum(keepdims=True), total_sq.sum(keepdims=True), n * n_voxels
        mean = total / n
        std = np.sqrt(np.maximum(total_sq / n - mean**2, 0.0))
        table, log_range = None, (0.0, 1.0)
        if config.energy_ratio:
            table, lo, hi = fit_energy_ratio(np.concatenate(ratios), np.concatenate(energies),
                                             config.ratio_bins, config.ratio_quantiles)
            log_range = (lo, hi)
        layer_mean = layer_std = layer_span = None
        delta = 0.0
        if layers is not None:
            layer_mean, layer_std, delta, layer_span = layers.result(config.std_floor)
        return cls(
            config,
            threshold,
            eps,
            mean,
            np.maximum(std, config.std_floor),
            log_max + math.log(2.0),
            table,
            log_range,
            layer_mean,
            layer_std,
            delta,
            layer_span,
        )

    @property
    def has_layer_energies(self) -> bool:
        """Whether the layer-energy stage was fitted (``config.layer_energies``): batches then carry the
        standardised layer vectors and models draw them first."""
        return self.layer_mean is not None and self.layer_std is not None

    def energy_ratio(self) -> EnergyRatio | None:
        """The torch E_tot / E_inc model, or ``None`` when not fitted (``config.energy_ratio`` off)."""
        if self.ratio_table is None:
            return None
        return EnergyRatio(torch.from_numpy(self.ratio_table), *self.ratio_log_range, self.threshold_mev)

    def layer_energies(self, geometry: CylindricalGeometry) -> LayerEnergies | None:
        """The torch layer-vector transform for ``geometry`` (the one fitted on), or ``None`` when not
        fitted (``config.layer_energies`` off)."""
        if self.layer_mean is None or self.layer_std is None:  # (has_layer_energies, spelt out for mypy)
            return None
        # A preprocessor saved before the span was fitted: no clamp beyond E_l <= E_tot <= E_inc.
        span = self.layer_span if self.layer_span is not None else np.array([[-np.inf], [0.0]])
        # 0.999 x the smallest training fraction, which delta is the configured fraction of (a checkpoint
        # saved before the fraction was configurable reads the default 1/2, which it used).
        threshold = 0.999 * self.layer_delta / self.config.layer_delta_fraction
        return LayerEnergies(
            torch.from_numpy(self.layer_mean),
            torch.from_numpy(self.layer_std),
            self.layer_delta,
            torch.from_numpy(np.broadcast_to(span, (2, len(self.layer_mean))).copy()),
            torch.from_numpy(layer_matrix(geometry)),
            self.threshold_mev,
            threshold,
        )

    def layer_targets(self, showers: ShowerSet) -> NDArray[np.float32]:
        """Standardised layer vectors (N, 1 + L) float32 the layer-energy stage trains on."""
        module = self.layer_energies(showers.geometry)
        if module is None:
            raise ValueError("layer_targets needs a preprocessor fitted with layer_energies on")
        return _apply_chunked(module, showers, module.dim)

    def module(self) -> PreprocessTransform:
        """The torch form (buffers on CPU, float32)."""
        return PreprocessTransform(
            torch.from_numpy(self.mean),
            torch.from_numpy(self.std),
            self.eps_mev,
            self.threshold_mev,
            self.log_max,
        )

    def transform(self, showers: ShowerSet) -> NDArray[np.float32]:
        """Model-space values (N, n_voxels) float32 of a ``ShowerSet``."""
        return _apply_chunked(self.module(), showers, showers.showers.shape[1])

    def inverse(self, z: NDArray[np.floating], energy: NDArray[np.floating]) -> NDArray[np.float32]:
        """Showers (N, n_voxels) in MeV from model-space values (N, n_voxels) and energy (N,) MeV."""
        with torch.no_grad():
            return (
                self.module()
                .inverse(
                    torch.as_tensor(np.asarray(z, np.float32)),
                    torch.as_tensor(np.asarray(energy, np.float32)),
                )
                .numpy()
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists of floats), for checkpoints and JSON."""
        return {
            "config": asdict(self.config),
            "threshold_mev": self.threshold_mev,
            "eps_mev": self.eps_mev,
            "log_max": self.log_max,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "ratio_table": None if self.ratio_table is None else self.ratio_table.tolist(),
            "ratio_log_range": list(self.ratio_log_range),
            "layer_mean": None if self.layer_mean is None else self.layer_mean.tolist(),
            "layer_std": None if self.layer_std is None else self.layer_std.tolist(),
            "layer_delta": self.layer_delta,
            "layer_span": None if self.layer_span is None else self.layer_span.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShowerPreprocessor:
        return cls(
            PreprocessConfig(**data["config"]),
            float(data["threshold_mev"]),
            float(data["eps_mev"]),
            np.asarray(data["mean"], dtype=np.float64),
            np.asarray(data["std"], dtype=np.float64),
            float(data["log_max"]),
            None if data.get("ratio_table") is None else np.asarray(data["ratio_table"], dtype=np.float64),
            tuple(map(float, data.get("ratio_log_range", (0.0, 1.0)))),  # type: ignore[arg-type]
            None if data.get("layer_mean") is None else np.asarray(data["layer_mean"], dtype=np.float64),
            None if data.get("layer_std") is None else np.asarray(data["layer_std"], dtype=np.float64),
            float(data.get("layer_delta", 0.0)),
            None if data.get("layer_span") is None else np.asarray(data["layer_span"], dtype=np.float64),
        )
