"""The ``points`` representation: showers as point clouds of hits, and hits back to readout cells.

Every cell with E > 0 becomes one hit with ``N_FEATURES`` = 5 features (``PointScaling`` fixes the scales
from the run's context, so no extra fit is needed):

====  ==========================================================================================
0     z: (layer + u) / n_layers mapped onto [-1, 1]
1, 2  cos(alpha), sin(alpha): alpha drawn uniformly inside the cell's angular bin. Periodic, so the
      features have no seam at +-pi; back to cells, alpha = atan2(sin, cos) and the bin is taken modulo
      n_alpha (a hit just past +pi lands in the first bin, as it should).
3     r: radius in mm drawn uniformly inside the cell's radial bin, / outer radius mapped onto [-1, 1]
4     e: ln(E_hit / E_inc) standardised, (ln - mid) / half (``PointScaling``)
====  ==========================================================================================

The uniform draws ("dequantisation", so a continuous model sees a continuous density) keep 1e-3 of a cell
away from its edges, so float rounding never moves a hit to a neighbour; they come from a numpy generator
seeded with the batch's incident energies (a pure function of the batch: no global random state, the same
draws whenever the same batch recurs, as a validation batch does).

A batch (``points_batch``) is padded and masked: hits (B, M_b, 5) float32 with each shower's hits sorted by
energy, highest first (so a model with fewer slots keeps the largest hits by slicing), mask (B, M_b) bool,
condition vectors (B, C) and E_inc (B,) MeV; M_b is the batch's largest hit count (at least 1).

With ``model.positions: logit`` the networks see positions in cell units through a logit instead
(``LogitPositions``): z as (layer + u) / n_layers and r as (ring + u) / n_radial of its layer, each on
(0, 1), then logit / 4. The logit spreads out the dense part of a shower near r = 0 and keeps every network
output inside the readout: on [-1, 1] a generator's tail beyond the front face piles up in the first layer
(1 % of the hits of an 8-minute Geant4 probe; layer 0 got 2.7 times Geant4's hits), which a classifier
sees. Ring units equal r / R on a readout with equal rings (CaloChallenge datasets 2 and 3) and give each
ring the same width on an irregular one.

The networks take the real hits packed (``pack``: (T, 5) and the shower of each); ``Voxeliser`` is the
way back, packed hits -> cells, summing the energies of hits that share a cell with a
scatter-add, so it exports to ONNX. It handles per-layer binning (CaloChallenge dataset 1): each layer's
alpha and radial bins are looked up from tables indexed by the hit's layer. No Lightning here.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from caloforge.context import RunContext
from caloforge.data import ShowerSet
from caloforge.geometry import CylindricalGeometry
from caloforge.models.mean_field import scatter_rows

__all__ = ["N_FEATURES", "LogitPositions", "PointScaling", "Voxeliser", "grid_to_hits", "hit_energies",
           "pack", "points_batch", "spread_collisions"]

N_FEATURES = 5
_MARGIN = 1e-3  # fraction of a cell kept free at its edges by the dequantisation
_BIG = 1e9  # stands for "no edge" in the padded radial-edge table (mm)
_SPREAD_TRIES = 64  # ranks a cell's hits get in spread_collisions (later ones share the last rank's try)


@dataclass(frozen=True)
class PointScaling:
    """Scales of the hit features (module doc).

    Args:
        n_layers: readout layers (z maps [0, n_layers) onto [-1, 1]).
        outer_radius_mm: largest radial edge (r maps [0, R] onto [-1, 1]).
        log_mid, log_half: ln(E_hit / E_inc) = log_mid + log_half x e. The span is from the readout
            threshold at the largest training energy, ln(threshold / E_max), the smallest value a hit can
            take, to ln(mean E_tot / E_inc), above what one cell holds: a fixed, fitted-once min-max
            standardisation (the run's context holds no per-hit statistics).
    """

    n_layers: int
    outer_radius_mm: float
    log_mid: float
    log_half: float

    @classmethod
    def of(cls, context: RunContext) -> PointScaling:
        lo = math.log(max(context.preprocessor.threshold_mev, 1e-12) / context.ranges.energy_max)
        ratio = context.ranges.mean_energy_ratio
        hi = max(math.log(ratio) if ratio > 0 else lo + 1.0, lo + 1.0)
        return cls(context.geometry.n_layers, float(context.geometry.outer_radius_mm), 0.5 * (lo + hi),
                   0.5 * (hi - lo))

    def layer_of(self, z: Tensor) -> Tensor:
        """z features (...) -> layer indices (...) int64, clamped into the readout."""
        return torch.floor((z + 1) * (0.5 * self.n_layers)).clamp(0, self.n_layers - 1).long()

    def radius_mm(self, r: Tensor) -> Tensor:
        """r features (...) -> radii (...) mm."""
        return (r + 1) * (0.5 * self.outer_radius_mm)


def _lookup(table: Tensor, index: Tensor) -> Tensor:
    """table[index]: rows of ``table`` (R, ...) at int64 ``index`` (...) -> (..., ...). A 1-D index takes
    ``index_select``, which PyTorch runs 2-3x faster than advanced indexing on the sampler's (T,) hits (32
    against 70-110 us for 64,000 lookups in a table of 45 or 6480); both export as one Gather."""
    return table.index_select(0, index) if index.dim() == 1 else table[index]


def _ring_of(r_mm: Tensor, inner: Tensor, n_radial: Tensor) -> Tensor:
    """Radii (...) mm, each layer's inner radial edges (..., E) mm (padded with edges beyond the readout) and
    its n_radial (...) -> ring indices (...) int64: the inner edges <= r, at most the last ring."""
    return torch.minimum((r_mm[..., None] >= inner).long().sum(-1), n_radial - 1)


@lru_cache(maxsize=8)
def _cell_table(geometry: CylindricalGeometry) -> NDArray[np.float64]:
    """Per flat voxel (V, 5): layer, alpha lower edge (rad), alpha bin width (rad), r lower and upper
    edge (mm)."""
    layer, alpha, radial = geometry.voxel_indices
    table = np.empty((geometry.n_voxels, 5))
    table[:, 0] = layer
    for index, binning in enumerate(geometry.layers):
        sel = layer == index
        if not sel.any():
            continue
        width = 2 * math.pi / binning.n_alpha
        edges = np.asarray(binning.r_edges)
        table[sel, 1] = -math.pi + alpha[sel] * width
        table[sel, 2] = width
        table[sel, 3] = edges[radial[sel]]
        table[sel, 4] = edges[radial[sel] + 1]
    return table


def grid_to_hits(
    showers: NDArray[np.floating], energy: NDArray[np.floating], geometry: CylindricalGeometry,
    scaling: PointScaling, rng: np.random.Generator,
) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """Showers (N, V) MeV and E_inc (N,) MeV -> (hits (N, M_b, 5) float32, mask (N, M_b) bool): one hit per
    cell with E > 0, sorted by energy (highest first), features as in the module doc, padding zero."""
    showers = np.asarray(showers, dtype=np.float64)
    n_hits = (showers > 0).sum(axis=1)
    m = max(1, int(n_hits.max(initial=0)))
    order = np.argsort(-showers, axis=1, kind="stable")[:, :m]  # (N, M_b): cells, highest energy first
    e = np.take_along_axis(showers, order, axis=1)
    mask = np.arange(m)[None] < n_hits[:, None]  # (N, M_b)
    cells = _cell_table(geometry)[order]  # (N, M_b, 5)
    u = rng.uniform(_MARGIN, 1 - _MARGIN, (*order.shape, 3))
    z = (cells[..., 0] + u[..., 0]) / scaling.n_layers * 2 - 1
    alpha = cells[..., 1] + u[..., 1] * cells[..., 2]
    r = (cells[..., 3] + u[..., 2] * (cells[..., 4] - cells[..., 3])) / scaling.outer_radius_mm * 2 - 1
    ratio = np.where(mask, e, 1.0) / np.asarray(energy, dtype=np.float64)[:, None]
    y = (np.log(ratio) - scaling.log_mid) / scaling.log_half
    hits = np.stack([z, np.cos(alpha), np.sin(alpha), r, y], axis=-1) * mask[..., None]
    return hits.astype(np.float32), mask


def points_batch(showers: ShowerSet, context: RunContext) -> tuple[Tensor, ...]:
    """The ``points`` representation of a batch (module doc): hits (B, M_b, 5) float32, mask (B, M_b) bool,
    condition vectors (B, C) float32, E_inc (B,) float32 MeV."""
    energy = np.asarray(showers.energy, dtype=np.float64)
    rng = np.random.default_rng(zlib.crc32(np.ascontiguousarray(energy).tobytes()))
    hits, mask = grid_to_hits(showers.showers, energy, showers.geometry, PointScaling.of(context), rng)
    return (torch.from_numpy(hits), torch.from_numpy(mask), context.spec.encode(showers),
            torch.from_numpy(energy.astype(np.float32)))


def pack(hits: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Padded hits (B, M, F) with mask (B, M) -> (the real hits packed (T, F), seg (T,) int64 the shower of
    each), shower by shower in slot order: the layout of ``caloforge.models.mean_field``."""
    return hits[mask], mask.nonzero()[:, 0]


