"""Cell-spectrum calibration: a fitted, monotone map of each hit cell's energy, applied after any sampler.

A generative model can get the shower right on the whole and still put its cells' energies slightly off:
the DiT trained on Geant4 makes 2.5-4x Geant4's cells of 15-60 keV and too few of 0.1-1 MeV in every ring
(``bench/diagnose_high_level.py``), which a classifier on the voxels sees at once. This stage corrects the
marginal spectrum of hit cells, with the model's correlations left as they are.

Fit (``fit_cell_calibration``): generate showers with the trained model at the incident energies of the
training showers, and take both samples' hit cells (E >= threshold) in groups of one layer and one radial
bin (cells of all alpha bins together: a shower has no preferred alpha), in ``n_energy_bins`` equal bins of
ln E_inc. In each group and energy bin, with u = ln(E / E_inc) of the hits, the ``n_quantiles`` quantiles
(levels evenly spaced from 0 to 1) of the generated hits are the knots x_k and those of the reference hits
the values y_k. The map is piecewise linear through (x_k, y_k) — quantile matching: a generated cell at
the p-th quantile of the model's spectrum moves to the p-th quantile of the reference's — and continues
with slope 1 outside [x_0, x_{K-1}]. Groups with fewer than ``min_hits`` hits in either sample get the
identity. Empty cells stay empty: the number of hits per shower is left to the model, unless
``match_hit_count``: where the model's fraction of hits p_model exceeds the reference's p_ref, the faintest
1 - p_ref / p_model of its hits read zero (the knots become the model's quantiles at levels from that
fraction up), which brings a model that makes too many faint hits (the flow student: 1049 hits per
shower against Geant4's 644) to the reference's count.

Too few hits are the other half: the DiT trained on Geant4 lights 10-35 % too few cells where a layer has a
handful (the tail of the shower in each energy bin), and the high-level classifier reads that (sparsity,
widths). With ``candidate_threshold`` c < 1 the sampler hands over every cell down to c x the readout
threshold (``ShowerSampler.lower_threshold``: the model's cells it came closest to lighting, a deposit below
the threshold) as candidates, the spectrum above is fitted over those candidates, and ``match_hit_count``
(required) then cuts each group's faintest candidates down to the reference's count; the rest map onto the
reference's hits, so candidates become hits exactly where the model lit too few. Only samplers whose
threshold is their last step can (``edm-dit``, ``edm-unet``, ``mdma-gan``; the last also with
``count_scale``, more hits a shower, so more candidates).

Apply (``CellCalibration``): for a shower of incident energy E_inc, each hit is mapped by the maps of the two
energy bins whose centres enclose ln E_inc, and the two results are interpolated linearly in ln E_inc
(clamped to the first and last centre, as ``preprocess.EnergyRatio``); then each layer is scaled back to the
energy it had before (``preserve_layer_energies``, on by default: a layer's energy is something the model,
e.g. the DiT's layer-energy stage, already models with its correlations; a marginal map of layer energies
measured worse). Cells that the scaling pushes below the threshold read zero and the layer's survivors are
scaled once more (a factor >= 1, so none falls below), as ``EnergyRatio.rescale`` does. Torch ops only: the
hits are gathered into flat vectors and each is read off its two maps' tables (``map_table``: every map
tabulated at 257 evenly spaced points between its first and last knot when the calibration is built); the
layer sums are per-hit scatter-adds, and the hits are scattered back, so the calibrated sampler exports to
ONNX (NonZero, Gather, ScatterElements) and costs a small fraction of a dense map. (Until 2026-12-05 the
knots themselves were interpolated in ln E_inc and each hit's interval searched among its blended knots:
the same maps at the bin centres, a different path between them, and three times the time.)

Layer energies (``map_layer_energies``): the same quantile matching, of u = ln(E_layer / E_inc) per layer
and energy bin (over the showers whose layer has energy: the model's layers summed over its candidate cells,
the reference's over its hits), applied to each shower's layer energies; the restoring scaling above then
brings the layer's cells to the mapped energy. Each layer's marginal becomes the reference's while the
showers' ranks, and so the correlations between layers, stay the model's: a model whose longitudinal profile
is off (the mdma-gan's first layer 1.5x too bright, its tail too faint) is corrected where the cell map alone
keeps the error. (Leaving layer energies to the cell map, ``preserve_layer_energies`` off, is another
thing: the sums of independently mapped cells.)

Measured on the Geant4 sample (docs/benchmarks.md, "Cell-spectrum calibration"): the shipped DiT's
low-level AUC falls from 0.714 to 0.63 on 3000 vs 3000 held-out showers with 5000 calibration showers.
The calibration is conditional on E_inc alone: ``fit_cell_calibration`` refuses showers with several
detectors or varying angles.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from caloforge.data import ShowerSet
from caloforge.errors import InputError
from caloforge.geometry import CylindricalGeometry
from caloforge.preprocess import energy_bin_weights, layer_matrix
from caloforge.sampler import ExtraGraph, ShowerSampler, zero_below

__all__ = [
    "CalibratedSampler",
    "CalibrationConfig",
    "CellCalibration",
    "cell_groups",
    "check_single_condition",
    "fit_cell_calibration",
    "map_table",
    "table_map",
]


@dataclass
class CalibrationConfig:
    """How the calibration is fitted (module doc).

    Args:
        n_showers: showers generated for the fit (at incident energies drawn from the reference).
        n_energy_bins: equal bins of ln E_inc over the reference's span.
        n_quantiles: knots per group and energy bin (quantile levels evenly spaced in [0, 1]).
        min_hits: fewest hits in a group and energy bin, in each sample, for a fitted map (else identity).
        preserve_layer_energies: scale each layer back to its energy before the map.
        match_hit_count: where the model makes a larger fraction of hits than the reference (per group and
            energy bin), zero its faintest hits down to the reference's fraction (module doc). Off by
            default: the cut only ever removes hits.
        candidate_threshold: the model's cells down to this fraction of the readout threshold are
            candidate hits (module doc; 1: only its hits). Below 1 it needs ``match_hit_count``, which picks
            the hits among them.
        map_layer_energies: also map each layer's energy, by quantile matching of ln(E_layer / E_inc) per
            layer and energy bin (module doc), and scale the layer's cells to the mapped energy; needs
            ``preserve_layer_energies`` (the scaling that restores a layer's energy).
    """

    n_showers: int = 5000
    n_energy_bins: int = 8
    n_quantiles: int = 33
    min_hits: int = 10
    preserve_layer_energies: bool = True
    match_hit_count: bool = False
    candidate_threshold: float = 1.0
    map_layer_energies: bool = False

    def __post_init__(self) -> None:
        for name, least in (("n_showers", 1), ("n_energy_bins", 1), ("n_quantiles", 2), ("min_hits", 2)):
            value = getattr(self, name)
            if int(value) != value or value < least:
                raise InputError(None, f"calibration.{name}", f"is {value}", f"an integer >= {least}")
        if not 0 < self.candidate_threshold <= 1:
            raise InputError(None, "calibration.candidate_threshold", f"is {self.candidate_threshold}",
                             "a fraction of the readout threshold in (0, 1]")
        if self.candidate_threshold < 1 and not self.match_hit_count:
            raise InputError(None, "calibration.candidate_threshold", f"is {self.candidate_threshold} "
                             "without match_hit_count", "match_hit_count on (it picks the hits among the "
                             "candidates), or 1")
        if self.map_layer_energies and not self.preserve_layer_energies:
            raise InputError(None, "calibration.map_layer_energies", "is on with preserve_layer_energies off",
                             "preserve_layer_energies on (the mapped layer energies are restored by it)")


def cell_groups(geometry: CylindricalGeometry) -> NDArray[np.int64]:
    """(V,) group index of every voxel: one group per (layer, radial bin), numbered layer-major."""
    layer, _, radial = geometry.voxel_indices
    _, index = np.unique(np.stack([layer, radial], axis=1), axis=0, return_inverse=True)
    return index.reshape(-1).astype(np.int64)


def _hit_quantiles(
    showers: ShowerSet, groups: NDArray[np.int64], n_groups: int, bins: NDArray[np.int64], n_bins: int,
    levels: NDArray[np.float64], threshold_mev: float,
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Quantiles (n_bins, n_groups, K) of u = ln(E / E_inc) of hits and the hit counts (n_bins, n_groups)."""
    values: list[list[list[NDArray[np.float64]]]] = [[[] for _ in range(n_groups)] for _ in range(n_bins)]
    for start in range(0, len(showers), 1024):  # chunks bound the float64 copy
        cells = np.asarray(showers.showers[start : start + 1024], dtype=np.float64)  # (n, V) MeV
        energy = np.asarray(showers.energy[start : start + 1024], dtype=np.float64)
        shower, voxel = np.nonzero(cells >= threshold_mev)
        u = np.log(cells[shower, voxel] / energy[shower])
        key = bins[start + shower] * n_groups + groups[voxel]
        order = np.argsort(key, kind="stable")
        key, u = key[order], u[order]
        bounds = np.searchsorted(key, np.arange(n_bins * n_groups + 1))
        for flat in np.nonzero(np.diff(bounds))[0]:
            values[flat // n_groups][flat % n_groups].append(u[bounds[flat] : bounds[flat + 1]])
    quantiles = np.zeros((n_bins, n_groups, len(levels)))
    counts = np.zeros((n_bins, n_groups), dtype=np.int64)
    for b in range(n_bins):
        for g in range(n_groups):
            if values[b][g]:
                hits = np.concatenate(values[b][g])
                counts[b, g] = len(hits)
                quantiles[b, g] = np.quantile(hits, levels)
    return quantiles, counts


def _layer_quantiles(
    showers: ShowerSet, layers: NDArray[np.float32], bins: NDArray[np.int64], n_bins: int,
    levels: NDArray[np.float64], threshold_mev: float,
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Quantiles (n_bins, L, K) of u = ln(E_layer / E_inc), E_layer the sum of a layer's cells from
    ``threshold_mev`` up (``layers``: the (V, L) layer matrix), over the showers whose layer has energy, and
    the number of those showers (n_bins, L)."""
    sums = np.zeros((len(showers), layers.shape[1]))
    for start in range(0, len(showers), 1024):  # chunks bound the float64 copy
        cells = np.asarray(showers.showers[start : start + 1024], dtype=np.float64)  # (n, V) MeV
        sums[start : start + len(cells)] = np.where(cells >= threshold_mev, cells, 0.0) @ layers
    energy = np.asarray(showers.energy, dtype=np.float64)
    quantiles = np.zeros((n_bins, layers.shape[1], len(levels)))
    counts = np.zeros((n_bins, layers.shape[1]), dtype=np.int64)
    for b in range(n_bins):
        for layer in range(layers.shape[1]):
            lit = (bins == b) & (sums[:, layer] > 0)
            counts[b, layer] = int(lit.sum())
            if counts[b, layer]:
                quantiles[b, layer] = np.quantile(np.log(sums[lit, layer] / energy[lit]), levels)
    return quantiles, counts


def check_single_condition(showers: ShowerSet, role: str) -> None:
    """Raise ``InputError`` when theta, phi or the detector vary across ``showers`` (the ``role`` sample):
    the calibration is conditional on the incident energy alone."""
    for name in ("theta", "phi", "detector"):
        values = getattr(showers, name)
        if values is not None and len(values) and np.ptp(np.asarray(values, dtype=np.float64)) > 0:
            raise InputError(showers.source, name, f"varies across the {role} showers",
                             "one value (the calibration is conditional on the incident energy alone)")


def fit_cell_calibration(
    generated: ShowerSet, reference: ShowerSet, threshold_mev: float, config: CalibrationConfig | None = None
) -> CellCalibration:
    """Fit the map (module doc) that takes ``generated``'s hit spectrum to ``reference``'s, per (layer,
    radial bin) group and bin of ln E_inc; both sets on one geometry, energies (N,) in MeV."""
    config = config or CalibrationConfig()
    if generated.geometry.n_voxels != reference.geometry.n_voxels:
        raise InputError(reference.source, "showers", f"have {reference.geometry.n_voxels} voxels",
                         f"{generated.geometry.n_voxels}, the generated showers' readout")
    for showers, role in ((generated, "generated"), (reference, "reference")):
        check_single_condition(showers, role)
        if len(showers) == 0:
            raise InputError(showers.source, "showers", f"are empty (the {role} sample)",
                             "at least one shower")
    log_e = np.log(np.asarray(reference.energy, dtype=np.float64))
    log_lo, log_hi = float(log_e.min()), float(log_e.max())
    if log_hi - log_lo < 1e-6:  # one incident energy: one bin around it
        log_lo, log_hi = log_lo - 0.5, log_hi + 0.5
    n_bins = config.n_energy_bins
    groups = cell_groups(generated.geometry)
    n_groups = int(groups.max()) + 1
    levels = np.linspace(0.0, 1.0, config.n_quantiles)

    def bins_of(showers: ShowerSet) -> NDArray[np.int64]:
        position = (np.log(np.asarray(showers.energy, dtype=np.float64)) - log_lo) / (log_hi - log_lo)
        return np.clip((position * n_bins).astype(np.int64), 0, n_bins - 1)

    gen_bins, ref_bins = bins_of(generated), bins_of(reference)
    candidate_mev = config.candidate_threshold * threshold_mev  # generated: cells the sampler handed over
    x, n_x = _hit_quantiles(generated, groups, n_groups, gen_bins, n_bins, levels, candidate_mev)
    y, n_y = _hit_quantiles(reference, groups, n_groups, ref_bins, n_bins, levels, threshold_mev)
    fitted = (n_x >= config.min_hits) & (n_y >= config.min_hits)  # (B, G)
    cut = np.zeros((n_bins, n_groups))
    if config.match_hit_count:  # the faintest fraction ``cut`` of the model's hits reads zero
        cells_per_group = np.bincount(groups, minlength=n_groups)  # (G,) per shower

        def hit_fraction(counts: NDArray[np.int64], bins: NDArray[np.int64]) -> NDArray[np.float64]:
            n_showers = np.bincount(bins, minlength=n_bins)  # (B,)
            return counts / np.maximum(np.outer(n_showers, cells_per_group), 1)

        cut = np.where(fitted, np.clip(1 - hit_fraction(n_y, ref_bins) / np.maximum(
            hit_fraction(n_x, gen_bins), 1e-30), 0.0, 1.0), 0.0)
        # the knots move up to the quantiles cut + (1 - cut) level of the model's hits
        x = np.stack([np.stack([np.interp(cut[b, g] + (1 - cut[b, g]) * levels, levels, x[b, g])
                                for g in range(n_groups)]) for b in range(n_bins)])
    # Knots strictly increasing, so every segment has a slope (ties come from repeated float16 values).
    x = _increasing(x)
    y = np.where(fitted[..., None], y, x)  # identity where a sample is too thin
    layers = layer_matrix(generated.geometry)
    layer_x = layer_y = None
    info: dict[str, Any] = {}
    if config.map_layer_energies:  # the same quantile matching, of each layer's energy
        layer_x, n_lx = _layer_quantiles(generated, layers, gen_bins, n_bins, levels, candidate_mev)
        layer_y, n_ly = _layer_quantiles(reference, layers, ref_bins, n_bins, levels, threshold_mev)
        layer_fitted = (n_lx >= config.min_hits) & (n_ly >= config.min_hits)  # (B, L)
        layer_x = _increasing(layer_x)
        layer_y = np.where(layer_fitted[..., None], layer_y, layer_x)
        info["layer_fitted_fraction"] = float(layer_fitted.mean())
    return CellCalibration(
        torch.from_numpy(x).float(), torch.from_numpy(y).float(), torch.from_numpy(groups),
        torch.from_numpy(layers), log_lo, log_hi, threshold_mev,
        config.preserve_layer_energies, torch.from_numpy(cut).float(), candidate_mev,
        info={**asdict(config), "n_generated": len(generated), "n_reference": len(reference),
              "fitted_fraction": float(fitted.mean()), "mean_cut": float(cut.mean()), **info},
        layer_x=None if layer_x is None else torch.from_numpy(layer_x).float(),
        layer_y=None if layer_y is None else torch.from_numpy(layer_y).float(),
    )


def _increasing(knots: NDArray[np.float64]) -> NDArray[np.float64]:
    """Knots (..., K) made strictly increasing along the last axis (ties, e.g. from repeated float16 values,
    become steps of 1e-7), so every segment of a map has a slope."""
    return np.maximum.accumulate(knots + np.arange(knots.shape[-1]) * 1e-7, axis=-1)


TABLE_INTERVALS = 256  # evenly spaced intervals of u in each map's table (``map_table``)


def map_table(x: Tensor, y: Tensor, intervals: int = TABLE_INTERVALS) -> tuple[Tensor, Tensor]:
    """The piecewise linear maps through knots x and values y (R, K) (x increasing along K), tabulated:
    -> (ends (R, 3): each row's first and last knot and its table points per unit of u; table
    (R (intervals + 1),): row r's map at ``intervals`` + 1 evenly spaced u from its first knot to its last,
    rows one after the other). Computed in float64 (``table_map`` reads it)."""
    x64, y64 = x.double(), y.double()
    span = torch.clamp(x64[:, -1] - x64[:, 0], min=1e-6)
    grid = x64[:, :1] + span[:, None] * torch.linspace(0.0, 1.0, intervals + 1, dtype=torch.float64)
    upper = torch.searchsorted(x64.contiguous(), grid.contiguous(), right=True).clamp(1, x.shape[1] - 1)
    x0, x1 = x64.gather(1, upper - 1), x64.gather(1, upper)
    y0, y1 = y64.gather(1, upper - 1), y64.gather(1, upper)
    share = ((grid - x0) / torch.clamp(x1 - x0, min=1e-12)).clamp(0.0, 1.0)
    ends = torch.stack([x64[:, 0], x64[:, -1], intervals / span], dim=1)
    return ends.float(), (y0 + share * (y1 - y0)).reshape(-1).float()


def table_map(u: Tensor, ends: Tensor, table: Tensor, row0: Tensor, row1: Tensor,
              weight: Tensor) -> tuple[Tensor, Tensor]:
    """Values u (H,) through the tabulated maps (``map_table``) of rows ``row0`` and ``row1`` (H,) int64,
    blended with ``weight`` (H,) (the share of ``row1``) -> (mapped u (H,), the blended first knot (H,)).

    Each row's map is read off its table by linear interpolation between the two nearest points (the
    piecewise linear map itself wherever no knot falls between them; with 256 intervals within 1.1e-3 in u
    for 99 % of the calibrated width-16 mdma-gan's hits, 0.026 at most), continued with slope 1 below the
    first knot and above the last; the two rows' maps are then blended. A few gathers and elementwise
    passes over (H,) tensors, the same in PyTorch and in the exported graph (blending each hit's K knots
    first, then searching them, took three times as long).
    """
    intervals = table.shape[0] // ends.shape[0] - 1
    # both rows in one pass over (2H,) tensors: half the exported graph's nodes of two passes (at batch 1
    # onnxruntime's time goes by nodes, about a microsecond each)
    rows, values = torch.cat([row0, row1]), torch.cat([u, u])
    lo, hi, scale = ends.index_select(0, rows).unbind(1)  # (2H,) each
    inside = torch.minimum(torch.maximum(values, lo), hi)
    position = (inside - lo) * scale  # in [0, intervals]
    cell = torch.clamp(torch.floor(position), max=float(intervals - 1))
    index = rows * (intervals + 1) + cell.long()
    below, above = table.index_select(0, index), table.index_select(0, index + 1)
    mapped = _lerp(below, above, position - cell) + (values - inside)
    (mapped0, mapped1), (first0, first1) = mapped.view(2, -1).unbind(0), lo.view(2, -1).unbind(0)
    return _lerp(mapped0, mapped1, weight), _lerp(first0, first1, weight)


def _lerp(start: Tensor, end: Tensor, weight: Tensor) -> Tensor:
    """start + weight (end - start), written over ``start`` (a fresh tensor: every caller's is a gather):
    ``Tensor.lerp_`` (one pass, no new tensor) in PyTorch; three nodes in an exported graph, where lerp
    exports as seven (two branches and a Where) over the same tensors."""
    if torch.onnx.is_in_onnx_export():
        return start + weight * (end - start)
    return start.lerp_(end, weight)


class CellCalibration(nn.Module):
    """The fitted map (module doc). ``forward(showers (N, V) MeV, energy (N,) MeV) -> showers (N, V) MeV``.

    Buffers: knots ``x`` and values ``y`` (B, G, K) in u = ln(E / E_inc), ``groups`` (V,) int64, each voxel's
    layer ``voxel_layer`` (V,) int64 (from the layer matrix (V, L) it is built with), ``no_layers`` (L,)
    zeros and ``layer_index`` (L,) 0 .. L - 1, ``cut`` (B, G): the fraction of the model's hits that
    ``match_hit_count`` zeroes (hits below the first knot where it is > 0). ``candidate_mev``: cells from
    this energy up are mapped (the readout threshold unless fitted with ``candidate_threshold``; the output's
    threshold stays ``threshold_mev``). ``layer_x``, ``layer_y`` (B, L, K): the layer-energy map's knots and
    values in ln(E_layer / E_inc) (``map_layer_energies``; ``None``: layers keep the model's energies).
    ``hit_ends``, ``hit_table`` and ``layer_ends``, ``layer_table``: both maps tabulated (``map_table``),
    built from the knots (the checkpoint keeps only the knots). ``info`` records how it was fitted (plain
    JSON types).
    """

    x: Tensor
    y: Tensor
    groups: Tensor
    voxel_layer: Tensor
    no_layers: Tensor
    layer_index: Tensor
    cut: Tensor
    layer_x: Tensor | None
    layer_y: Tensor | None
    hit_ends: Tensor
    hit_table: Tensor
    layer_ends: Tensor | None
    layer_table: Tensor | None

    def __init__(
        self, x: Tensor, y: Tensor, groups: Tensor, layers: Tensor, log_lo: float, log_hi: float,
        threshold_mev: float, preserve_layer_energies: bool = True, cut: Tensor | None = None,
        candidate_mev: float | None = None, info: dict[str, Any] | None = None,
        layer_x: Tensor | None = None, layer_y: Tensor | None = None,
    ) -> None:
        super().__init__()
        if x.shape != y.shape or x.ndim != 3 or groups.shape[0] != layers.shape[0]:
            raise InputError(None, "calibration", f"has knots {tuple(x.shape)} and values {tuple(y.shape)}",
                             "two (energy bins, groups, quantiles) tables and one group per voxel")
        self.register_buffer("x", x.float(), persistent=False)
        self.register_buffer("y", y.float(), persistent=False)
        self.register_buffer("groups", groups.long(), persistent=False)
        self.register_buffer("voxel_layer", layers.argmax(1).long(), persistent=False)  # (V,)
        self.register_buffer("no_layers", torch.zeros(layers.shape[1]), persistent=False)  # (L,)
        self.register_buffer("layer_index", torch.arange(layers.shape[1]), persistent=False)  # (L,)
        shapes = [None if t is None else tuple(t.shape) for t in (layer_x, layer_y)]
        expected = (x.shape[0], layers.shape[1])
        if shapes[0] != shapes[1] or (shapes[0] is not None and shapes[0][:2] != expected):
            raise InputError(None, "calibration.layer_x", f"has shape {shapes[0]} and layer_y {shapes[1]}",
                             f"two ({x.shape[0]} energy bins, {layers.shape[1]} layers, quantiles) tables, "
                             "or none")
        if layer_x is not None and not preserve_layer_energies:
            raise InputError(None, "calibration.layer_x", "is given with preserve_layer_energies off",
                             "no layer map, or preserve_layer_energies on")
        self.register_buffer("layer_x", None if layer_x is None else layer_x.float(), persistent=False)
        self.register_buffer("layer_y", None if layer_y is None else layer_y.float(), persistent=False)
        n_knots = x.shape[2]
        hit_ends, hit_table = map_table(self.x.reshape(-1, n_knots), self.y.reshape(-1, n_knots))
        self.register_buffer("hit_ends", hit_ends, persistent=False)
        self.register_buffer("hit_table", hit_table, persistent=False)
        layer_ends = layer_table = None
        if layer_x is not None and layer_y is not None:
            layer_knots = layer_x.shape[2]
            layer_ends, layer_table = map_table(layer_x.reshape(-1, layer_knots),
                                                layer_y.reshape(-1, layer_knots))
        self.register_buffer("layer_ends", layer_ends, persistent=False)
        self.register_buffer("layer_table", layer_table, persistent=False)
        cut = torch.zeros(x.shape[:2]) if cut is None else cut  # calibrations fitted before the cut: none
        self.register_buffer("cut", cut.float(), persistent=False)
        self.log_lo, self.log_hi = float(log_lo), float(log_hi)
        self.threshold_mev = float(threshold_mev)
        self.candidate_mev = self.threshold_mev if candidate_mev is None else float(candidate_mev)
        self.preserve_layer_energies = bool(preserve_layer_energies)
        self.info = dict(info or {})

    def forward(self, showers: Tensor, energy: Tensor) -> Tensor:
        b0, b1, w = energy_bin_weights(energy, self.log_lo, self.log_hi, self.x.shape[0])
        # Only hits are mapped, as flat vectors (about a tenth of the cells), layer energies included; then
        # they are scattered back into zeros. (Dense passes over the N x V cells took half the time.)
        n_voxels = showers.shape[1]
        flat = showers.reshape(-1)  # (N V,)
        where = torch.nonzero(flat >= self.candidate_mev).reshape(-1)  # (H,) flat index of each hit
        shower, voxel = where // n_voxels, where % n_voxels
        # (index_select: PyTorch runs it 2-3x faster than advanced indexing; the same Gather exported)
        before = flat.index_select(0, where)  # (H,) MeV
        log_e = torch.log(energy).index_select(0, shower)  # (H,)
        n_groups = self.x.shape[1]
        group = self.groups.index_select(0, voxel)
        row0 = b0.index_select(0, shower) * n_groups + group  # rows of (B G, K)
        row1 = b1.index_select(0, shower) * n_groups + group
        mapped, kept = self.map_hits(torch.log(before) - log_e, row0, row1, w[:, 0].index_select(0, shower))
        values = torch.exp(mapped + log_e) * kept.to(mapped.dtype)  # (H,) MeV, 0 where cut
        if self.preserve_layer_energies:
            n_layers = self.no_layers.shape[0]
            # (H,) the (shower, layer) of each hit
            slot = shower * n_layers + self.voxel_layer.index_select(0, voxel)
            empty = (energy[:, None] * self.no_layers).reshape(-1)  # (N L,) zeros
            target = empty.scatter_add(0, slot, before)  # (N L,) MeV: the layers' energies before the map
            if self.layer_x is not None:
                target = self.map_layers(target, energy, b0, b1, w)
            values = self._restore_layers(values, target, slot, empty)
        values = zero_below(values, self.threshold_mev)
        return torch.zeros_like(flat).scatter_(0, where, values).reshape(showers.shape)  # in place

    def map_hits(self, u: Tensor, row0: Tensor, row1: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
        """The map of hits u = ln(E / E_inc) (H,) whose knots are rows ``row0`` and ``row1`` (H,) int64 of the
        (B G, K) tables, blended with ``weight`` (H,) (the share of ``row1``) -> (mapped u (H,), kept (H,)
        bool: False where ``match_hit_count`` zeroes the hit, below the first knot of a group with a cut)
        (``table_map``)."""
        mapped, first = table_map(u, self.hit_ends, self.hit_table, row0, row1, weight)
        cut = self.cut.reshape(-1)
        kept = (_lerp(cut.index_select(0, row0), cut.index_select(0, row1), weight) <= 0) | (u >= first)
        return mapped, kept

    def map_layers(self, target: Tensor, energy: Tensor, b0: Tensor, b1: Tensor, w: Tensor) -> Tensor:
        """Layer energies target (N L,) MeV of showers of E_inc ``energy`` (N,) MeV, in energy bins b0, b1
        (N,) with b1's weight w (N, 1) -> the mapped layer energies (N L,) MeV (``map_layer_energies``;
        empty layers stay empty)."""
        assert self.layer_ends is not None and self.layer_table is not None
        n_layers = self.layer_index.shape[0]
        rows0 = (b0[:, None] * n_layers + self.layer_index).reshape(-1)  # (N L,)
        rows1 = (b1[:, None] * n_layers + self.layer_index).reshape(-1)
        log_e = (torch.log(energy)[:, None] + self.no_layers).reshape(-1)  # (N L,)
        u = torch.log(torch.clamp(target, min=1e-30)) - log_e
        mapped, _ = table_map(u, self.layer_ends, self.layer_table, rows0, rows1,
                              (w + self.no_layers).reshape(-1))
        return torch.exp(mapped + log_e) * (target > 0).to(target.dtype)

    def _restore_layers(self, values: Tensor, target: Tensor, slot: Tensor, empty: Tensor) -> Tensor:
        """Mapped hits (H,) MeV scaled so that each (shower, layer) ``slot`` (H,) int64 holds ``target``
        (N L,) MeV; ``empty``: (N L,) zeros. The sums are per-element scatter-adds
        (ONNX ScatterElements): onnxruntime 1.32 runs ScatterND's add on several threads and loses updates
        to the same slot (``onnx_runtime.load_onnx_generator``)."""

        def scaled(hits: Tensor) -> Tensor:
            total = empty.scatter_add(0, slot, hits)
            factor = torch.where(total > 0, target / torch.clamp(total, min=1e-30), torch.ones_like(total))
            return hits * factor.index_select(0, slot)

        values = scaled(values)
        # Hits scaled below the threshold vanish; scaling the survivors once more restores each layer.
        return scaled(zero_below(values, self.threshold_mev))

    def to_dict(self) -> dict[str, Any]:
        """Tensors and plain types, for the checkpoint (``torch.load(weights_only=True)``)."""
        return {"x": self.x.cpu(), "y": self.y.cpu(), "groups": self.groups.cpu(), "log_lo": self.log_lo,
                "log_hi": self.log_hi, "threshold_mev": self.threshold_mev,
                "preserve_layer_energies": self.preserve_layer_energies, "cut": self.cut.cpu(),
                "candidate_mev": self.candidate_mev, "info": self.info,
                **({} if self.layer_x is None or self.layer_y is None else
                   {"layer_x": self.layer_x.cpu(), "layer_y": self.layer_y.cpu()})}

    @classmethod
    def from_dict(cls, data: dict[str, Any], geometry: CylindricalGeometry) -> CellCalibration:
        groups = torch.as_tensor(data["groups"])
        if groups.shape[0] != geometry.n_voxels:
            raise InputError(None, "calibration.groups", f"has {groups.shape[0]} voxels",
                             f"{geometry.n_voxels}, the model's readout")
        return cls(torch.as_tensor(data["x"]), torch.as_tensor(data["y"]), groups,
                   torch.from_numpy(layer_matrix(geometry)), float(data["log_lo"]), float(data["log_hi"]),
                   float(data["threshold_mev"]), bool(data["preserve_layer_energies"]),
                   torch.as_tensor(data["cut"]) if "cut" in data else None,
                   float(data["candidate_mev"]) if "candidate_mev" in data else None, dict(data["info"]),
                   torch.as_tensor(data["layer_x"]) if "layer_x" in data else None,
                   torch.as_tensor(data["layer_y"]) if "layer_y" in data else None)


class CalibratedSampler(ShowerSampler):
    """A family's sampler followed by a ``CellCalibration``: same inputs, noise spec and options. A
    calibration that picks hits among candidates (``candidate_mev`` below the threshold) first has the
    family's sampler hand them over (``ShowerSampler.lower_threshold``)."""

    def __init__(self, inner: ShowerSampler, calibration: CellCalibration) -> None:
        super().__init__()
        if calibration.candidate_mev < calibration.threshold_mev:  # it picks hits among fainter cells
            inner.base().lower_threshold(calibration.candidate_mev)
        self.inner = inner
        self.calibration = calibration
        self.noise = inner.noise
        self.options = inner.options

    def forward(
        self, energy: Tensor, theta: Tensor, phi: Tensor, detector: Tensor, *noise: Tensor
    ) -> Tensor:
        return self.calibration(self.inner(energy, theta, phi, detector, *noise), energy)

    def base(self) -> ShowerSampler:
        return self.inner.base()

    def metadata(self) -> dict[str, Any]:
        return {**self.inner.metadata(), "calibration": self.calibration.info}

    def extra_graphs(self) -> dict[str, ExtraGraph]:
        return self.inner.extra_graphs()

