"""Reference-vs-generated plots of the high-level features (matplotlib + mplhep, Agg, no pyplot state).

Every function draws one figure into a PNG at ``path`` and returns nothing. Figures are built with
``matplotlib.figure.Figure`` (never ``pyplot``), inside an mplhep style context, so no global state
leaks into the caller. Reference is a filled grey histogram, generated a coloured line; ratio panels
show generated / reference.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import matplotlib
import matplotlib.style
import mplhep
import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import QuadMesh
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, MaxNLocator
from numpy.typing import NDArray

from caloforge.evaluate.features import Features
from caloforge.evaluate.histograms import LAYER_KINDS, HistogramSpec, rebin_voxel_counts, values_of

__all__ = [
    "azimuthal_profile",
    "plot_average_showers",
    "plot_azimuthal_profile",
    "plot_distribution",
    "plot_layer_grid",
    "plot_longitudinal_profile",
    "plot_radial_profile",
    "plot_separation_summary",
    "plot_single_histogram",
]

REFERENCE_STYLE = {"color": "0.55", "alpha": 0.5, "fill": True, "label": "reference"}
GENERATED_STYLE = {"color": "tab:red", "linewidth": 1.6, "label": "generated"}


@contextmanager
def _style(grid: bool = False) -> Iterator[None]:
    # A style context restores rcParams on exit. The ROOT-like HEP style; grids of many small panels
    # drop the minor ticks, which otherwise take most of the drawing time (tick layout per axis).
    extra: dict[str, object] = {"font.size": 11, "axes.titlesize": 10, "legend.fontsize": 10,
                                "savefig.dpi": 90}
    if grid:
        extra.update({"xtick.minor.visible": False, "ytick.minor.visible": False, "xtick.top": False,
                      "ytick.right": False, "font.size": 8, "axes.titlesize": 8})
    with matplotlib.style.context([mplhep.style.ROOT, extra]):
        yield


def _density(counts: NDArray[np.float64]) -> NDArray[np.float64]:
    total = counts.sum()
    return counts / total if total > 0 else counts


def _counts(features: Features, spec: HistogramSpec) -> NDArray[np.float64]:
    if spec.kind == "voxel_energy":
        return rebin_voxel_counts(features, spec.edges)
    counts, _ = np.histogram(values_of(features, spec), bins=spec.edges)
    return counts.astype(np.float64)


def _ratio(ax: Axes, x_edges: NDArray[np.float64], ref: NDArray[np.float64], gen: NDArray[np.float64],
           log_x: bool) -> None:
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(ref > 0, gen / ref, np.nan)
    ax.stairs(ratio, x_edges, color=GENERATED_STYLE["color"], linewidth=1.2)
    ax.axhline(1.0, color="0.3", linewidth=0.8, linestyle="--")
    ax.set_ylim(0.5, 1.5)
    ax.set_ylabel("gen / ref")
    if log_x:
        ax.set_xscale("log")


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path)


def _histogram_with_ratio(
    ref: NDArray[np.float64], gen: NDArray[np.float64], edges: NDArray[np.float64], xlabel: str, ylabel: str,
    path: Path, separation: float | None, log_x: bool, log_y: bool,
) -> None:
    """Two normalised histograms over ``edges``, reference filled and generated a line, with a ratio panel."""
    with _style():
        fig = Figure(figsize=(7, 6.5))
        top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1], "hspace": 0.05})
        top.stairs(ref, edges, **REFERENCE_STYLE)
        top.stairs(gen, edges, **GENERATED_STYLE)
        top.set_ylabel(ylabel)
        if log_y and (ref > 0).any():
            top.set_yscale("log")
        if separation is not None and math.isfinite(separation):
            top.set_title(f"separation power {separation:.2e}", loc="right")
        top.legend()
        _ratio(bottom, edges, ref, gen, log_x)
        bottom.set_xlabel(xlabel)
        fig.align_ylabels()
        _save(fig, path)


def plot_single_histogram(
    reference: Features, generated: Features, spec: HistogramSpec, xlabel: str, path: Path,
    separation: float | None = None, log_y: bool = True,
) -> None:
    """One histogram (normalised to unit sum) with a ratio panel below."""
    ref, gen = _density(_counts(reference, spec)), _density(_counts(generated, spec))
    _histogram_with_ratio(ref, gen, spec.edges, xlabel, "fraction of entries", path, separation, spec.log_x,
                          log_y)


def plot_distribution(
    reference: NDArray[np.float64], generated: NDArray[np.float64], edges: NDArray[np.float64], xlabel: str,
    path: Path, separation: float | None = None,
) -> None:
    """Histograms of one per-shower number (counts of showers per bin of ``edges``, reference and
    generated), normalised to unit sum, with a ratio panel below (e.g. log-likelihoods under a flow)."""
    _histogram_with_ratio(_density(reference), _density(generated), edges, xlabel, "fraction of showers",
                          path, separation, log_x=False, log_y=False)


def plot_layer_grid(
    reference: Features, generated: Features, specs: Sequence[HistogramSpec], path: Path,
    separations: dict[str, float] | None = None,
) -> None:
    """Per-layer histograms of one kind, one small panel per layer (normalised, log y)."""
    kind = specs[0].kind
    n = len(specs)
    n_cols = min(n, 5)
    n_rows = math.ceil(n / n_cols)
    with _style(grid=True):
        fig = Figure(figsize=(3.0 * n_cols, 2.2 * n_rows + 0.6))
        axes = np.atleast_1d(fig.subplots(n_rows, n_cols, squeeze=False)).ravel()
        fig.subplots_adjust(left=0.05, right=0.98, top=1 - 0.25 / n_rows, bottom=0.45 / n_rows + 0.03,
                            wspace=0.3, hspace=0.45)
        for ax, spec in zip(axes, specs, strict=False):
            ref, gen = _density(_counts(reference, spec)), _density(_counts(generated, spec))
            ax.stairs(ref, spec.edges, **REFERENCE_STYLE)
            ax.stairs(gen, spec.edges, **{**GENERATED_STYLE, "linewidth": 1.0})
            if (ref > 0).any() or (gen > 0).any():
                ax.set_yscale("log")
                ax.yaxis.set_major_locator(LogLocator(numticks=4))
            if spec.log_x:
                ax.set_xscale("log")
                ax.xaxis.set_major_locator(LogLocator(numticks=4))
            else:
                ax.xaxis.set_major_locator(MaxNLocator(4))
            title = f"layer {spec.layer}"
            if separations is not None and math.isfinite(separations.get(spec.name, math.nan)):
                title += f"  S={separations[spec.name]:.1e}"
            ax.set_title(title)
        for ax in axes[n:]:
            ax.axis("off")
        axes[0].legend(fontsize=8)
        fig.supxlabel(LAYER_KINDS.get(kind, kind))
        _save(fig, path)


def _profile_with_ratio(
    ref: NDArray[np.float64], gen: NDArray[np.float64], edges: NDArray[np.float64],
    ylabel: str, xlabel: str, path: Path,
) -> None:
    """Reference and generated means as stairs over ``edges`` (log y), with the gen/ref ratio below."""
    with _style():
        fig = Figure(figsize=(7, 6.5))
        top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1], "hspace": 0.05})
        top.stairs(ref, edges, **REFERENCE_STYLE)
        top.stairs(gen, edges, **GENERATED_STYLE)
        top.set_yscale("log")
        top.set_ylabel(ylabel)
        top.legend()
        _ratio(bottom, edges, ref, gen, log_x=False)
        bottom.set_xlabel(xlabel)
        fig.align_ylabels()
        _save(fig, path)


def plot_longitudinal_profile(reference: Features, generated: Features, path: Path) -> None:
    """Mean energy per layer against depth, with ratio."""
    z = np.concatenate([[0.0], np.cumsum(reference.geometry.layer_thickness_mm)])
    _profile_with_ratio(
        reference.e_layer.mean(0), generated.e_layer.mean(0), z,
        "mean energy per layer [MeV]", "depth z [mm]", path,
    )


def plot_radial_profile(reference: Features, generated: Features, path: Path) -> None:
    """Mean energy per radial bin (summed over layers and angles) against r, with ratio."""
    r = reference.r_centres
    # Edges between the radial positions (the bins of a regular readout).
    last = r[-1] + 0.5 * (r[-1] - (r[-2] if len(r) > 1 else 0.0))
    edges = np.concatenate([[0.0], 0.5 * (r[1:] + r[:-1]), [last]])
    _profile_with_ratio(
        reference.e_radial.mean(0), generated.e_radial.mean(0), edges,
        "mean energy per radial bin [MeV]", "r [mm]", path,
    )


def azimuthal_profile(features: Features) -> NDArray[np.float64] | None:
    """Mean energy per alpha bin (MeV), summed over layers and radial bins: (n_alpha,), bin 0 starting at
    -pi; ``None`` when the used layers do not share one alpha binning (CaloChallenge dataset 1)."""
    geometry = features.geometry
    n_alpha = {b.n_alpha for b in geometry.layers if b.n_voxels > 0}
    if len(n_alpha) != 1:
        return None
    _, alpha, _ = geometry.voxel_indices
    return np.bincount(alpha, weights=features.average_shower, minlength=n_alpha.pop()).astype(np.float64)


def plot_azimuthal_profile(reference: Features, generated: Features, path: Path) -> None:
    """Mean energy per alpha bin (summed over layers and radii) against alpha, with ratio: a model with a
    seam at +-pi shows it in the first and last bins. Only for readouts with one alpha binning."""
    ref, gen = azimuthal_profile(reference), azimuthal_profile(generated)
    if ref is None or gen is None:
        raise ValueError(f"{reference.geometry.name}: layers differ in alpha binning, no azimuthal profile")
    edges = np.linspace(-math.pi, math.pi, len(ref) + 1)
    _profile_with_ratio(ref, gen, edges, "mean energy per alpha bin [MeV]", "alpha [rad]", path)


def _polar_image(
    ax: Axes, image: NDArray[np.float64], r_edges: NDArray[np.float64], norm: LogNorm
) -> QuadMesh:
    n_alpha = image.shape[0]
    alpha_edges = np.linspace(-math.pi, math.pi, n_alpha + 1)
    mesh = ax.pcolormesh(alpha_edges, r_edges, np.clip(image.T, norm.vmin, None), norm=norm, cmap="viridis")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    ax.set_ylim(0.0, float(r_edges[-1]))
    return mesh


def plot_average_showers(reference: Features, generated: Features, path: Path, n_panels: int = 9) -> None:
    """Average energy per voxel (polar images) in ``n_panels`` layers spread over the depth: reference
    in the first row, generated in the second, generated / reference in the third."""
    geometry = reference.geometry
    layers = [i for i in range(geometry.n_layers) if geometry.layers[i].n_voxels > 0]
    chosen = [layers[round(k)] for k in np.linspace(0, len(layers) - 1, min(n_panels, len(layers)))]
    ref_mean, gen_mean = reference.average_shower, generated.average_shower
    positive = ref_mean[ref_mean > 0]
    vmax = float(ref_mean.max()) if positive.size else 1.0
    norm = LogNorm(vmin=max(vmax * 1e-5, float(positive.min()) if positive.size else 1e-6), vmax=vmax)
    ratio_norm = matplotlib.colors.Normalize(vmin=0.5, vmax=1.5)
    with _style():
        fig = Figure(figsize=(2.3 * len(chosen) + 1.5, 7.6), layout="constrained")
        axes = fig.subplots(3, len(chosen), subplot_kw={"projection": "polar"}, squeeze=False)
        mesh = ratio_mesh = None
        for column, layer in enumerate(chosen):
            binning = geometry.layers[layer]
            cut = slice(int(geometry.layer_offsets[layer]), int(geometry.layer_offsets[layer + 1]))
            shape = (binning.n_alpha, binning.n_radial)
            r_edges = np.asarray(binning.r_edges)
            ref_img, gen_img = ref_mean[cut].reshape(shape), gen_mean[cut].reshape(shape)
            mesh = _polar_image(axes[0, column], ref_img, r_edges, norm)
            _polar_image(axes[1, column], gen_img, r_edges, norm)
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(ref_img > 0, gen_img / ref_img, np.nan)
            ratio_mesh = axes[2, column].pcolormesh(
                np.linspace(-math.pi, math.pi, binning.n_alpha + 1), r_edges, ratio.T, norm=ratio_norm,
                cmap="coolwarm")
            axes[2, column].set_xticks([])
            axes[2, column].set_yticks([])
            axes[2, column].grid(False)
            axes[0, column].set_title(f"layer {layer}")
        for row, label in enumerate(("reference", "generated", "gen / ref")):
            axes[row, 0].set_ylabel(label, labelpad=18)
            axes[row, 0].yaxis.set_label_position("left")
        if mesh is not None:
            fig.colorbar(mesh, ax=axes[:2, -1], label="mean energy per voxel [MeV]", shrink=0.9)
        if ratio_mesh is not None:
            fig.colorbar(ratio_mesh, ax=axes[2, -1], label="gen / ref", shrink=0.9)
        _save(fig, path)


def plot_separation_summary(separations: dict[str, float], n_layers: int, path: Path) -> None:
    """Separation power per layer for each per-layer kind (log scale), with the per-shower ones marked."""
    with _style():
        fig = Figure(figsize=(9, 6), layout="constrained")
        ax = fig.subplots()
        # One tab10 colour and a marker per kind: the style's own cycle repeats before the eighth kind.
        colours = matplotlib.colormaps["tab10"]  # called with an integer: that entry of its 10 colours
        for i, kind in enumerate(LAYER_KINDS):
            values = [separations.get(f"{kind}_{layer}", math.nan) for layer in range(n_layers)]
            ax.plot(range(n_layers), values, marker="osD^v<>p"[i % 8], markersize=3, linewidth=1, label=kind,
                    color=colours(i % colours.N))
        for name, style in (("etot_einc", "--"), ("voxel_energy", ":")):
            if math.isfinite(separations.get(name, math.nan)):
                ax.axhline(separations[name], color="k", linestyle=style, linewidth=1, label=name)
        ax.set_yscale("log")
        ax.set_xlabel("layer")
        ax.set_ylabel("separation power")
        ax.legend(ncols=2, fontsize=9)
        _save(fig, path)