def hit_energies(hits: Tensor, scaling: PointScaling) -> Tensor:
    """Hits (..., 5) -> E_hit / E_inc (...), capped at 1 (no hit holds more than the incident energy)."""
    return torch.exp((scaling.log_mid + scaling.log_half * hits[..., 4]).clamp(max=0.0))


class LogitPositions(nn.Module):
    """Hit features (``grid_to_hits``) <-> the networks' coordinates with ``model.positions: logit``
    (module doc): ``to_model(hits)``, ``to_hits(x)``: (..., 5) -> (..., 5), z and r replaced, inverse of each
    other inside the readout. ``geometry`` is the readout the model was trained on (its rings place r);
    piecewise linear plus a logit, ONNX-exportable; tables are buffers derived from the geometry (not
    weights)."""

    edges: Tensor
    n_radial: Tensor

    def __init__(self, geometry: CylindricalGeometry, scaling: PointScaling) -> None:
        super().__init__()
        self.scaling = scaling
        self.width = max(b.n_radial for b in geometry.layers) + 1  # edges per layer in the flat table
        edges = np.zeros((geometry.n_layers, self.width))
        for index, binning in enumerate(geometry.layers):
            row = np.asarray(binning.r_edges, dtype=np.float64) if binning.n_radial else np.zeros(1)
            edges[index, : len(row)] = row
            edges[index, len(row):] = row[-1] + 1.0  # unused: keeps every padded bin's width positive
        flat = torch.as_tensor(edges.reshape(-1), dtype=torch.float32)
        self.register_buffer("edges", flat, persistent=False)
        self.register_buffer("n_radial", torch.tensor([max(b.n_radial, 1) for b in geometry.layers],
                                                      dtype=torch.int64), persistent=False)

    def _layer(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z in [-1, 1] (...) -> (its layer (...) int64, that layer's n_radial)."""
        layer = self.scaling.layer_of(z)
        return layer, _lookup(self.n_radial, layer)

    def to_model(self, hits: Tensor) -> Tensor:
        z = hits[..., 0]
        layer, n = self._layer(z)
        row = layer * self.width
        r_mm = self.scaling.radius_mm(hits[..., 3])
        inner = self.edges[row[..., None] + torch.arange(1, self.width, device=hits.device)]  # (..., W - 1)
        k = _ring_of(r_mm, inner, n)
        lo, hi = _lookup(self.edges, row + k), _lookup(self.edges, row + k + 1)
        ring = (k.to(hits.dtype) + ((r_mm - lo) / (hi - lo)).clamp(0.0, 1.0)) / n.to(hits.dtype)  # [0, 1]
        return torch.stack([_logit((z + 1) * 0.5), hits[..., 1], hits[..., 2], _logit(ring), hits[..., 4]],
                           dim=-1)

    def _layer_ring(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Networks' coordinates (..., 5) -> z feature, layer (int64), ring units y in [0, n_radial] and
        ring k (int64) of each hit."""
        z = torch.sigmoid(_LOGIT_SCALE * x[..., 0]) * 2 - 1
        layer, n = self._layer(z)
        y = torch.sigmoid(_LOGIT_SCALE * x[..., 3]) * n.to(x.dtype)  # ring units, [0, n]
        return z, layer, y, torch.minimum(torch.floor(y).long(), n - 1)

    def to_hits(self, x: Tensor) -> Tensor:
        z, layer, y, k = self._layer_ring(x)
        row = layer * self.width
        place = (y - k.to(x.dtype)).clamp(0.0, 1.0)
        lo, hi = _lookup(self.edges, row + k), _lookup(self.edges, row + k + 1)
        r = (lo + place * (hi - lo)) / self.scaling.outer_radius_mm * 2 - 1
        return torch.stack([z, x[..., 1], x[..., 2], r, x[..., 4]], -1)

    def layer_ring(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Networks' coordinates (..., 5) -> (layer, ring) (...) int64 of each hit on the trained readout,
        read off the logits: ``Voxeliser.forward`` with these is ``to_hits`` then ``Voxeliser`` on that
        readout (the same cells but where float rounding puts a hit on a cell edge), without the radii."""
        _, layer, _, k = self._layer_ring(x)
        return layer, k


_LOGIT_SCALE = 4.0  # most of the data's z and r logits lie within +-3 x 4 (cell margins bound them by 11)


def _logit(p: Tensor) -> Tensor:
    p = p.clamp(1e-6, 1 - 1e-6)
    return torch.log(p / (1 - p)) / _LOGIT_SCALE


def spread_collisions(index: Tensor, seg: Tensor, n_voxels: int, alpha_bin: Tensor, place: Tensor,
                      n_alpha: Tensor, n_radial: Tensor, empty: Tensor, rounds: int = 1) -> Tensor:
    """Hits' cells (T,) int64 in [0, V = ``n_voxels``) -> the flat index seg V + cell (T,) into the batch's
    N V cells, with hits that share a cell moved to free alpha neighbours (``Voxeliser.spread``).

    In each of ``rounds`` rounds the hits of a cell are ranked (0, 1, 2, ... in their order in ``index``);
    rank 0 stays, and rank k >= 1 tries the alpha bin ceil(j / 2) away, j = k + round, on the
    side of its own position in its first bin (``place`` in [0, 1]) for odd j and the other side for even
    j, wrapping in alpha. It moves there only if no hit was in that cell at the start of the round (two hits
    moving in one round may still meet there). ``seg`` (T,) int64: the shower of
    each hit; ``alpha_bin`` (T,) float: the hits' alpha bins; ``n_alpha`` (T,) float, ``n_radial`` (T,)
    int64: each hit's layer's bins; ``empty``: (N V,) zeros, the batch's cells.
    """
    side = torch.where(place >= 0.5, 1.0, -1.0)
    positions = torch.arange(index.shape[0], device=index.device)  # (T,)
    no_rank = positions * 0
    exporting = torch.onnx.is_in_onnx_export()
    if exporting:  # what only the graph's sort keys and per-cell counts read
        n_hits, one_hit = positions[-1:] + 1, torch.ones_like(place)
    base = seg * n_voxels
    wrap = n_alpha.clamp(min=1.0)
    # the j-th try, j >= 1: +1, -1, +2, -2, ... alpha bins times the side; a lookup by rank (rank 0 stays),
    # not arithmetic on it (each small op is a node that costs onnxruntime microseconds at batch 1)
    j = torch.arange(_SPREAD_TRIES + rounds, dtype=place.dtype, device=place.device)
    tries = torch.ceil(j / 2) * torch.where(j % 2 == 1, 1.0, -1.0)
    for round_ in range(rounds):
        flat = base + index
        if exporting:  # unique keys: the same order in every runtime (TopK need not be stable)
            order = torch.argsort(flat * n_hits + positions)
            ordered = flat.index_select(0, order)
        else:  # the same order: a stable sort of the cells, which PyTorch sorts 3x faster as int32 keys
            ordered, order = torch.sort(flat.int() if empty.shape[0] < 2**31 else flat, stable=True)
        start = ordered != torch.cat([ordered[:1] - 1, ordered[:-1]])  # (T,) first hit of its cell
        group = torch.cumsum(start.long(), 0) - 1
        first = start.nonzero()[:, 0]
        rank = no_rank.scatter(0, order, positions - first.index_select(0, group))  # (T,) within its cell
        offsets = torch.cat([tries[:1] * 0, tries[round_ + 1 : round_ + _SPREAD_TRIES]])  # by rank
        target = alpha_bin + side * offsets.index_select(0, rank.clamp(max=_SPREAD_TRIES - 1))
        target = target - n_alpha * torch.floor(target / wrap)  # wrapped into [0, n_alpha)
        moved = (index + (target - alpha_bin).long() * n_radial).clamp(0, n_voxels - 1)  # (T,)
        # a cell of its own is taken (rank 0, or a try that wrapped round to where it is)
        if exporting:  # the hits in each cell (ScatterND adds)
            free = scatter_rows(empty, flat, one_hit).index_select(0, base + moved) == 0
        else:  # whether a cell has a hit, a byte a cell: 0.33 against 0.50 ms for 73,000 hits in 100 showers
            taken = torch.zeros(empty.shape, dtype=torch.bool, device=empty.device)
            taken.index_put_((flat,), torch.ones((), dtype=torch.bool, device=empty.device))
            free = taken.index_select(0, base + moved).logical_not_()
        index = torch.where(free, moved, index)
        alpha_bin = torch.where(free, target, alpha_bin)
    return base + index


class Voxeliser(nn.Module):
    """Hits -> cells: ``forward(hits, seg, energy, layer=None, ring=None)``: packed hits (T, 5), seg (T,)
    int64 the shower of each hit, E_inc (N,) MeV -> showers (N, V) MeV, the energies of the hits in each cell
    summed (scatter-add; ONNX-exportable). ``layer`` and ``ring`` (T,) int64: each hit's layer and radial
    bin, when known (``LogitPositions.layer_ring``); then only the hits' alpha and energy are read.

    Positions outside the readout are clamped to the nearest layer and radial bin; alpha wraps. Hits in an
    empty layer (no voxels) are dropped. Tables are buffers derived from the geometry (not weights).
    ``spread`` k > 0 (default 0): hits that share a cell first move to free alpha neighbours in k rounds of
    ``spread_collisions``.
    """

    layer_offset: Tensor
    n_alpha: Tensor
    n_radial: Tensor
    inner_edges: Tensor
    layer_used: Tensor
    no_energy: Tensor

    def __init__(self, geometry: CylindricalGeometry, scaling: PointScaling, spread: int = 0) -> None:
        super().__init__()
        self.n_voxels = geometry.n_voxels
        self.scaling = scaling
        n_edges = max(max(b.n_radial for b in geometry.layers) - 1, 1)
        inner = np.full((geometry.n_layers, n_edges), _BIG)
        for index, binning in enumerate(geometry.layers):
            edges = binning.r_edges[1:-1]  # the radial bin of r is the number of inner edges <= r
            inner[index, : len(edges)] = edges
        buffers = {
            "layer_offset": torch.as_tensor(geometry.layer_offsets[:-1], dtype=torch.int64),
            "n_alpha": torch.tensor([float(b.n_alpha) for b in geometry.layers]),
            "n_radial": torch.tensor([b.n_radial for b in geometry.layers], dtype=torch.int64),
            "inner_edges": torch.as_tensor(inner, dtype=torch.float32),
            "layer_used": torch.tensor([float(b.n_voxels > 0) for b in geometry.layers]),
            "no_energy": torch.zeros(geometry.n_voxels),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value, persistent=False)
        self.spread = int(spread)  # rounds of ``spread_collisions`` (0: none)

    def cells(self, hits: Tensor, layer: Tensor | None = None, ring: Tensor | None = None) -> Tensor:
        """Hits (..., 5) -> flat voxel index (...) int64 of each hit's cell (in [0, V)); ``layer`` and
        ``ring`` (...) int64, the hits' layers and radial bins when the caller has them already (then z and
        r are not read)."""
        return self._cells(hits, layer, ring)[0]

    def _cells(self, hits: Tensor, layer: Tensor | None = None,
               ring: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``cells``, then each hit's alpha bin (float), its place in that bin ([0, 1]) and its layer's
        n_alpha (float) and n_radial (int64)."""
        layer = self.scaling.layer_of(hits[..., 0]) if layer is None else layer
        # in [-pi, pi]; of contiguous copies: PyTorch's atan2 of two strided columns ran 10x slower (0.67
        # against 0.07 ms for 63,000 hits), its vectorised kernel differing by an ulp (exported: no copies)
        alpha = torch.atan2(hits[..., 2].contiguous(), hits[..., 1].contiguous())
        n_alpha = _lookup(self.n_alpha, layer)
        position = (alpha + math.pi) * (0.5 / math.pi) * n_alpha  # [0, n_alpha]
        # alpha = pi (atan2 of +0, x < 0) is the upper edge of the last bin; a minimum, not a remainder
        # (onnxruntime ran the exported remainder as two Where passes)
        alpha_bin = torch.minimum(torch.floor(position), n_alpha - 1)
        n_radial = _lookup(self.n_radial, layer)
        if ring is None:
            ring = _ring_of(self.scaling.radius_mm(hits[..., 3]), _lookup(self.inner_edges, layer), n_radial)
        index = _lookup(self.layer_offset, layer) + alpha_bin.long() * n_radial + ring
        return index.clamp(0, self.n_voxels - 1), alpha_bin, position - alpha_bin, n_alpha, n_radial

    def forward(self, hits: Tensor, seg: Tensor, energy: Tensor, layer: Tensor | None = None,
                ring: Tensor | None = None) -> Tensor:
        layer = self.scaling.layer_of(hits[:, 0]) if layer is None else layer  # (T,)
        used = _lookup(self.layer_used, layer)
        deposits = hit_energies(hits, self.scaling) * used * energy.index_select(0, seg)
        index, alpha_bin, place, n_alpha, n_radial = self._cells(hits, layer, ring)
        exporting = torch.onnx.is_in_onnx_export()
        # (N V,) zeros, N dynamic; exported as a broadcast product: a constant-shaped graph (zeros_like()
        # .expand() exports as shape arithmetic, nodes that cost onnxruntime microseconds each)
        empty = ((energy[:, None] * self.no_energy).reshape(-1) if exporting
                 else energy.new_zeros(energy.shape[0] * self.n_voxels))
        if self.spread:  # reads ``empty``, never writes it
            flat = spread_collisions(index, seg, self.n_voxels, alpha_bin, place, n_alpha, n_radial, empty,
                                     self.spread)
        else:
            flat = seg * self.n_voxels + index  # (T,) index into the N x V cells
        if exporting:
            return scatter_rows(empty, flat, deposits).view(-1, self.n_voxels)  # (N, V) MeV
        # in place into the fresh zeros (``scatter_rows`` copies its base: a pass over the N V cells)
        return empty.index_add_(0, flat, deposits).view(-1, self.n_voxels)
