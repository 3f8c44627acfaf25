"""Hyperparameter search with Optuna over any family's run config (``caloforge tune``).

A search is one YAML file::

    base: {family: edm-dit, model: {dit: {size: tiny}}, train: {max_steps: 2000}}  # a run config
    objective: val_loss          # the family's validation loss, or ``auc``: low-level classifier AUC of
                                 # generated against held-out showers (any family, costs generation)
    direction: minimize
    pruner: median               # median | hyperband | none (prunes on val/loss at each validation)
    startup_trials: 2            # trials before the sampler and the pruner act on what they saw
    seed: 0                      # seeds Optuna's TPE sampler
    n_eval: 2000                 # showers per side for the ``auc`` objective
    space:                       # dotted run-config keys
      optim.lr: {float: [1.0e-4, 3.0e-3], log: true}
      model.dit.depth: {int: [2, 6]}
      model.dit.size: {choices: [tiny, small]}

Every trial trains a run in ``STUDY/trial-NNNN/`` (the base config with the trial's values; the run config
validates every key before any work) with ``data.validation_fraction`` of the showers held out. The study
lives in an Optuna storage: by default ``sqlite:///STUDY/study.db``; any RDB URL (PostgreSQL, MySQL) lets
many workers on many machines share it. Workers heartbeat; a trial whose worker was killed is failed after
a grace period and retried (the retry resumes the killed run from its last checkpoint), so running the same
command again continues the study. ``n_trials`` counts finished trials (complete or pruned) of the whole
study, whichever worker ran them. ``STUDY/best.yaml`` is the best trial's run config, which
``caloforge train --config`` takes.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import yaml
from lightning.pytorch.callbacks import Callback

from caloforge.config import read_yaml_mapping, set_dotted
from caloforge.data import ShowerSet
from caloforge.errors import InputError
from caloforge.io.atomic import atomic_output
from caloforge.io.source import ShowerSource
from caloforge.runconfig import RunConfig, run_config_from_dict

__all__ = ["Parameter", "TuneConfig", "load_tune_config", "tune"]

log = logging.getLogger(__name__)

OBJECTIVES = ("val_loss", "auc")
PRUNERS = ("median", "hyperband", "none")


@dataclass(frozen=True)
class Parameter:
    """One dimension of the search: ``kind`` float, int or choice over [low, high] (log-spaced with
    ``log``) or ``choices``."""

    key: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_categorical(self.key, list(self.choices))


@dataclass
class TuneConfig:
    """A search (module doc): the base run config (plain dicts) and the space."""

    base: dict[str, Any] = field(default_factory=dict)
    space: tuple[Parameter, ...] = ()
    objective: str = "val_loss"
    direction: str = "minimize"
    pruner: str = "median"
    startup_trials: int = 2
    seed: int = 0
    n_eval: int = 2000


def _parameter(key: str, spec: Any, path: str | None) -> Parameter:
    where = f"space.{key}"
    if not isinstance(spec, dict):
        raise InputError(path, where, f"is {spec!r}",
                         "a mapping such as {float: [LOW, HIGH], log: true}, {int: [LOW, HIGH]} or "
                         "{choices: [A, B]}")
    kinds = [k for k in ("float", "int", "choices") if k in spec]
    unknown = sorted(set(spec) - {"float", "int", "choices", "log"})
    if len(kinds) != 1 or unknown:
        raise InputError(path, where, f"has keys {sorted(spec)}",
                         "exactly one of float, int, choices (and optionally log)")
    kind, values = kinds[0], spec[kinds[0]]
    if kind == "choices":
        if not isinstance(values, list) or not values:
            raise InputError(path, f"{where}.choices", f"is {values!r}", "a non-empty list")
        return Parameter(key, "choice", choices=tuple(values))
    if (not isinstance(values, list) or len(values) != 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
            or values[0] >= values[1]):
        raise InputError(path, f"{where}.{kind}", f"is {values!r}", "[LOW, HIGH] numbers with LOW < HIGH")
    log_scale = bool(spec.get("log", False))
    if log_scale and values[0] <= 0:
        raise InputError(path, f"{where}.log", f"is set with LOW = {values[0]}", "LOW > 0 on a log scale")
    return Parameter(key, kind, float(values[0]), float(values[1]), log_scale)


def load_tune_config(path: str | PathLike[str], base: str | PathLike[str] | None = None) -> TuneConfig:
    """Read a search from YAML (module doc); ``base`` (a run-config YAML) replaces the file's ``base``.

    Every key is checked, and the base with each parameter at its low end (or first choice) is validated
    as a run config, so a misspelled key fails now, not in the first trial."""
    name = str(path)
    data = read_yaml_mapping(path)
    known = {"base", "space", "objective", "direction", "pruner", "startup_trials", "seed", "n_eval"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(name, unknown[0], "is not a known key", f"one of {', '.join(sorted(known))}")
    base_config = read_yaml_mapping(base) if base is not None else data.get("base") or {}
    if not isinstance(base_config, dict):
        raise InputError(name, "base", f"is {base_config!r}", "a run config mapping")
    space = data.get("space") or {}
    if not isinstance(space, dict) or not space:
        raise InputError(name, "space", f"is {space!r}", "a mapping of dotted run-config keys to ranges")
    config = TuneConfig(
        base=base_config,
        space=tuple(_parameter(str(k), v, name) for k, v in space.items()),
        objective=str(data.get("objective", "val_loss")),
        direction=str(data.get("direction", "minimize")),
        pruner=str(data.get("pruner", "median")),
        startup_trials=int(data.get("startup_trials", 2)),
        seed=int(data.get("seed", 0)),
        n_eval=int(data.get("n_eval", 2000)),
    )
    for key, value, allowed in (("objective", config.objective, OBJECTIVES),
                                ("direction", config.direction, ("minimize", "maximize")),
                                ("pruner", config.pruner, PRUNERS)):
        if value not in allowed:
            raise InputError(name, key, f"is '{value}'", f"one of {', '.join(allowed)}")
    first = {p.key: (p.choices[0] if p.kind == "choice" else p.low if p.kind == "float" else int(p.low))
             for p in config.space}
    trial_config(config, first, name)
    return config


def trial_config(config: TuneConfig, values: dict[str, Any], path: str | None = None) -> RunConfig:
    """The base run config with the trial's ``values`` set (dotted keys), validated."""
    data = copy.deepcopy(config.base)
    for key, value in values.items():
        set_dotted(data, key, value, "space")
    run = run_config_from_dict(data, path)
    if run.data.validation_fraction <= 0:
        run.data.validation_fraction = 0.1  # every objective scores on held-out showers
    return run


