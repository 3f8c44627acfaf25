"""Generated vs reference: one streamed pass per file, then metrics, plots and the report.

``evaluate_files(generated, reference, out_dir, config)`` reads each file once in chunks
(``caloforge.io.iter_showers``), keeps only the showers whose conditions lie in the selected ranges,
accumulates their high-level features and, for the low-level classifier, their preprocessed voxels
(up to a memory budget). Then it computes separation powers, FPD/KPD, the classifier tests, draws the
plots and writes ``index.html`` + ``metrics.json`` into ``out_dir`` atomically. With
``EvaluateConfig.likelihood`` (a ``flow`` checkpoint) the same pass scores every shower by its exact
log-likelihood, and the report compares the generated and reference distributions.
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from caloforge.config import to_dict
from caloforge.data import ShowerSet
from caloforge.errors import InputError
from caloforge.evaluate.classifier import ClassifierConfig, classifier_test, low_level_inputs
from caloforge.evaluate.features import THRESHOLD_MEV, FeatureAccumulator, Features, high_level_vector
from caloforge.evaluate.histograms import LAYER_KINDS, histogram_specs, separation_powers
from caloforge.evaluate.metrics import frechet_physics_distance, kernel_physics_distance, separation_power
from caloforge.progress import Progress, progress_bar

__all__ = ["CLASSIFIER_KINDS", "EvaluateConfig", "Sample", "collect", "compute_metrics", "evaluate_files",
           "evaluate_sets", "likelihood_scorer", "likelihood_summary"]

CLASSIFIER_KINDS = ("low", "high")


@dataclass(frozen=True)
class EvaluateConfig:
    """Settings of an evaluation (from YAML with ``caloforge.config.from_dict``).

    Args:
        classifiers: which classifier tests to run, a subset of ("low", "high"); () for none.
        classifier: network and training settings (``OFFICIAL_CLASSIFIER`` for the CaloChallenge ones).
        energy_range: keep showers with min <= energy <= max (MeV); None keeps all.
        theta_range, phi_range: the same for the incident angles (radians).
        seed: seeds the classifier splits and initialisation and the FPD/KPD resampling.
        max_showers: use at most this many selected showers of each file (the first ones).
        threshold_mev: voxels below count as empty (official 15.15 keV for datasets 2 and 3).
        low_level_memory_gb: memory for the low-level classifier's inputs of both samples together;
            fewer showers are used when they would not fit (the number used is reported).
        fpd_min_samples, fpd_max_samples, fpd_batches, fpd_points: jetnet FPD settings
            (CaloChallenge: min 10000, otherwise jetnet's defaults).
        kpd_batch_size, kpd_batches, kpd_degree: KPD settings (CaloChallenge: batch 10000; jetnet
            0.2.5 uses a degree-4 polynomial kernel).
        chunk_size: showers read per chunk.
        plots: draw the plots (the report without them has only the metric table).
        likelihood: a ``flow`` checkpoint (path); when given, every selected shower of both files is
            scored by its exact log-likelihood under it, and the report compares the two distributions
            (a generated shower the flow finds untypical of the reference is one a classifier can spot).
    """

    classifiers: tuple[str, ...] = CLASSIFIER_KINDS
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    energy_range: tuple[float, float] | None = None
    theta_range: tuple[float, float] | None = None
    phi_range: tuple[float, float] | None = None
    seed: int = 0
    max_showers: int | None = None
    threshold_mev: float = THRESHOLD_MEV
    low_level_memory_gb: float = 4.0
    fpd_min_samples: int = 10_000
    fpd_max_samples: int = 50_000
    fpd_batches: int = 20
    fpd_points: int = 10
    kpd_batch_size: int = 10_000
    kpd_batches: int = 10
    kpd_degree: int = 4
    chunk_size: int = 5_000
    plots: bool = True
    likelihood: str | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.classifiers) - set(CLASSIFIER_KINDS))
        if unknown:
            raise InputError(None, "classifiers", f"has unknown kinds {unknown}",
                             f"some of {', '.join(CLASSIFIER_KINDS)}")
        for name in ("energy_range", "theta_range", "phi_range"):
            bounds = getattr(self, name)
            if bounds is not None and not (len(bounds) == 2 and bounds[0] <= bounds[1]):
                raise InputError(None, name, f"is {bounds}", "two numbers min <= max")
        if self.max_showers is not None and self.max_showers < 1:
            raise InputError(None, "max_showers", f"is {self.max_showers}", "a number >= 1")


@dataclass
class Sample:
    """What one pass over a file keeps: features, low-level classifier inputs, counts and its name."""

    name: str
    features: Features
    low_level: NDArray[np.float32] | None
    n_read: int
    log_likelihood: NDArray[np.float64] | None = None


def _selected(chunk: ShowerSet, config: EvaluateConfig) -> NDArray[np.bool_]:
    keep = np.ones(len(chunk), dtype=bool)
    for name, bounds in (("energy", config.energy_range), ("theta", config.theta_range),
                         ("phi", config.phi_range)):
        if bounds is not None:
            values = chunk.condition(name)
            keep &= (values >= bounds[0]) & (values <= bounds[1])
    return keep


def collect(
    chunks: Iterable[ShowerSet], name: str, config: EvaluateConfig, low_level_capacity: int,
    progress: Callable[[int], None] | None = None,
    score: Callable[[ShowerSet], NDArray[np.float64]] | None = None,
) -> Sample:
    """One pass over ``chunks``: select, accumulate features, keep up to ``low_level_capacity`` rows of
    low-level classifier input. ``progress(n)`` is called with the number of showers read per chunk;
    ``score(showers)`` (e.g. a flow's log-likelihood, (N,)), when given, scores every selected shower."""
    accumulator: FeatureAccumulator | None = None
    scores: list[NDArray[np.float64]] = []
    low_parts: list[NDArray[np.float32]] = []
    n_low = n_kept = n_read = 0
    for chunk in chunks:
        n_read += len(chunk)
        if progress is not None:
            progress(len(chunk))
        if accumulator is None:
            accumulator = FeatureAccumulator(chunk.geometry, config.threshold_mev)
        part = chunk[_selected(chunk, config)]
        if config.max_showers is not None:
            part = part[:max(config.max_showers - n_kept, 0)]
        if len(part) == 0:
            if config.max_showers is not None and n_kept >= config.max_showers:
                break
            continue
        n_kept += len(part)
        accumulator.update(part)
        if score is not None:
            scores.append(score(part))
        take = min(len(part), low_level_capacity - n_low)
        if take > 0:
            low_parts.append(low_level_inputs(part.showers[:take], part.energy[:take], config.threshold_mev))
            n_low += take
    if accumulator is None:
        raise InputError(name, "showers", "holds no showers", "at least one shower")
    low = np.concatenate(low_parts) if low_parts else None
    log_likelihood = np.concatenate(scores) if score is not None and scores else None
    return Sample(name, accumulator.finish(), low, n_read, log_likelihood)


def likelihood_scorer(checkpoint: str) -> Callable[[ShowerSet], NDArray[np.float64]]:
    """``score`` for ``collect``: log-likelihoods (N,) nats under the ``flow`` model in ``checkpoint``."""
    from caloforge.families.flow.likelihood import flow_sampler, log_likelihoods

    sampler = flow_sampler(checkpoint)
    return lambda showers: log_likelihoods(sampler, showers)


def likelihood_summary(generated: NDArray[np.float64], reference: NDArray[np.float64],
                       n_bins: int = 50) -> dict[str, Any]:
    """The two log-likelihood distributions (nats): quantiles and histogram counts of each, the histogram
    edges (``n_bins`` between the 0.5 and 99.5 % points of both together; values outside fall into the
    end bins) and the separation power of the two histograms."""
    both = np.concatenate([generated, reference])
    low, high = np.quantile(both, [0.005, 0.995])
    edges = np.linspace(low, high if high > low else low + 1.0, n_bins + 1)

    def describe(values: NDArray[np.float64]) -> dict[str, Any]:
        q05, median, q95 = np.quantile(values, [0.05, 0.5, 0.95])
        counts = np.histogram(np.clip(values, edges[0], edges[-1]), edges)[0]
        return {"mean": float(values.mean()), "median": float(median), "q05": float(q05), "q95": float(q95),
                "n": len(values), "counts": counts.tolist()}

    gen, ref = describe(generated), describe(reference)
    return {"generated": gen, "reference": ref, "edges": edges.tolist(),
            "separation_power": separation_power(gen["counts"], ref["counts"])}


def _condition_columns(generated: Features, reference: Features) -> list[str]:
    """Angles join log10 E_inc as classifier inputs when either sample varies them (not in CaloChallenge)."""
    def varies(values: NDArray[np.float64]) -> bool:
        return len(values) > 0 and float(values.max() - values.min()) > 0

    return [name for name in ("theta", "phi")
            if varies(getattr(generated, name)) or varies(getattr(reference, name))]


def _with_angles(x: NDArray[Any], features: Features, columns: list[str]) -> NDArray[np.float32]:
    if not columns:
        return x.astype(np.float32, copy=False)
    extra = np.stack([getattr(features, c)[:len(x)] for c in columns], axis=1)
    return np.concatenate([x, extra], axis=1).astype(np.float32)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def compute_metrics(
    generated: Sample, reference: Sample, config: EvaluateConfig, show_progress: bool = False
) -> dict[str, Any]:
    """Every number of the report (JSON-ready): separation powers, FPD/KPD x 1e3, classifier results,
    and the seconds each took (``timing_s``)."""
    timing: dict[str, float] = {}
    clock = time.perf_counter()
    stages = ["separation powers", "FPD", "KPD", *(f"classifier ({k})" for k in config.classifiers)]
    bar = progress_bar(len(stages), "metrics", unit="stage", enabled=show_progress, leave=False)
    bar.set_postfix_str(f"now {stages[0]}")

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timing[name] = now - clock
        clock = now
        # The postfix first: a periodic line written by update() names the stage that starts now.
        done = bar.n + 1
        bar.set_postfix_str(f"now {stages[done]}" if done < len(stages) else "")
        bar.update(1)

    gen, ref = generated.features, reference.features
    specs = histogram_specs(ref)
    powers = separation_powers(ref, gen, specs)
    summary: dict[str, Any] = {}
    for kind in (*LAYER_KINDS, "etot_einc", "voxel_energy"):
        values = {n: v for n, v in powers.items()
                  if (n == kind or n.startswith(kind + "_")) and math.isfinite(v)}
        if values:
            worst = max(values, key=values.__getitem__)
            summary[kind] = {"mean": float(np.mean(list(values.values()))), "max": values[worst],
                             "max_at": worst, "n_histograms": len(values)}
    result: dict[str, Any] = {
        "separation_power": {"summary": summary, "histograms": {n: _finite(v) for n, v in powers.items()}},
    }
    lap("separation_powers")
    x_ref, x_gen = high_level_vector(ref), high_level_vector(gen)
    fpd, fpd_error = frechet_physics_distance(
        x_ref, x_gen, seed=config.seed, min_samples=config.fpd_min_samples,
        max_samples=config.fpd_max_samples, num_batches=config.fpd_batches, num_points=config.fpd_points)
    lap("fpd")
    kpd, kpd_error = kernel_physics_distance(
        x_ref, x_gen, seed=config.seed, num_batches=config.kpd_batches, batch_size=config.kpd_batch_size,
        degree=config.kpd_degree)
    lap("kpd")
    result["fpd_x1e3"] = {"value": fpd * 1e3, "error": fpd_error * 1e3}
    result["kpd_x1e3"] = {"value": kpd * 1e3, "error": kpd_error * 1e3}
    columns = _condition_columns(gen, ref)
    classifiers: dict[str, Any] = {}
    for kind in config.classifiers:
        if kind == "low":
            if generated.low_level is None or reference.low_level is None:
                continue
            x_g = _with_angles(generated.low_level, gen, columns)
            x_r = _with_angles(reference.low_level, ref, columns)
        else:
            x_g, x_r = _with_angles(x_gen, gen, columns), _with_angles(x_ref, ref, columns)
        with progress_bar(config.classifier.epochs, f"classifier ({kind})", unit="epoch",
                          enabled=show_progress, leave=False) as epochs:

            def advance(epoch: int, accuracy: float, epochs: Progress = epochs) -> None:
                epochs.set_postfix_str(f"test accuracy {accuracy:.3f}")  # before update: it may write
                epochs.update(1)

            outcome = classifier_test(x_g, x_r, config.classifier, seed=config.seed, progress=advance)
        classifiers[kind] = {**outcome.to_dict(), "n_generated": len(x_g), "n_reference": len(x_r),
                             "inputs": x_g.shape[1], "condition_columns": ["log10 energy", *columns]}
        lap(f"classifier_{kind}")
    bar.close()
    result["classifier"] = classifiers
    result["timing_s"] = timing
    return result


def evaluate_sets(
    generated: Sample, reference: Sample, out_dir: str | os.PathLike[str],
    config: EvaluateConfig | None = None, show_progress: bool = False, files: dict[str, Any] | None = None,
    timing: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Metrics, plots and report for two collected samples; returns the metrics.json content.

    ``files`` (names) and ``timing`` (seconds of earlier stages) are recorded in metrics.json."""
    from caloforge.evaluate.report import write_report  # report imports plots (matplotlib): load late

    config = config or EvaluateConfig()
    if generated.features.geometry != reference.features.geometry:
        raise InputError(generated.name, "showers",
                         f"are in geometry '{generated.features.geometry.name}'",
                         f"the reference's geometry '{reference.features.geometry.name}'")
    for sample in (generated, reference):
        if len(sample.features) < 10:
            raise InputError(sample.name, "showers",
                             f"has {len(sample.features)} showers in the selected condition ranges",
                             "at least 10 (widen --energy-range/--theta-range/--phi-range)")
    metrics = compute_metrics(generated, reference, config, show_progress)
    metrics["timing_s"] = {**(timing or {}), **metrics["timing_s"]}
    if generated.log_likelihood is not None and reference.log_likelihood is not None:
        metrics["likelihood"] = {"checkpoint": config.likelihood, "units": "nats (the flow's coordinates)",
                                 **likelihood_summary(generated.log_likelihood, reference.log_likelihood)}
    metrics.update({
        "seed": config.seed,
        "geometry": reference.features.geometry.name,
        "settings": to_dict(config),
        "samples": {
            role: {"file": s.name, "n_read": s.n_read, "n_selected": len(s.features),
                   "n_low_level": 0 if s.low_level is None else len(s.low_level)}
            for role, s in (("generated", generated), ("reference", reference))
        },
        "software": {"python": platform.python_version(), "numpy": np.__version__},
        **({"files": files} if files else {}),
    })
    return write_report(generated.features, reference.features, metrics, Path(out_dir), config.plots,
                        show_progress)


def low_level_capacity(n_voxels: int, config: EvaluateConfig) -> int:
    """Rows of float32 low-level input per sample that fit in ``config.low_level_memory_gb`` for both."""
    if "low" not in config.classifiers:
        return 0
    return max(int(config.low_level_memory_gb * 1e9 / (2 * 4 * (n_voxels + 1))), 0)


def evaluate_files(
    generated: str | os.PathLike[str], reference: str | os.PathLike[str], out_dir: str | os.PathLike[str],
    config: EvaluateConfig | None = None, show_progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ``generated`` against ``reference`` (HDF5 shower files of one geometry) into ``out_dir``
    (``index.html``, ``metrics.json``, plots); returns the metrics. Progress goes to stderr
    (``caloforge.progress``: bars on a terminal, a few lines in a log).

    Both files must hold showers: an empty one is refused (``InputError``) before either is read."""
    from caloforge.io import inspect_file, iter_showers

    config = config or EvaluateConfig()
    samples = {}
    start = time.perf_counter()
    roles = (("reference", reference), ("generated", generated))
    infos = {role: inspect_file(path) for role, path in roles}  # both checked before a long read
    score = likelihood_scorer(config.likelihood) if config.likelihood is not None else None
    for role, path in roles:
        if infos[role].n_showers == 0:
            raise InputError(path, "showers", f"holds no showers (the {role} file)",
                             "at least one shower to evaluate")
    for role, path in roles:
        info = infos[role]
        total = info.n_showers if config.max_showers is None else min(info.n_showers, config.max_showers)
        with progress_bar(total, f"features ({role})", unit="shower", enabled=show_progress) as bar:
            samples[role] = collect(
                iter_showers(path, chunk_size=config.chunk_size), str(path), config,
                low_level_capacity(info.geometry.n_voxels, config), progress=bar.update, score=score)
    files = {"generated": os.fspath(generated), "reference": os.fspath(reference)}
    reading = {"read_and_features": time.perf_counter() - start}
    return evaluate_sets(samples["generated"], samples["reference"], out_dir, config, show_progress, files,
                         reading)
