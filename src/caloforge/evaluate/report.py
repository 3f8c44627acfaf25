"""The report: one HTML page (metric table with coloured thresholds, then the plots) and metrics.json.

The directory is built beside its target and renamed into place when complete
(``caloforge.io.atomic_output``), so a failed run leaves no half-written report. Every number in the
table carries a ``data-metric`` attribute with its dotted path in metrics.json, so the page can be
checked against the JSON.
"""

from __future__ import annotations

import html
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from caloforge.evaluate.features import Features
from caloforge.evaluate.histograms import LAYER_KINDS, HistogramSpec, histogram_specs
from caloforge.evaluate.plots import (
    azimuthal_profile,
    plot_average_showers,
    plot_azimuthal_profile,
    plot_distribution,
    plot_layer_grid,
    plot_longitudinal_profile,
    plot_radial_profile,
    plot_separation_summary,
    plot_single_histogram,
)
from caloforge.io import atomic_output
from caloforge.progress import progress_bar

__all__ = ["THRESHOLDS", "Threshold", "write_report"]


@dataclass(frozen=True)
class Threshold:
    """Colour bands of one metric: green below ``good``, amber below ``poor``, red from ``poor`` on."""

    good: float
    poor: float
    why: str

    def colour(self, value: float) -> str:
        if not math.isfinite(value):
            return "grey"
        return "green" if value < self.good else ("amber" if value < self.poor else "red")


# Anchored on the CaloChallenge dataset-2 results (arXiv 2410.21611): Geant4 vs Geant4 low-level AUC 0.500,
# FPD 10.8e-3; the best models AUC 0.53-0.60, FPD 25-150e-3; weak ones AUC > 0.8, FPD > 700e-3. For
# separation powers, two samples of 50k from one distribution give ~ (bins / 2N) ~ 1e-3.
THRESHOLDS: dict[str, Threshold] = {
    "auc": Threshold(0.6, 0.8, "AUC < 0.6 as good as the best CaloChallenge models; >= 0.8 easy to tell "
                     "apart"),
    "jsd": Threshold(0.02, 0.2, "JSD < 0.02 hardly distinguishable; >= 0.2 clearly different"),
    "fpd": Threshold(25.0, 200.0, "FPD x 1e3 < 25 like the best CaloChallenge model; >= 200 clearly off"),
    "kpd": Threshold(0.1, 1.0, "KPD x 1e3 < 0.1 consistent with statistical noise here; >= 1 clearly off"),
    "separation": Threshold(0.01, 0.05, "separation power < 0.01 close to sample noise; >= 0.05 visibly off"),
}

_CSS = """
body { font-family: sans-serif; max-width: 1300px; margin: 1em auto; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em 0; }
td, th { border: 1px solid #bbb; padding: 4px 10px; text-align: left; }
td.num { text-align: right; font-family: monospace; }
.green { background: #c8efc8; } .amber { background: #ffe2a8; } .red { background: #f7b9b9; }
.grey { background: #e4e4e4; }
figure { margin: 1em 0 2em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figure.half { display: inline-block; width: 48%; vertical-align: top; margin-right: 1%; }
figcaption { color: #444; margin-top: 0.3em; }
"""


@dataclass(frozen=True)
class _Plot:
    group: str
    file: str
    title: str
    description: str
    draw: Callable[[Path], None]