# ---- the objective ----------------------------------------------------------------------------------------
def _auc(model: Path, held_out: ShowerSet, n_eval: int, seed: int) -> float:
    """Low-level classifier AUC of showers generated at ``held_out``'s conditions against them."""
    from caloforge.evaluate.classifier import ClassifierConfig, classifier_test, low_level_inputs
    from caloforge.generate import load_generator

    reference = held_out[np.random.default_rng(seed).permutation(len(held_out))[:n_eval]]
    generator = load_generator(model)
    generated = generator.sample(reference.energy, reference.theta, reference.phi, reference.detector,
                                 seed=seed, warn_outside=False).showers
    threshold = generator.content.context.preprocessor.threshold_mev
    return classifier_test(low_level_inputs(generated, reference.energy, threshold),
                           low_level_inputs(reference.showers, reference.energy, threshold),
                           ClassifierConfig(epochs=5, n_hidden=128), seed=seed).auc


def _objective(
    config: TuneConfig, showers: ShowerSet | ShowerSource, out: Path, report: Callable[[str], None]
) -> Callable[[Any], float]:
    import optuna

    from caloforge.datamodule import split_validation
    from caloforge.training import train

    def objective(trial: optuna.Trial) -> float:
        values = {p.key: p.suggest(trial) for p in config.space}
        run_config = trial_config(config, values)
        trial.set_user_attr("config", run_config.to_dict())
        # A retry of a killed trial inherits its user attributes: continue its run where it stopped.
        retried = "run" in trial.user_attrs
        run_dir = Path(trial.user_attrs["run"]) if retried else out / f"trial-{trial.number:04d}"
        resume = retried and (run_dir / "checkpoints" / "last.ckpt").exists()
        if retried and not resume and run_dir.exists():
            shutil.rmtree(run_dir)  # killed before its first checkpoint: start it again
        trial.set_user_attr("run", str(run_dir))
        pruning = _PruningCallback(trial)
        model = train(showers, run_dir, run_config, resume=resume, progress=False, callbacks=[pruning])
        if pruning.pruned_at is not None:
            report(f"trial {trial.number}: pruned at step {pruning.pruned_at} (val/loss {pruning.last:.5g})")
            raise optuna.TrialPruned()
        if config.objective == "val_loss":
            if pruning.last is None:
                raise InputError(None, "objective", f"is val_loss, but family '{run_config.family}' declares "
                                 "no validation loss", "objective: auc for this family")
            value = pruning.last
        else:
            fraction, seed = run_config.data.validation_fraction, run_config.train.seed
            held_out = split_validation(showers, fraction, seed)[1]
            assert held_out is not None
            if isinstance(held_out, ShowerSource):
                held_out = held_out.load()
            value = _auc(model, held_out, config.n_eval, config.seed)
        shown = ", ".join(f"{k}={_short(v)}" for k, v in values.items())
        report(f"trial {trial.number}: {config.objective} {value:.5g} ({shown})")
        return value

    return objective


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class _PruningCallback(Callback):
    """Reports ``val/loss`` after each validation to the trial; stops training when Optuna prunes it (or
    the loss is not finite)."""

    def __init__(self, trial: Any) -> None:
        self.trial = trial
        self.pruned_at: int | None = None
        self.last: float | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get("val/loss")
        if value is None or trainer.sanity_checking:
            return
        self.last = float(value)
        if math.isfinite(self.last):
            self.trial.report(self.last, trainer.global_step)
        if not math.isfinite(self.last) or self.trial.should_prune():
            self.pruned_at = trainer.global_step
            trainer.should_stop = True


