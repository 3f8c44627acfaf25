"""The demos: a shipped model against Geant4, and the whole pipeline from the embedded simulator.

``run_pretrained_demo(out_dir)`` (``caloforge demo``) generates with the pretrained model shipped in the
package at the energies of the shipped Geant4 reference sample, scores the showers against it and writes
``reference.h5`` (a copy of the sample), ``generated.h5`` and ``report/index.html``, in a few minutes.

``run_demo(out_dir)`` (``caloforge demo --train``): simulate -> train a small DiT on the CPU -> generate ->
evaluate -> HTML report. It writes into ``out_dir``: ``reference.h5`` (held-out simulator showers),
``run/`` (the training run, ``run/model.ckpt``), ``generated.h5`` and ``report/index.html``. The default
sizes aim at 15 minutes on two CPU cores (dataset-2 geometry, 20k training showers, a 6-minute training
budget, 4000 showers generated with 10 Heun steps and evaluated); training stops at its wall-clock budget,
so a slower machine gets a less-trained model rather than a longer demo. ``quick=True`` runs the same
pipeline in well under a minute (for tests; the model is then barely trained).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from caloforge.errors import InputError
from caloforge.families.edm_dit import EdmDitConfig, SampleConfig
from caloforge.models import DiTConfig
from caloforge.optim import OptimConfig
from caloforge.preprocess import PreprocessConfig
from caloforge.runconfig import RunConfig, TrainConfig

__all__ = [
    "DEMO",
    "PRETRAINED_DEMO",
    "QUICK_DEMO",
    "DemoConfig",
    "DemoResult",
    "PretrainedDemoConfig",
    "run_demo",
    "run_pretrained_demo",
]


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo.

    Args:
        geometry: geometry preset of the simulated showers.
        n_train: training showers; n_eval: generated and reference showers each.
        energy_mev: log-uniform incident-energy range in MeV.
        train_minutes: training budget (``None``: ``train_steps`` only).
        train_steps: optimiser steps at most.
        hidden, depth: DiT width and blocks (size "tiny" with these overrides).
        sampler_steps: Heun steps when generating.
        classifier_epochs: epochs of the evaluation's classifier tests.
        plots: draw the report's plots.
    """

    geometry: str = "calochallenge-2"
    n_train: int = 20_000
    n_eval: int = 4_000
    energy_mev: tuple[float, float] = (1e3, 1e6)
    train_minutes: float | None = 6.0
    train_steps: int = 100_000
    hidden: int = 64
    depth: int = 3
    sampler_steps: int = 10
    classifier_epochs: int = 10
    plots: bool = True

    def run_config(self) -> RunConfig:
        """The training run of the demo."""
        return RunConfig(
            family="edm-dit",
            model=EdmDitConfig(
                dit=DiTConfig(
                    size="tiny", patch_size=(5, 4, 9), hidden=self.hidden, depth=self.depth, n_heads=4
                ),
                sample=SampleConfig(n_steps=self.sampler_steps, sampler="heun", fill_layers=True),
            ),
            preprocess=PreprocessConfig(layer_energies=True),
            optim=OptimConfig(lr=1e-3, warmup_steps=min(200, self.train_steps // 5 + 1)),
            train=TrainConfig(
                batch_size=32,  # more optimiser steps in the budget (docs/decisions.md, Backbone)
                max_steps=self.train_steps,
                max_minutes=self.train_minutes,
                ema_decay=0.999,
                checkpoint_every=1000,
                log_every=50,
            ),
        )


DEMO = DemoConfig()
QUICK_DEMO = DemoConfig(
    n_train=256,
    n_eval=200,
    train_minutes=None,
    train_steps=12,
    hidden=32,
    depth=1,
    sampler_steps=2,
    classifier_epochs=1,
    plots=False,
)


@dataclass(frozen=True)
class DemoResult:
    """Where the demo wrote its outputs, and its headline numbers (AUCs, FPD, KPD; None if not computed)."""

    report: Path
    model: Path
    generated: Path
    reference: Path
    headline: dict[str, float | None]


def _log_uniform(n: int, bounds: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    return np.exp(rng.uniform(math.log(bounds[0]), math.log(bounds[1]), n))


def run_demo(
    out_dir: str | PathLike[str],
    quick: bool = False,
    seed: int = 0,
    progress: bool = True,
    stage: Callable[[str], None] | None = None,
    config: DemoConfig | None = None,
) -> DemoResult:
    """Run the whole demo into ``out_dir`` (refuses a directory that already holds one).

    ``stage(text)`` is called at the start of each step (the CLI prints it).
    """
    from caloforge.evaluate.pipeline import evaluate_files
    from caloforge.generate import generate_to_file, load_generator
    from caloforge.geometry import get_geometry
    from caloforge.io import write_showers
    from caloforge.simulate import simulate
    from caloforge.training import train

    cfg = config or (QUICK_DEMO if quick else DEMO)
    say = stage or (lambda text: None)
    out = Path(out_dir)
    if (out / "run").exists() or (out / "report").exists():
        raise InputError(out, None, "already holds a demo", "a new --out directory")
    out.mkdir(parents=True, exist_ok=True)
    geometry = get_geometry(cfg.geometry)
    rng = np.random.default_rng(seed)

    say(
        f"simulating {cfg.n_train} training and {cfg.n_eval} reference showers ({geometry.name}, "
        f"electrons {cfg.energy_mev[0]:g}-{cfg.energy_mev[1]:g} MeV, embedded GFlash simulator)"
    )
    train_set = simulate(geometry, _log_uniform(cfg.n_train, cfg.energy_mev, rng), seed=seed + 1)
    reference = simulate(geometry, _log_uniform(cfg.n_eval, cfg.energy_mev, rng), seed=seed + 2)
    reference_path = out / "reference.h5"
    write_showers(reference_path, reference)

    budget = f"{cfg.train_minutes:g} minutes" if cfg.train_minutes else f"{cfg.train_steps} steps"
    say(f"training a DiT (hidden {cfg.hidden}, {cfg.depth} blocks) for {budget} on the CPU")
    run_config = cfg.run_config()
    run_config.train.seed = seed
    model = train(train_set, out / "run", run_config, progress=progress)
    del train_set

    say(f"generating {cfg.n_eval} showers at the reference energies ({cfg.sampler_steps} Heun steps)")
    generated_path = out / "generated.h5"
    generate_to_file(
        load_generator(model), generated_path, reference.energy, seed=seed + 3, progress=progress
    )

    say("evaluating generated against reference showers (CaloChallenge metrics)")
    evaluation = _evaluation(cfg.n_eval, cfg.classifier_epochs, seed, cfg.plots)
    metrics = evaluate_files(
        generated_path, reference_path, out / "report", evaluation, show_progress=progress
    )
    return DemoResult(
        out / "report" / "index.html", model, generated_path, reference_path, _headline(metrics)
    )


def _headline(metrics: dict[str, Any]) -> dict[str, float | None]:
    classifier = metrics.get("classifier", {})
    return {
        "auc_low": classifier.get("low", {}).get("auc"),
        "auc_high": classifier.get("high", {}).get("auc"),
        "fpd_x1e3": metrics.get("fpd_x1e3", {}).get("value"),
        "kpd_x1e3": metrics.get("kpd_x1e3", {}).get("value"),
    }


@dataclass(frozen=True)
class PretrainedDemoConfig:
    """Sizes of the pretrained demo.

    Args:
        model: name of the shipped model (``caloforge models``), or the path of a ``.ckpt``.
        sample: name of the shipped reference sample.
        n_eval: showers generated and compared (at most the sample's; ``None``: all of it).
        n_steps, sampler: sampling options (``None``: the model's own).
        classifier_epochs: epochs of the classifier tests.
        plots: draw the report's plots.
    """

    model: str = "g4-siw-dit"
    sample: str = "g4-siw-electrons"
    n_eval: int | None = None
    n_steps: int | None = None
    sampler: str | None = None
    classifier_epochs: int = 10
    plots: bool = True


PRETRAINED_DEMO = PretrainedDemoConfig()


def _evaluation(n: int, epochs: int, seed: int, plots: bool) -> Any:
    from caloforge.evaluate.classifier import ClassifierConfig
    from caloforge.evaluate.pipeline import EvaluateConfig

    return EvaluateConfig(
        classifier=ClassifierConfig(epochs=epochs),
        seed=seed,
        plots=plots,
        fpd_min_samples=min(10_000, n // 2),
        fpd_max_samples=min(50_000, n),
        kpd_batch_size=min(10_000, n),
        # fewer resamplings than the benchmark's: the demo is about seeing the pipeline, not the third digit
        fpd_batches=10,
        fpd_points=5,
        kpd_batches=5,
    )


def run_pretrained_demo(
    out_dir: str | PathLike[str],
    seed: int = 0,
    progress: bool = True,
    stage: Callable[[str], None] | None = None,
    config: PretrainedDemoConfig | None = None,
) -> DemoResult:
    """Generate with a shipped model at the shipped Geant4 sample's energies, score against the sample and
    write the report into ``out_dir`` (refuses a directory that already holds one)."""
    from caloforge.evaluate.pipeline import evaluate_files
    from caloforge.generate import generate_to_file, load_generator
    from caloforge.io import read_showers, write_showers
    from caloforge.pretrained import list_samples, model_path, sample_path

    cfg = config or PRETRAINED_DEMO
    say = stage or (lambda text: None)
    out = Path(out_dir)
    if (out / "report").exists() or (out / "generated.h5").exists():
        raise InputError(out, None, "already holds a demo", "a new --out directory")
    model = Path(cfg.model) if cfg.model.endswith(".ckpt") else model_path(cfg.model)
    if not model.is_file():
        raise InputError(model, None, "does not exist", "a model.ckpt, or a name from 'caloforge models'")
    reference = read_showers(sample_path(cfg.sample))
    if cfg.n_eval is not None:
        reference = reference[: cfg.n_eval]
    description = {s.name: s.description for s in list_samples()}[cfg.sample]
    out.mkdir(parents=True, exist_ok=True)
    reference_path = out / "reference.h5"
    write_showers(reference_path, reference)

    generator = load_generator(model)
    options: dict[str, Any] = {"n_steps": cfg.n_steps, "sampler": cfg.sampler}
    settings = generator.sampler_for(**options).options
    say(f"generating {len(reference)} showers with the pretrained model '{cfg.model}' "
        f"({', '.join(f'{k} {v}' for k, v in settings.items())}) at the energies of {description}")
    generated_path = out / "generated.h5"
    generate_to_file(generator, generated_path, reference.energy, seed=seed, progress=progress, **options)

    say("evaluating generated against Geant4 showers (CaloChallenge metrics)")
    evaluation = _evaluation(len(reference), cfg.classifier_epochs, seed, cfg.plots)
    report = out / "report"
    metrics = evaluate_files(generated_path, reference_path, report, evaluation, show_progress=progress)
    return DemoResult(report / "index.html", model, generated_path, reference_path, _headline(metrics))