def _plots(reference: Features, generated: Features, powers: dict[str, float | None]) -> list[_Plot]:
    specs = histogram_specs(reference)
    by_name = {s.name: s for s in specs}
    finite = {k: v for k, v in powers.items() if v is not None}
    n_layers = reference.geometry.n_layers
    plots = [_Plot("Overview", "separation_summary.png", "Separation power per layer",
                   "Separation power of every compared histogram against the layer; horizontal lines: "
                   "E_tot/E_inc and voxel-energy spectrum. Lower is better; 0 = identical histograms.",
                   lambda p: plot_separation_summary(finite, n_layers, p))]
    if "etot_einc" in by_name:
        edges = by_name["etot_einc"].edges
        binning = ("official binning" if abs(edges[0] - 0.5) < 1e-12 else
                   f"the official [0.5, 1.5] times the reference's median {edges[0] / 0.5:.4g}, as these are "
                   "visible energies, not corrected for the sampling fraction")
        plots.append(_Plot("Overview", "etot_einc.png", "Total deposited energy / incident energy",
                           f"Distribution of E_tot / E_inc ({binning}), normalised, with the ratio.",
                           lambda p: plot_single_histogram(reference, generated, by_name["etot_einc"],
                                                           "E_tot / E_inc", p, finite.get("etot_einc"))))
    if "voxel_energy" in by_name:
        plots.append(_Plot("Overview", "voxel_energy.png", "Voxel-energy spectrum",
                           "Energies of all voxels above the threshold, 49 log bins up to the reference's "
                           "largest voxel (official binning).",
                           lambda p: plot_single_histogram(reference, generated, by_name["voxel_energy"],
                                                           "voxel energy [MeV]", p,
                                                           finite.get("voxel_energy"))))
    plots += [
        _Plot("Profiles", "longitudinal_profile.png", "Longitudinal profile",
              "Mean energy per layer against depth: where along the shower axis energy is deposited.",
              lambda p: plot_longitudinal_profile(reference, generated, p)),
        _Plot("Profiles", "radial_profile.png", "Radial profile",
              "Mean energy per radial bin, summed over layers and angles: how wide the shower is.",
              lambda p: plot_radial_profile(reference, generated, p)),
    ]
    if azimuthal_profile(reference) is not None:
        plots.append(_Plot("Profiles", "azimuthal_profile.png", "Azimuthal profile",
                           "Mean energy per alpha bin, summed over layers and radii: flat for a symmetric "
                           "beam, and a model with a seam where alpha wraps at +-pi shows it at both ends.",
                           lambda p: plot_azimuthal_profile(reference, generated, p)))
    plots += [
        _Plot("Average showers", "average_showers.png", "Average shower per layer",
              "Mean energy per voxel in layers spread over the depth (polar images, log colour); "
              "last row: generated / reference.",
              lambda p: plot_average_showers(reference, generated, p)),
    ]
    for kind, label in LAYER_KINDS.items():
        kind_specs = [s for s in specs if s.kind == kind]
        if kind_specs:
            plots.append(_Plot(
                "Per-layer distributions", f"{kind}.png", f"{label[0].upper()}{label[1:]}, per layer",
                f"Per-layer histograms of the {label} (official binning), normalised; S = separation power.",
                _grid_drawer(reference, generated, kind_specs, finite)))
    return plots


def _grid_drawer(reference: Features, generated: Features, specs: list[HistogramSpec],
                 powers: dict[str, float]) -> Callable[[Path], None]:
    return lambda path: plot_layer_grid(reference, generated, specs, path, powers)


def _cell(value: float | None, path: str, threshold: Threshold | None, text: str | None = None) -> str:
    number = math.nan if value is None else float(value)
    colour = threshold.colour(number) if threshold else ""
    shown = text if text is not None else ("n/a" if not math.isfinite(number) else f"{number:.4g}")
    return f'<td class="num {colour}" data-metric="{html.escape(path)}">{html.escape(shown)}</td>'


def _metric_rows(metrics: dict[str, Any]) -> list[str]:
    rows = []
    for kind, result in metrics.get("classifier", {}).items():
        label = {"low": "low-level (voxels)", "high": "high-level (features)"}[kind]
        auc = _cell(result["auc"], f"classifier.{kind}.auc", THRESHOLDS["auc"])
        jsd = _cell(result["jsd"], f"classifier.{kind}.jsd", THRESHOLDS["jsd"])
        rows.append(f"<tr><td>classifier AUC, {label}</td>{auc}<td>validation split of "
                    f"{result['n_validation']} showers, best epoch {result['best_epoch']}</td></tr>")
        rows.append(f"<tr><td>classifier JSD, {label}</td>{jsd}"
                    "<td>(ln 2 - BCE) / ln 2 after isotonic calibration</td></tr>")
    for key, name in (("fpd_x1e3", "fpd"), ("kpd_x1e3", "kpd")):
        value = metrics[key]
        rows.append(
            f"<tr><td>{name.upper()} x 1e3 (high-level features)</td>"
            f"{_cell(value['value'], f'{key}.value', THRESHOLDS[name])}"
            f"<td>error {_plain(value['error'], f'{key}.error')}</td></tr>")
    if "likelihood" in metrics:
        value = metrics["likelihood"]
        gen, ref = value["generated"], value["reference"]
        rows.append(
            "<tr><td>separation power, log-likelihood under the flow</td>"
            f"{_cell(value['separation_power'], 'likelihood.separation_power', THRESHOLDS['separation'])}"
            f"<td>median generated {_plain(gen['median'], 'likelihood.generated.median')}, reference "
            f"{_plain(ref['median'], 'likelihood.reference.median')} nats</td></tr>")
    for kind, value in metrics["separation_power"]["summary"].items():
        rows.append(
            f"<tr><td>separation power, {html.escape(kind)} (mean of {value['n_histograms']})</td>"
            f"{_cell(value['mean'], f'separation_power.summary.{kind}.mean', THRESHOLDS['separation'])}"
            f"<td>worst {html.escape(value['max_at'])}: "
            f"{_plain(value['max'], f'separation_power.summary.{kind}.max')}</td></tr>")
    return rows


