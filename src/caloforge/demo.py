"""The end-to-end demo: simulate -> train a small DiT on the CPU -> generate -> evaluate -> HTML report.

``run_demo(out_dir)`` writes into ``out_dir``: ``reference.h5`` (held-out simulator showers),
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

__all__ = ["DEMO", "QUICK_DEMO", "DemoConfig", "DemoResult", "run_demo"]


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
                sample=SampleConfig(n_steps=self.sampler_steps, sampler="heun"),
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
    from caloforge.evaluate.classifier import ClassifierConfig
    from caloforge.evaluate.pipeline import EvaluateConfig, evaluate_files
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
    n = cfg.n_eval
    evaluation = EvaluateConfig(
        classifier=ClassifierConfig(epochs=cfg.classifier_epochs),
        seed=seed,
        plots=cfg.plots,
        fpd_min_samples=min(10_000, n // 2),
        fpd_max_samples=min(50_000, n),
        kpd_batch_size=min(10_000, n),
        # fewer resamplings than the benchmark's: the demo is about seeing the pipeline, not the third digit
        fpd_batches=10,
        fpd_points=5,
        kpd_batches=5,
    )
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