@contextlib.contextmanager
def _quiet_trainer() -> Iterator[None]:
    """One line per trial is the study's progress: Lightning's per-run banners and warnings, repeated for
    every trial, are silenced (each run's logs/ keeps its metrics)."""
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="lightning")
            warnings.filterwarnings("ignore", module="torch.optim")
            yield
    finally:
        logger.setLevel(level)


def _with_retries(open_study: Callable[[], Any], attempts: int = 10) -> Any:
    """``open_study()``, again after a pause when another worker is creating the same storage or study at
    that moment (SQLAlchemy then reports the table or the study as existing, or the file as locked)."""
    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(attempts):
        try:
            return open_study()
        except (IntegrityError, OperationalError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 + 0.5 * attempt)
    raise AssertionError("unreachable")


# ---- the study --------------------------------------------------------------------------------------------
def _pruner(config: TuneConfig) -> Any:
    import optuna

    if config.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=config.startup_trials)
    if config.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


def tune(
    showers: ShowerSet | ShowerSource,
    config: TuneConfig,
    out: str | PathLike[str],
    n_trials: int,
    storage: str | None = None,
    study_name: str = "caloforge",
    report: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run trials until the study holds ``n_trials`` finished ones (module doc); returns a summary:
    ``best_value``, ``best_trial``, ``best_params``, ``best_config`` (path of ``best.yaml``), ``n_finished``.
    """
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    say = report or log.info
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{(root / 'study.db').resolve()}"
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own lines say what the study does
    direction = optuna.study.StudyDirection.MINIMIZE if config.direction == "minimize" else \
        optuna.study.StudyDirection.MAXIMIZE

    def open_study() -> optuna.Study:
        with warnings.catch_warnings():  # Optuna marks heartbeats and retries experimental; we rely on them
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = RetryHeartbeatStaleTrialCallback(max_retry=2, inherit_intermediate_values=True)
            rdb = RDBStorage(url, engine_kwargs=engine, heartbeat_interval=30, grace_period=90,
                             heartbeat_stale_trial_callback=retry)
        return optuna.create_study(
            study_name=study_name, storage=rdb, load_if_exists=True, direction=direction,
            sampler=optuna.samplers.TPESampler(seed=config.seed, n_startup_trials=config.startup_trials),
            pruner=_pruner(config),
        )

    study = _with_retries(open_study)
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=finished))
    if done < n_trials:
        say(f"study '{study_name}' in {url}: {done} of {n_trials} trials finished; running the rest")
        with _quiet_trainer():
            study.optimize(_objective(config, showers, root, say), n_trials=n_trials - done,
                           callbacks=[MaxTrialsCallback(n_trials, states=finished)], catch=())
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise InputError(None, "study", "has no complete trial (all were pruned or failed)",
                         "a wider budget (train.max_steps) or another pruner")
    best = study.best_trial
    best_path = root / "best.yaml"
    with atomic_output(best_path) as tmp:
        Path(tmp).write_text(yaml.safe_dump(best.user_attrs["config"], sort_keys=False))
    return {
        "best_value": best.value,
        "best_trial": best.number,
        "best_params": best.params,
        "best_config": str(best_path),
        "best_run": best.user_attrs.get("run"),
        "n_finished": len(study.get_trials(deepcopy=False, states=finished)),
    }
