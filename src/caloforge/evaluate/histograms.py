"""The histograms that are compared, with the CaloChallenge binning, and their separation powers.

Binning (CaloChallenge ``evaluate_plotting_helper.py``, datasets 2 and 3):

=================  ===========================================================================
E_tot / E_inc      100 bins over [0.5, 1.5] (times the median when that lies outside)
E per layer        39 log bins from the voxel threshold to the reference's maximum in that layer
centre x, y        100 bins over [-30, 30] mm
width x, y         100 bins over [0, 30] mm
centre r, width r  100 bins over [0, 42] mm and [0, 20] mm
sparsity           20 bins over [0, 1]
voxel energy       49 log bins from the voxel threshold to the reference's largest voxel
=================  ===========================================================================

Lengths are scaled by (outer radius / 41.85 mm) for other readouts, so datasets 2 and 3 get the
official bins exactly. Values outside the bins are ignored, as with the official ``plt.hist``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from caloforge.evaluate.features import FINE_LOG10_EDGES, Features
from caloforge.evaluate.metrics import histogram_separation, separation_power

__all__ = [
    "LAYER_KINDS",
    "HistogramSpec",
    "histogram_specs",
    "rebin_voxel_counts",
    "separation_powers",
    "values_of",
]

# Per-layer feature kinds: (attribute of Features, axis label).
LAYER_KINDS: dict[str, str] = {
    "e_layer": "energy in layer [MeV]",
    "centre_x": "centre of energy in x (eta) [mm]",
    "centre_y": "centre of energy in y (phi) [mm]",
    "width_x": "width in x (eta) [mm]",
    "width_y": "width in y (phi) [mm]",
    "centre_r": "centre of energy in r [mm]",
    "width_r": "width in r [mm]",
    "sparsity": "fraction of voxels without deposit",
}
_OFFICIAL_RADIUS_MM = 41.85  # outer radius of datasets 2 and 3, for which the official limits are set


@dataclass(frozen=True)
class HistogramSpec:
    """One compared histogram: ``kind`` (a ``LAYER_KINDS`` key, "etot_einc" or "voxel_energy"),
    ``layer`` (None for per-shower kinds), bin ``edges`` and whether the x axis is logarithmic."""

    kind: str
    layer: int | None
    edges: NDArray[np.float64]
    log_x: bool = False

    @property
    def name(self) -> str:
        return self.kind if self.layer is None else f"{self.kind}_{self.layer}"


def values_of(features: Features, spec: HistogramSpec) -> NDArray[np.float64]:
    """Per-shower values histogrammed by ``spec`` (not for "voxel_energy", which is pre-binned)."""
    if spec.kind == "etot_einc":
        return features.e_total / features.energy
    if spec.layer is None:
        raise ValueError(f"'{spec.kind}' has no per-shower values")
    return np.asarray(getattr(features, spec.kind)[:, spec.layer])


def rebin_voxel_counts(features: Features, edges: NDArray[np.float64]) -> NDArray[np.float64]:
    """The voxel-energy spectrum in ``edges`` (MeV) from the fine log histogram kept in ``features``.

    Fine bins (0.1 % wide in log10 E) go to the coarse bin that holds their centre, clipped into the
    range when they straddle its ends, so the official bins are matched to within one fine bin.
    """
    log_edges = np.log10(edges)
    lower, upper = FINE_LOG10_EDGES[:-1], FINE_LOG10_EDGES[1:]
    inside = (upper > log_edges[0]) & (lower <= log_edges[-1])
    index = np.searchsorted(log_edges, 0.5 * (lower + upper), side="right") - 1
    index = np.clip(index, 0, len(edges) - 2)
    counts = np.bincount(index[inside], weights=features.voxel_counts[inside], minlength=len(edges) - 1)
    return counts.astype(np.float64)


def _log_edges(low: float, high: float, n_edges: int) -> NDArray[np.float64]:
    """``n_edges`` log-spaced edges from ``low`` to ``high``; the ends are set exactly, because 10**log10(x)
    can round below x and would drop the maximum (the one entry that defines the top edge)."""
    edges = np.logspace(np.log10(low), np.log10(high), n_edges)
    edges[0], edges[-1] = low, high
    return edges


def histogram_specs(reference: Features) -> list[HistogramSpec]:
    """Every compared histogram, binned as the official code does for ``reference``'s readout."""
    s = reference.geometry.outer_radius_mm / _OFFICIAL_RADIUS_MM
    threshold = reference.threshold_mev
    # The official [0.5, 1.5] assumes energies corrected for the sampling fraction (CaloChallenge files);
    # for raw visible energies (e.g. E_tot / E_inc ~ 0.02 in SiW) the same relative range around the
    # reference's median is used instead, so that the histogram is not empty.
    median = float(np.median(reference.e_total / reference.energy)) if len(reference) else 1.0
    centre = 1.0 if 0.5 < median < 1.5 or median <= 0 else median
    specs = [HistogramSpec("etot_einc", None, np.linspace(0.5 * centre, 1.5 * centre, 101))]
    limits = {
        "centre_x": (-30 * s, 30 * s), "centre_y": (-30 * s, 30 * s), "width_x": (0.0, 30 * s),
        "width_y": (0.0, 30 * s), "centre_r": (0.0, 42 * s), "width_r": (0.0, 20 * s),
    }
    for kind in LAYER_KINDS:
        for layer in range(reference.geometry.n_layers):
            if reference.geometry.layers[layer].n_voxels == 0:
                continue
            if kind == "e_layer":
                top = float(reference.e_layer[:, layer].max()) if len(reference) else 0.0
                if top <= threshold:  # the official binning is undefined for a layer that is always empty
                    continue
                edges = _log_edges(threshold, top, 40)
                specs.append(HistogramSpec(kind, layer, edges, log_x=True))
            elif kind == "sparsity":
                specs.append(HistogramSpec(kind, layer, np.linspace(0.0, 1.0, 21)))
            else:
                specs.append(HistogramSpec(kind, layer, np.linspace(*limits[kind], 101)))
    if reference.max_voxel > threshold:
        edges = _log_edges(threshold, reference.max_voxel, 50)
        specs.append(HistogramSpec("voxel_energy", None, edges, log_x=True))
    return specs


def separation_powers(
    reference: Features, generated: Features, specs: list[HistogramSpec] | None = None
) -> dict[str, float]:
    """Separation power of every histogram in ``specs`` (default: ``histogram_specs(reference)``),
    keyed by ``HistogramSpec.name``; NaN where either histogram is empty."""
    result: dict[str, float] = {}
    for spec in specs if specs is not None else histogram_specs(reference):
        if spec.kind == "voxel_energy":
            value = separation_power(rebin_voxel_counts(reference, spec.edges),
                                     rebin_voxel_counts(generated, spec.edges))
        else:
            value = histogram_separation(values_of(reference, spec), values_of(generated, spec), spec.edges)
        result[spec.name] = value
    return result