def _plain(value: float, path: str) -> str:
    return f'<span data-metric="{html.escape(path)}">{value:.4g}</span>'


def _html(metrics: dict[str, Any], plots: list[_Plot]) -> str:
    samples = metrics["samples"]
    settings = metrics["settings"]
    selection = ", ".join(
        f"{name} in [{settings[name][0]:.6g}, {settings[name][1]:.6g}] {unit}"
        for name, unit in (("energy_range", "MeV"), ("theta_range", "rad"), ("phi_range", "rad"))
        if settings.get(name) is not None) or "all showers"
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>caloforge evaluation</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>caloforge evaluation: generated vs reference</h1>",
        "<table>",
        *(f"<tr><th>{role}</th><td>{html.escape(str(s['file']))}</td>"
          f"<td class='num' data-metric='samples.{role}.n_selected'>{s['n_selected']}</td>"
          f"<td>showers selected of {s['n_read']} read</td></tr>" for role, s in samples.items()),
        f"<tr><th>geometry</th><td colspan='3'>{html.escape(metrics['geometry'])}</td></tr>",
        f"<tr><th>selection</th><td colspan='3'>{html.escape(selection)}</td></tr>",
        f"<tr><th>seed</th><td colspan='3' data-metric='seed'>{metrics['seed']}</td></tr>",
        "</table>",
        "<h2>Metrics</h2>",
        "<p>Colours: <span class='green'>&nbsp;green&nbsp;</span> good, <span class='amber'>&nbsp;amber"
        "&nbsp;</span> noticeable differences, <span class='red'>&nbsp;red&nbsp;</span> clearly different, "
        "<span class='grey'>&nbsp;grey&nbsp;</span> not computed. Thresholds: </p><ul>",
        *(f"<li>{html.escape(t.why)}</li>" for t in THRESHOLDS.values()),
        "</ul><table><tr><th>metric</th><th>value</th><th>notes</th></tr>",
        *_metric_rows(metrics),
        "</table>",
        "<p>All numbers, per-histogram separation powers and settings are in "
        "<a href='metrics.json'>metrics.json</a>.</p>",
    ]
    group = None
    for plot in plots:
        if plot.group != group:
            group = plot.group
            parts.append(f"<h2>{html.escape(group)}</h2>")
        size = " class='half'" if plot.group in ("Overview", "Profiles") else ""
        parts.append(f"<figure{size}><img src='{html.escape(plot.file)}' alt='{html.escape(plot.title)}'>"
                     f"<figcaption><b>{html.escape(plot.title)}.</b> {html.escape(plot.description)}"
                     "</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _likelihood_plot(summary: dict[str, Any]) -> _Plot:
    edges = np.asarray(summary["edges"])
    reference = np.asarray(summary["reference"]["counts"], dtype=np.float64)
    generated = np.asarray(summary["generated"]["counts"], dtype=np.float64)
    return _Plot("Likelihood", "likelihood.png", "Log-likelihood under the flow",
                 f"Exact log-likelihood of every shower under {summary['checkpoint']} ({summary['units']}; "
                 "values beyond the 0.5-99.5 % range in the end bins). Higher is more typical of what the "
                 "flow learnt; generated showers to the left of the reference are ones it finds untypical.",
                 lambda p: plot_distribution(reference, generated, edges, "log-likelihood [nats]", p,
                                             summary["separation_power"]))


def write_report(
    generated: Features, reference: Features, metrics: dict[str, Any], out_dir: Path, plots: bool = True,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Write ``out_dir`` (index.html, metrics.json, PNG plots) atomically; returns ``metrics`` with the
    list of plots added (with the log-likelihood histograms of ``metrics["likelihood"]`` when present)."""
    chosen = _plots(reference, generated, metrics["separation_power"]["histograms"]) if plots else []
    if plots and "likelihood" in metrics:
        chosen.append(_likelihood_plot(metrics["likelihood"]))
    metrics = {**metrics, "plots": [{"file": p.file, "title": p.title, "group": p.group} for p in chosen]}
    start = time.perf_counter()
    with atomic_output(out_dir) as tmp:
        tmp.mkdir()
        with progress_bar(len(chosen), "plots", unit="plot", enabled=show_progress, leave=False) as bar:
            for plot in chosen:
                plot.draw(tmp / plot.file)
                bar.update(1)
        metrics["timing_s"] = {**metrics.get("timing_s", {}), "plots": time.perf_counter() - start}
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1, allow_nan=False) + "\n")
        (tmp / "index.html").write_text(_html(metrics, chosen))
    return metrics
