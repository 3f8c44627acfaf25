"""Fitting the GFlash parameterisation to a full simulation (``caloforge fit-gflash``).

G&P's constants (hep-ex/0001020) are fits to full simulations of particular calorimeters; a detector's
own Geant4 showers pin them down better, and physicists tune GFlash to their full simulation in just this
way. Here the free parameters (``FIT_PARAMETERS``: the sampling fraction and resolution; the centre,
energy dependence, fluctuations and correlation of the longitudinal profile's T and alpha; the radial
core and tail; the spot count: ``GFlashTuning`` and ``GFlashConfig.spot_multiplier``) are chosen to
minimise a distance between histograms of simulated and reference showers:

1. **Reference**: the file's showers, split into energy bins (equal numbers of showers in ln E). Per bin
   and per feature, the bin edges are the reference's quantiles (equal-probability bins; monotone
   transforms of a feature do not matter, and values beyond the reference's range fall in the outer
   bins, so a far-off simulation still sees which way to go).
2. **Features** (per shower, after the cell threshold; the CaloChallenge high-level features of
   ``caloforge.evaluate.features`` plus four that summarise the whole shower): E_tot / E_inc; per layer
   E_layer / E_inc, centre and width in x (eta), y (phi) and r, and the number of hit cells (sparsity);
   the shower's energy-weighted depth and depth spread, its energy-weighted radius, its number of hit
   cells; and the cell-energy spectrum.
3. **Objective**: simulate the reference's own conditions with one fixed seed (common random numbers,
   so that two parameter sets are compared on the same random draws and the objective does not jump
   from one evaluation to the next by sampling noise alone), compute the separation power of every
   histogram (S = 1/2 sum (p - q)^2 / (p + q), arXiv 2009.03796 eq. 15; 0 identical, 1 disjoint), average
   it within each feature kind and over the kinds. Its value at the optimum is not 0: two finite samples
   of the same distribution differ (the floor grows like bins / showers).
4. **Optimiser**: the sampling fraction first, in closed form (the visible energy is proportional to
   it); then ``scipy.optimize.minimize`` with Nelder-Mead (adaptive, bounded) on all free parameters at
   once, in a unit box (scales in log), for at most ``max_evaluations`` simulations.

The showers are simulated with the reference's energies and angles, so the fit sees the same conditions
the reference does; cost per evaluation is one simulation plus one matrix product (~0.8 s for 2000 SiW
showers of 1-100 GeV on one core, so the default 300 evaluations take ~4 minutes).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from caloforge.data import ShowerSet
from caloforge.errors import CaloforgeError, InputError
from caloforge.geometry import CylindricalGeometry
from caloforge.simulate.materials import CalorimeterMaterial
from caloforge.simulate.simulator import GFlashConfig, simulate

__all__ = [
    "FIT_MAX_SPOTS",
    "FIT_PARAMETERS",
    "FitParameter",
    "FitResult",
    "GFlashObjective",
    "fit_gflash",
    "free_parameters",
    "params_yaml",
    "read_fit_sample",
]

F64 = NDArray[np.float64]
MIN_SHOWERS = 50  # fewer give histograms of a handful of entries per bin
# Spot cap of a fit (``caloforge fit-gflash``'s default): above GFlash's own count up to ~170 GeV in SiW
# (N_spot = 10.3 / a E^0.959), so the fitted spot multiplier is not hidden by the simulator's speed cap
# (4000; fits to Geant4 SiW showers of 1-100 GeV kept the multiplier near 1 and halved the hit-cell
# distance once the cap was lifted).
FIT_MAX_SPOTS = 20_000


# ---- the free parameters --------------------------------------------------------------------------------
@dataclass(frozen=True)
class FitParameter:
    """One free parameter: its dotted key in ``GFlashConfig`` and its bounds.

    Args:
        key: ``"spot_multiplier"`` or ``"tuning.<field>"``.
        low, high: bounds; relative to the starting value when ``relative`` (e.g. 0.8, 1.25).
        log: optimised as log(value) (scales and spreads: a factor 2 up weighs as much as one down).
        sampling_only: free only in a sampling medium (homogeneous media have no sampling fraction or
            resolution to fit).
    """

    key: str
    low: float
    high: float
    log: bool = False
    relative: bool = False
    sampling_only: bool = False


FIT_PARAMETERS: tuple[FitParameter, ...] = (
    FitParameter("tuning.sampling_fraction", 0.8, 1.25, log=True, relative=True, sampling_only=True),
    FitParameter("tuning.sampling_resolution", 0.25, 4.0, log=True, relative=True, sampling_only=True),
    FitParameter("tuning.depth_offset", -3.0, 3.0),
    FitParameter("tuning.depth_slope", 0.7, 1.4),
    FitParameter("tuning.depth_spread", 0.25, 4.0, log=True),
    FitParameter("tuning.alpha_offset", -2.0, 4.0),
    FitParameter("tuning.alpha_slope", 0.6, 1.6),
    FitParameter("tuning.alpha_spread", 0.25, 4.0, log=True),
    FitParameter("tuning.correlation_offset", -0.4, 0.3),
    FitParameter("tuning.core_radius_scale", 0.4, 2.5, log=True),
    FitParameter("tuning.tail_radius_scale", 0.4, 2.5, log=True),
    FitParameter("tuning.core_fraction_scale", 0.5, 1.5),
    FitParameter("spot_multiplier", 0.2, 8.0, log=True),
)


def _get(config: GFlashConfig, key: str) -> Any:
    section, _, name = key.rpartition(".")
    return getattr(config.tuning if section else config, name)


def _with(config: GFlashConfig, values: dict[str, float]) -> GFlashConfig:
    """``config`` with the dotted keys of ``values`` replaced."""
    top: dict[str, Any] = {k: v for k, v in values.items() if "." not in k}
    tuning: dict[str, Any] = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("tuning.")}
    return dataclasses.replace(config, **top, tuning=dataclasses.replace(config.tuning, **tuning))


def _effective(config: GFlashConfig, material: CalorimeterMaterial, key: str) -> float:
    """The value a key has in the simulation (None in the tuning means the medium's)."""
    if key == "tuning.sampling_fraction":
        return config.sampling_fraction_for(material)
    if key == "tuning.sampling_resolution":
        value = config.tuning.sampling_resolution
        return material.sampling_resolution if value is None else value
    return float(_get(config, key))


def free_parameters(material: CalorimeterMaterial, config: GFlashConfig) -> list[FitParameter]:
    """The parameters fitted for ``material``: sampling ones only in a sampling medium whose sampling
    fluctuations are on."""
    chosen = []
    for p in FIT_PARAMETERS:
        if p.sampling_only and not material.sampling:
            continue
        if p.key == "tuning.sampling_resolution" and not config.sampling_fluctuations:
            continue
        chosen.append(p)
    return chosen


# ---- per-shower features ----------------------------------------------------------------------------------
class _Features:
    """Fast per-shower features of one geometry: one float32 matrix product per sample.

    The projection's columns are per-layer sums weighted by 1, x, y, x^2, y^2, r, r^2 (as in
    ``caloforge.evaluate.features``, whose conventions the centres and widths follow: an empty layer has
    centre and width 0).
    """

    WEIGHTS = ("one", "x", "y", "xx", "yy", "r", "rr")

    def __init__(self, geometry: CylindricalGeometry, threshold_mev: float) -> None:
        self.geometry = geometry
        self.threshold = threshold_mev
        centres = geometry.voxel_centres
        layer = geometry.voxel_indices[0]
        n_layers, n_voxels = geometry.n_layers, geometry.n_voxels
        x, y, r = centres["x"], centres["y"], centres["r"]
        weights = {"one": np.ones_like(x), "x": x, "y": y, "xx": x * x, "yy": y * y, "r": r, "rr": r * r}
        projection = np.zeros((n_voxels, len(self.WEIGHTS) * n_layers + n_layers), dtype=np.float32)
        voxel = np.arange(n_voxels)
        for k, name in enumerate(self.WEIGHTS):
            projection[voxel, k * n_layers + layer] = weights[name]
        self.projection = projection  # last n_layers columns: hit counts (filled per call)
        self.layer = layer
        z_edges = np.concatenate([[0.0], np.cumsum(geometry.layer_thickness_mm)])
        self.z_mid = 0.5 * (z_edges[:-1] + z_edges[1:])

    def __call__(self, showers: NDArray[np.floating], energy: F64) -> dict[str, F64]:
        x = np.asarray(showers, dtype=np.float32)
        x = np.where(x < self.threshold, np.float32(0.0), x)
        n_layers = self.geometry.n_layers
        sums = (x @ self.projection[:, : len(self.WEIGHTS) * n_layers]).astype(np.float64)
        per = {name: sums[:, k * n_layers:(k + 1) * n_layers] for k, name in enumerate(self.WEIGHTS)}
        hits = np.zeros((x.shape[0], n_layers))
        rows, cols = np.nonzero(x)
        np.add.at(hits, (rows, self.layer[cols]), 1.0)
        e_layer = per["one"]
        denom = e_layer + 1e-16
        cx, cy, cr = per["x"] / denom, per["y"] / denom, per["r"] / denom
        e_total = e_layer.sum(axis=1)
        total = e_total + 1e-16
        depth = e_layer @ self.z_mid / total
        depth_sq = e_layer @ self.z_mid**2 / total
        return {
            "e_total": e_total / energy,
            "e_layer": e_layer / energy[:, None],
            "centre_x": cx,
            "centre_y": cy,
            "width_x": np.sqrt(np.clip(per["xx"] / denom - cx**2, 0.0, None)),
            "width_y": np.sqrt(np.clip(per["yy"] / denom - cy**2, 0.0, None)),
            "centre_r": cr,
            "width_r": np.sqrt(np.clip(per["rr"] / denom - cr**2, 0.0, None)),
            "hits": hits,
            "depth": depth,
            "depth_width": np.sqrt(np.clip(depth_sq - depth**2, 0.0, None)),
            "radius": per["r"].sum(axis=1) / total,
            "n_hits": hits.sum(axis=1),
            "_cells": x[rows, cols].astype(np.float64),
            "_cell_rows": rows.astype(np.float64),
        }


# Feature kinds of the objective: name -> (feature, which layers: "all" for per-shower ones, "hit" for
# layers the reference hits in >= 10 % of its showers, "shape" for >= 50 %: centres and widths of layers
# that are mostly empty are mostly 0).
KINDS: dict[str, tuple[tuple[str, ...], str]] = {
    "E_tot/E_inc": (("e_total",), "all"),
    "E_layer": (("e_layer",), "hit"),
    "centre x, y": (("centre_x", "centre_y"), "shape"),
    "width x, y": (("width_x", "width_y"), "shape"),
    "centre r": (("centre_r",), "shape"),
    "width r": (("width_r",), "shape"),
    "hit cells per layer": (("hits",), "hit"),
    "depth": (("depth",), "all"),
    "depth width": (("depth_width",), "all"),
    "radius": (("radius",), "all"),
    "hit cells": (("n_hits",), "all"),
    "cell energy": (("_cells",), "cells"),
}


@dataclass
class _Histograms:
    """The reference's histograms of one feature kind in one energy bin."""

    columns: list[tuple[str, int | None]]  # (feature, layer or None)
    edges: list[F64]  # interior edges per column
    reference: list[F64]  # normalised counts per column


def _interior_edges(values: F64, n_bins: int) -> F64:
    """Interior edges at the quantiles of ``values``; ties (e.g. many zeros) merge bins."""
    quantiles = np.quantile(values, np.linspace(0.0, 1.0, n_bins + 1)[1:-1])
    return np.unique(quantiles)


def _histogram(values: F64, edges: F64) -> F64:
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return counts / max(values.size, 1)


def _separation(p: F64, q: F64) -> float:
    total = p + q
    keep = total > 0
    return float(0.5 * np.sum((p[keep] - q[keep]) ** 2 / total[keep]))


# ---- the objective ----------------------------------------------------------------------------------------
class GFlashObjective:
    """Distance between showers simulated with a ``GFlashConfig`` and the reference showers.

    Args:
        reference: the full-simulation showers (with their conditions; the simulator uses the same ones).
        seed: the simulation's seed, the same for every evaluation (common random numbers).
        n_energy_bins: reference showers are split into this many bins of ln E (equal counts); fewer
            when there are fewer than 150 showers per bin.
        threshold_mev: cells below count as empty in both samples; None: the simulator medium's.
        config: the simulator settings whose threshold and medium apply (the parameters evaluated
            replace its fitted keys).
    """

    def __init__(
        self,
        reference: ShowerSet,
        seed: int = 0,
        n_energy_bins: int = 3,
        threshold_mev: float | None = None,
        config: GFlashConfig | None = None,
    ) -> None:
        config = config or GFlashConfig()
        self.reference = reference
        self.seed = seed
        self.geometry = reference.geometry
        self.material = config.material_for(reference.geometry)
        threshold = config.threshold_for(self.material) if threshold_mev is None else threshold_mev
        self.features = _Features(self.geometry, threshold)
        self.energy = reference.condition("energy")
        self.theta = None if reference.theta is None else reference.condition("theta")
        self.phi = None if reference.phi is None else reference.condition("phi")
        n = len(reference)
        n_bins = max(1, min(n_energy_bins, n // 150))
        ln_e = np.log(self.energy)
        cuts = np.quantile(ln_e, np.linspace(0.0, 1.0, n_bins + 1)[1:-1])
        self.energy_bin = np.searchsorted(cuts, ln_e, side="right")
        self.n_energy_bins = n_bins
        self.energy_edges_mev = np.exp(np.concatenate([[ln_e.min()], cuts, [ln_e.max()]]))
        self.histograms = self._reference_histograms(self.features(reference.showers, self.energy))
        self.n_evaluations = 0

    def _reference_histograms(self, ref: dict[str, F64]) -> dict[tuple[str, int], _Histograms]:
        result = {}
        for b in range(self.n_energy_bins):
            rows = self.energy_bin == b
            n_rows = int(rows.sum())
            n_bins = int(np.clip(n_rows // 40, 5, 20))
            hit_fraction = (ref["e_layer"][rows] > 0).mean(axis=0)
            for kind, (names, layers) in KINDS.items():
                columns: list[tuple[str, int | None]] = []
                if layers == "all" or layers == "cells":
                    columns = [(names[0], None)]
                else:
                    least = 0.5 if layers == "shape" else 0.1
                    chosen = np.flatnonzero(hit_fraction >= least)
                    columns = [(name, int(layer)) for name in names for layer in chosen]
                edges, counts = [], []
                for name, layer in columns:
                    values = self._values(ref, name, layer, rows)
                    e = _interior_edges(values, 30 if layers == "cells" else n_bins)
                    edges.append(e)
                    counts.append(_histogram(values, e))
                result[(kind, b)] = _Histograms(columns, edges, counts)
        return result

    def _values(self, features: dict[str, F64], name: str, layer: int | None, rows: NDArray[np.bool_]) -> F64:
        if name == "_cells":
            in_bin = rows[features["_cell_rows"].astype(np.int64)]
            return features["_cells"][in_bin]
        values = features[name][rows]
        return values if layer is None else values[:, layer]

    def simulate(self, config: GFlashConfig) -> ShowerSet:
        """The reference's conditions simulated with ``config`` and the fixed seed."""
        return simulate(self.geometry, self.energy, self.theta, self.phi, config=config, seed=self.seed)

    def terms(self, showers: ShowerSet) -> dict[str, float]:
        """Mean separation power per feature kind (over energy bins, layers and coordinates)."""
        features = self.features(showers.showers, showers.condition("energy"))
        result = {}
        for kind in KINDS:
            values = []
            for b in range(self.n_energy_bins):
                rows = self.energy_bin == b
                h = self.histograms[(kind, b)]
                for (name, layer), edges, ref in zip(h.columns, h.edges, h.reference, strict=True):
                    simulated = _histogram(self._values(features, name, layer, rows), edges)
                    values.append(_separation(simulated, ref))
            result[kind] = float(np.mean(values)) if values else 0.0
        return result

    def __call__(self, config: GFlashConfig) -> tuple[float, dict[str, float]]:
        """(objective, per-kind terms) of ``config``: the mean of the terms."""
        self.n_evaluations += 1
        terms = self.terms(self.simulate(config))
        return float(np.mean(list(terms.values()))), terms


# ---- the fit ------------------------------------------------------------------------------------------
@dataclass
class FitResult:
    """What ``fit_gflash`` found.

    Attributes:
        config: the fitted simulator settings (write with ``params_yaml``).
        start: the settings the fit started from (after the closed-form sampling fraction).
        objective_start, objective: the objective at the start and at the fitted parameters.
        terms_start, terms: their per-kind breakdown (mean separation power per feature kind).
        parameters: key -> (start value, fitted value) of every free parameter, as the simulator uses
            them (the medium's value where the tuning leaves one None).
        n_evaluations: simulations the optimiser ran.
        n_showers: reference showers fitted to; seed: the simulation seed.
        seconds: wall-clock time of the fit.
        message: the optimiser's stopping reason.
    """

    config: GFlashConfig
    start: GFlashConfig
    objective_start: float
    objective: float
    terms_start: dict[str, float]
    terms: dict[str, float]
    parameters: dict[str, tuple[float, float]]
    n_evaluations: int
    n_showers: int
    seed: int
    seconds: float
    message: str
    energy_edges_mev: list[float] = field(default_factory=list)


class _Stop(Exception):
    """Raised inside the objective to end the optimiser at the evaluation budget."""


def fit_gflash(
    reference: ShowerSet,
    *,
    start: GFlashConfig | None = None,
    parameters: Sequence[str] | None = None,
    seed: int = 0,
    max_evaluations: int = 300,
    n_energy_bins: int = 3,
    progress: bool = True,
    on_evaluation: Callable[[int, float, float], None] | None = None,
) -> FitResult:
    """Fit the GFlash parameters to ``reference`` showers (see the module doc for the method).

    Args:
        reference: full-simulation showers of a geometry the simulator can fill, with their conditions.
        start: starting settings (default ``GFlashConfig()``); its threshold, medium, ``max_spots`` and
            every key not fitted are kept.
        parameters: keys of ``FIT_PARAMETERS`` to fit (default: all that apply to the medium).
        seed: the simulation seed of every evaluation.
        max_evaluations: most simulations the optimiser may run (besides the two of the closed-form
            sampling fraction).
        n_energy_bins: energy bins of the histograms.
        progress: show progress on stderr (``caloforge.progress``) with the current and best objective.
        on_evaluation: called with (evaluation, objective, best objective) after each evaluation.

    Returns:
        ``FitResult``; its ``config`` is the best parameter set evaluated.

    Raises:
        InputError: too few showers, a geometry or medium the simulator cannot fill, unknown parameter
            keys.
    """
    from scipy.optimize import minimize

    from caloforge.progress import progress_bar

    clock = time.perf_counter()
    where = reference.source
    if len(reference) < MIN_SHOWERS:
        raise InputError(where, "showers", f"has {len(reference)} showers",
                         f"at least {MIN_SHOWERS} to fit the GFlash parameters to")
    if max_evaluations < 1:
        raise InputError(None, "max_evaluations", f"is {max_evaluations}", "a number >= 1")
    config = start or GFlashConfig()
    material = _material(reference, config)
    chosen = free_parameters(material, config)
    if parameters is not None:
        known = {p.key: p for p in FIT_PARAMETERS}
        unknown = sorted(set(parameters) - set(known))
        if unknown:
            raise InputError(None, "parameters", f"has unknown keys {unknown}",
                             f"some of {', '.join(known)}")
        chosen = [p for p in chosen if p.key in set(parameters)]
    objective = GFlashObjective(reference, seed=seed, n_energy_bins=n_energy_bins, config=config)

    # The visible energy is proportional to the sampling fraction: one simulation sets it in closed form
    # (the threshold and leakage make it not quite exact; the optimiser refines it within its bounds).
    if any(p.key == "tuning.sampling_fraction" for p in chosen):
        simulated = objective.simulate(config)
        ratio = float(np.mean(reference.showers.sum(axis=1, dtype=np.float64) / objective.energy))
        ratio_sim = float(np.mean(simulated.showers.sum(axis=1, dtype=np.float64) / objective.energy))
        if ratio > 0 and ratio_sim > 0:
            fraction = config.sampling_fraction_for(material) * ratio / ratio_sim
            config = _with(config, {"tuning.sampling_fraction": min(fraction, 1.0)})
    start_config = config
    starts = {p.key: _effective(config, material, p.key) for p in chosen}
    bounds = []
    for p in chosen:
        low, high = (p.low * starts[p.key], p.high * starts[p.key]) if p.relative else (p.low, p.high)
        if p.key == "tuning.sampling_fraction":
            high = min(high, 1.0)
        bounds.append((math.log(low), math.log(high)) if p.log else (low, high))

    def decode(u: NDArray[np.float64]) -> GFlashConfig:
        values = {}
        for p, (low, high), value in zip(chosen, bounds, np.clip(u, 0.0, 1.0), strict=True):
            x = low + value * (high - low)
            values[p.key] = float(math.exp(x) if p.log else x)
        return _with(start_config, values)

    def encode(config: GFlashConfig) -> NDArray[np.float64]:
        u = []
        for p, (low, high) in zip(chosen, bounds, strict=True):
            value = _effective(config, material, p.key)
            x = math.log(value) if p.log else value
            u.append(min(max((x - low) / (high - low), 0.0), 1.0))
        return np.asarray(u)

    best: dict[str, Any] = {"value": math.inf, "config": start_config, "terms": {}}
    first: dict[str, Any] = {}
    with progress_bar(max_evaluations, "fit-gflash", unit="evaluation", enabled=progress) as bar:

        def evaluate(u: NDArray[np.float64]) -> float:
            if objective.n_evaluations >= max_evaluations + extra:
                raise _Stop("evaluation budget spent")
            candidate = decode(u)
            value, terms = objective(candidate)
            if not first:
                first.update(value=value, terms=terms)
            if value < best["value"]:
                best.update(value=value, config=candidate, terms=terms)
            bar.set_postfix_str(f"objective {value:.4f}, best {best['value']:.4f}")
            bar.update(1)
            if on_evaluation is not None:
                on_evaluation(objective.n_evaluations - extra, value, best["value"])
            return value

        extra = objective.n_evaluations  # the closed-form step's simulation is not the optimiser's
        x0 = encode(start_config)
        if chosen:
            # Nelder-Mead, restarted from the best point with a smaller simplex (steps of 0.15, then 0.05
            # and 0.02 of each range, pointing into the box): a simplex in 13 dimensions collapses along
            # some directions before the others are done, and a fresh one re-opens them (the usual
            # remedy; on 2000 Geant4 SiW showers it reached 0.0268 in 300 evaluations, where one run
            # needed 400 for 12 of the parameters).
            runs: list[int] = []
            stop = "converged"
            for step, share in ((0.15, 0.6), (0.05, 0.3), (0.02, 0.1)):
                used = objective.n_evaluations - extra
                left = max_evaluations - used
                budget = left if step == 0.02 else min(left, round(share * max_evaluations))
                if budget <= len(chosen) + 1:  # too few for a simplex: the first run takes them all
                    if runs:
                        break
                    budget = left
                x_start = encode(best["config"]) if runs else x0
                simplex = np.tile(x_start, (len(chosen) + 1, 1))
                for i in range(len(chosen)):
                    simplex[i + 1, i] += step if x_start[i] <= 1 - step else -step
                try:
                    outcome = minimize(
                        evaluate, x_start, method="Nelder-Mead", bounds=[(0.0, 1.0)] * len(chosen),
                        options={"maxfev": budget, "initial_simplex": simplex, "adaptive": True,
                                 "xatol": 2e-3, "fatol": 1e-5},
                    )
                    stop = "converged" if outcome.success else "evaluation budget spent"
                except _Stop:
                    stop = "evaluation budget spent"
                runs.append(objective.n_evaluations - extra - used)
            counts, plural = ", ".join(map(str, runs)), "s" if len(runs) != 1 else ""
            message = f"Nelder-Mead, {len(runs)} run{plural} of {counts} evaluations, {stop}"
        else:
            evaluate(x0)
            message = "no free parameters"
    fitted = best["config"]
    return FitResult(
        config=fitted,
        start=start_config,
        objective_start=float(first["value"]),
        objective=float(best["value"]),
        terms_start=first["terms"],
        terms=best["terms"],
        parameters={p.key: (starts[p.key], _effective(fitted, material, p.key)) for p in chosen},
        n_evaluations=objective.n_evaluations - extra,
        n_showers=len(reference),
        seed=seed,
        seconds=time.perf_counter() - clock,
        message=message,
        energy_edges_mev=[float(e) for e in objective.energy_edges_mev],
    )


def _material(reference: ShowerSet, config: GFlashConfig) -> CalorimeterMaterial:
    """The simulator's medium for the reference's geometry, or an ``InputError`` naming the file."""
    try:
        return config.material_for(reference.geometry)
    except CaloforgeError as error:
        raise InputError(reference.source, "geometry",
                         f"is '{reference.geometry.name}' (material '{reference.geometry.material}'), "
                         f"which the GFlash simulator cannot fill ({error})",
                         "showers of a geometry the simulator fills (see 'caloforge geometries')") from None


# ---- reading a reference sample ---------------------------------------------------------------------------
def read_fit_sample(
    path: str, n_showers: int | None = None, seed: int = 0, geometry: str | None = None,
    progress: bool = True,
) -> ShowerSet:
    """``n_showers`` showers of a file (a seeded random choice, in file order; all when None or more than
    the file holds), streamed so that memory holds only the chosen ones.

    Raises ``InputError`` for an empty file, a geometry the simulator cannot fill, or ``n_showers`` < 50.
    """
    from caloforge.io import inspect_file, read_sample

    info = inspect_file(path, geometry)
    if info.n_showers == 0:
        raise InputError(path, "showers", "holds no showers", f"at least {MIN_SHOWERS} showers to fit to")
    if n_showers is not None and n_showers < MIN_SHOWERS:
        raise InputError(path, "n_showers", f"is {n_showers}", f"at least {MIN_SHOWERS} showers to fit to")
    try:
        GFlashConfig().material_for(info.geometry)
    except CaloforgeError as error:
        raise InputError(path, "geometry", f"is '{info.geometry.name}' (material "
                         f"'{info.geometry.material}'), which the GFlash simulator cannot fill ({error})",
                         "showers of a geometry the simulator fills (see 'caloforge geometries')") from None
    return read_sample(path, n_showers, seed=seed, geometry=info.geometry, progress=progress)


# ---- the params file ---------------------------------------------------------------------------------------
def params_yaml(result: FitResult, source: str, date: str) -> str:
    """The text of a params file: a header of comments (data, showers, objective, date, each parameter's
    start and fitted value) and the fitted ``GFlashConfig`` as YAML (``caloforge.config.load_yaml``
    reads it back; ``caloforge simulate --gflash-params`` uses it)."""
    import yaml

    from caloforge.config import to_dict

    lines = [
        "# GFlash parameters fitted by 'caloforge fit-gflash' "
        "(use: caloforge simulate --gflash-params FILE)",
        f"# data: {source}",
        f"# showers: {result.n_showers} (simulation seed {result.seed}), energy bins "
        + ", ".join(f"{e / 1e3:.4g}" for e in result.energy_edges_mev) + " GeV",
        f"# objective (mean separation power over {len(result.terms)} feature kinds): "
        f"{result.objective_start:.5f} at the start, {result.objective:.5f} fitted "
        f"({result.n_evaluations} evaluations, {result.seconds:.0f} s; {result.message})",
        f"# date: {date}",
        "# parameter: start -> fitted",
    ]
    lines += [f"#   {key}: {a:.6g} -> {b:.6g}" for key, (a, b) in result.parameters.items()]
    body = yaml.safe_dump(to_dict(result.config), sort_keys=False, default_flow_style=False)
    return "\n".join(lines) + "\n" + body
