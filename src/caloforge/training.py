"""Training any family through Lightning: the shared module base, the Trainer builder, ``train()``.

A run directory holds ``config.yaml`` (the resolved run config), ``logs/`` (CSV, optionally TensorBoard),
``checkpoints/last.ckpt`` (written every ``checkpoint_every`` steps; ``resume=True`` continues from it after a
kill) and ``model.ckpt`` (written at the end). Every checkpoint carries the ``caloforge`` entry
(``caloforge.checkpoint``), which is all ``caloforge generate`` reads.

``init_from`` starts from another run's sampler weights (adapting a model to a new detector: the condition
spec, with its spare detector slots, is the source run's, so the weights fit). ``teacher`` hands a trained
sampler to families that distil one.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from os import PathLike
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, Timer, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from caloforge.adapters import add_adapters, merged_state_dict, trainable_count
from caloforge.averaging import exponential_average
from caloforge.checkpoint import CHECKPOINT_KEY, CheckpointContent, checkpoint_entry, read_checkpoint
from caloforge.context import RunContext
from caloforge.data import ShowerSet
from caloforge.datamodule import ShowerDataModule
from caloforge.errors import InputError
from caloforge.families import get_family
from caloforge.io.source import ShowerSource
from caloforge.optim import build_scheduler
from caloforge.progress import PeriodicLines, is_terminal
from caloforge.runconfig import DataConfig, RunConfig, TrainConfig
from caloforge.sampler import ShowerSampler

__all__ = ["FamilyModule", "build_trainer", "load_sampler", "train"]

log = logging.getLogger(__name__)


# ---- the shared module base ------------------------------------------------------------------------------
class FamilyModule(L.LightningModule):
    """What every family's LightningModule shares: the run's config and context, a seeded noise generator
    that resumes, weight averaging, the learning-rate schedule, clipping and the checkpoint entry.

    A family subclasses it and implements ``training_step``, ``configure_optimizers`` (with
    ``self.schedule(optimizer)``), ``sampler_state_dict`` and ``load_sampler_state_dict``, and builds its
    networks inside ``with self.seeded():`` (initial weights from ``train.seed``, no global random state).
    """

    def __init__(self, config: RunConfig, context: RunContext) -> None:
        super().__init__()
        self.config = config
        self.context = context
        self._averaged: list[tuple[nn.Module, AveragedModel]] = []
        self._noise: torch.Generator | None = None
        self._noise_state: Tensor | None = None
        self.best: tuple[float, int, dict[str, Tensor]] | None = None  # (val/loss, step, sampler weights)

    @contextmanager
    def seeded(self) -> Iterator[None]:
        """Torch's random state seeded from ``train.seed`` inside, restored after: networks built in it
        start from the run's seed without touching the caller's random state."""
        with torch.random.fork_rng():
            torch.manual_seed(self.config.train.seed)
            yield

    # -- to implement
    def sampler_state_dict(self) -> dict[str, Tensor]:
        """The weights the family's sampler loads (usually the averaged ones)."""
        raise NotImplementedError

    def load_sampler_state_dict(self, state: dict[str, Tensor]) -> None:
        """Set the trained networks (and their averages) from a sampler state (``--init-from``)."""
        raise NotImplementedError

    def validation_loss(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor | None:
        """The family's loss on a held-out batch, the same whenever it is asked (draw any noise from a
        generator seeded with ``batch_idx``); ``None`` (the default) declares none. Logged as
        ``val/loss`` when the run holds data out (``data.validation_fraction``); ``caloforge tune`` can
        minimise it."""
        return None

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        loss = self.validation_loss(batch, batch_idx)
        if loss is not None:
            self.log("val/loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(batch[0]))

    # -- helpers
    def average(self, network: nn.Module) -> AveragedModel:
        """An exponential moving average of ``network`` (decay ``train.ema_decay``), updated after every
        training batch; register it as an attribute so it is saved."""
        averaged = exponential_average(network, self.config.train.ema_decay)
        self._averaged.append((network, averaged))
        return averaged

    def adapt(self) -> tuple[int, int]:
        """Set which weights of the generating networks (those with an average) train, as ``adapt`` in the
        run config says (``caloforge.adapters``); the averages get the same structure and start equal to
        the networks. Returns (trained, total) weights of those networks."""
        settings = self.config.adapt
        trained = total = 0
        for network, averaged in self._averaged:
            add_adapters(network, settings.method, settings.lora_rank, settings.lora_alpha)
            add_adapters(averaged.module, settings.method, settings.lora_rank, settings.lora_alpha)
            averaged.module.load_state_dict(network.state_dict())
            averaged.module.requires_grad_(False)
            counts = trainable_count(network)
            trained, total = trained + counts[0], total + counts[1]
        return trained, total

    def update_averages(self) -> None:
        for network, averaged in self._averaged:
            averaged.update_parameters(network)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.update_averages()

    def noise_generator(self) -> torch.Generator:
        """The training noise: seeded per rank from ``train.seed``, restored on resume."""
        if self._noise is None:
            self._noise = torch.Generator(device=self.device)
            self._noise.manual_seed(self.config.train.seed * 1000 + self.global_rank + 1)
            if self._noise_state is not None:
                self._noise.set_state(self._noise_state)
        return self._noise

    def time_fraction(self) -> float:
        """Fraction of ``train.max_minutes`` spent (0 without a budget)."""
        minutes = self.config.train.max_minutes
        if not minutes or self._trainer is None:
            return 0.0
        timers = [c for c in self.trainer.callbacks if isinstance(c, Timer)]  # type: ignore[attr-defined]
        return timers[0].time_elapsed("train") / (60.0 * minutes) if timers else 0.0

    def schedule(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The ``lr_scheduler`` entry for ``configure_optimizers``: warm-up and cosine decay over the larger
        of step / max_steps and the time budget spent (``caloforge.optim``), stepped every step."""
        max_steps = max(self.config.train.max_steps, 1)
        scheduler = build_scheduler(
            optimizer, self.config.optim, lambda step: max(step / max_steps, self.time_fraction())
        )
        return {"scheduler": scheduler, "interval": "step"}

    def clip(self, optimizer: torch.optim.Optimizer) -> None:
        """Clip gradients to ``train.grad_clip`` (by norm): for modules with manual optimisation (with
        automatic optimisation the Trainer clips)."""
        if self.config.train.grad_clip:
            self.clip_gradients(optimizer, gradient_clip_val=self.config.train.grad_clip,
                                gradient_clip_algorithm="norm")

    def on_validation_epoch_end(self) -> None:
        """With ``train.keep_best``: remember the sampler weights of the lowest ``val/loss`` so far."""
        value = self.trainer.callback_metrics.get("val/loss")
        if not self.config.train.keep_best or value is None or self.trainer.sanity_checking:
            return
        if self.best is None or float(value) < self.best[0]:
            weights = {k: v.detach().clone() for k, v in self.sampler_state_dict().items()}
            self.best = (float(value), int(self.global_step), weights)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        weights = self.sampler_state_dict() if self.best is None else self.best[2]
        checkpoint[CHECKPOINT_KEY] = checkpoint_entry(self.config, self.context, merged_state_dict(weights))
        if self._noise is not None:
            checkpoint["noise_generator_state"] = self._noise.get_state()
        if self.best is not None:
            checkpoint["best_sampler"] = {"val_loss": self.best[0], "step": self.best[1]}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("noise_generator_state")
        self._noise_state = state if isinstance(state, Tensor) else None
        best = checkpoint.get("best_sampler")
        if isinstance(best, dict):  # a resumed run keeps the best weights found before
            weights = checkpoint[CHECKPOINT_KEY]["sampler"]
            self.best = (float(best["val_loss"]), int(best["step"]), dict(weights))


# ---- teachers ----------------------------------------------------------------------------------------------
def load_sampler(path: str | PathLike[str]) -> ShowerSampler:
    """The sampler of a checkpoint, in eval mode and frozen (a teacher for distillation)."""
    from caloforge.generate import load_generator

    return load_generator(path).sampler.base().requires_grad_(False)


# ---- the Trainer ------------------------------------------------------------------------------------------
class _StderrProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, on stderr (stdout is for results)."""

    def init_train_tqdm(self) -> Tqdm:
        return Tqdm(
            desc=self.train_description,
            position=2 * self.process_position,
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stderr,
            smoothing=0,
            bar_format=self.BAR_FORMAT,
        )


class _ProgressLines(Callback):
    """Training progress as a few plain lines (``caloforge.progress.PeriodicLines``) when stderr is not a
    terminal: one per tenth of ``max_steps``, or one per tenth of the time budget when there is one."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.lines: PeriodicLines | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        budget = None if self.config.max_minutes is None else 60.0 * self.config.max_minutes
        self.lines = PeriodicLines(
            None if budget else self.config.max_steps, "train", "step",
            seconds_without_total=max(budget / 10, 2.0) if budget else 30.0,
        )
        self.lines.update(trainer.global_step)  # a resumed run starts where it stopped

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.lines is not None:
            loss = trainer.callback_metrics.get("train/loss")
            if loss is not None:
                self.lines.set_postfix_str(f"loss {float(loss):.4f}")
            self.lines.update(1)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.lines is not None:
            self.lines.close()


def build_trainer(
    config: TrainConfig,
    out_dir: Path,
    progress: bool = True,
    callbacks: list[Callback] | None = None,
    automatic_optimization: bool = True,
    validate_every: int | None = None,
) -> L.Trainer:
    """A Trainer writing logs and checkpoints under ``out_dir`` (see module doc), showing progress (with
    ``progress``) as a bar on a terminal and as a few lines otherwise.

    The Trainer clips gradients only under automatic optimisation (Lightning refuses it otherwise); a
    module that optimises by hand clips with ``FamilyModule.clip``. ``validate_every``: steps between
    validation passes (``None``: no validation).
    """
    loggers: list[Logger] = [CSVLogger(out_dir, name="logs", version="")]
    if config.tensorboard:
        loggers.append(TensorBoardLogger(out_dir, name="logs", version="tensorboard"))
    checkpoint = ModelCheckpoint(
        dirpath=out_dir / "checkpoints",
        every_n_train_steps=config.checkpoint_every,
        save_last=True,
        save_top_k=0,
    )
    extra: list[Callback] = [checkpoint, *(callbacks or [])]
    bar = progress and is_terminal(sys.stderr)
    if bar:
        extra.append(_StderrProgressBar())
    elif progress:
        extra.append(_ProgressLines(config))
    return L.Trainer(
        accelerator=config.accelerator,
        devices=config.devices,
        num_nodes=config.num_nodes,
        # A module optimising by hand steps parts of itself in turn (generator and critic, two stages), so
        # each backward leaves some parameters unused, which plain DDP refuses.
        strategy=("ddp_find_unused_parameters_true" if config.strategy == "ddp" and not automatic_optimization
                  else config.strategy),
        precision=config.precision,  # type: ignore[arg-type]
        max_steps=config.max_steps,
        max_epochs=-1,
        max_time=None if config.max_minutes is None else {"seconds": round(60 * config.max_minutes)},
        gradient_clip_val=(config.grad_clip or None) if automatic_optimization else None,
        logger=loggers,
        callbacks=extra,
        log_every_n_steps=config.log_every,
        enable_progress_bar=bar,
        enable_model_summary=False,
        default_root_dir=out_dir,
        num_sanity_val_steps=0,
        limit_val_batches=0 if validate_every is None else 1.0,
        val_check_interval=validate_every,
        check_val_every_n_epoch=None,  # the stream is one endless epoch: validate by steps
    )


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# The sections that decide the shape of the networks: a resumed run must keep them.
_FIXED_ON_RESUME = ("family", "model", "preprocess", "conditions")


def _check_resumable(config: RunConfig, saved: CheckpointContent, last: Path) -> None:
    given, before = config.to_dict(), saved.config.to_dict()
    for section in _FIXED_ON_RESUME:
        if given[section] != before[section]:
            key, now, then = _first_difference(section, given[section], before[section])
            raise InputError(last, key, f"is {now!r} in the config given, {then!r} in the run being resumed",
                             f"the run's own {section} settings when resuming (only train and optim may "
                             "change); start a new --out, or use --init-from to start from its weights")


def _first_difference(prefix: str, a: Any, b: Any) -> tuple[str, Any, Any]:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(f"{prefix}.{key}", a.get(key), b.get(key))
    return prefix, a, b


def _context_for(
    showers: ShowerSet | ShowerSource, config: RunConfig, source: CheckpointContent | None
) -> RunContext:
    """A new run's context: fitted to ``showers``; with ``--init-from``, the source's condition spec."""
    context = RunContext.fit(showers, config.preprocess, config.conditions.detector_slots)
    if source is None:
        return context
    spec = source.spec
    if context.spec.n_detectors > spec.n_detectors:
        raise InputError(showers.source, "detector", f"has indices up to {context.spec.n_detectors - 1}",
                         f"indices below the {spec.n_detectors} detector slots of the --init-from model "
                         "(pre-train with conditions.detector_slots to keep spare ones)")
    if (context.spec.use_theta and not spec.use_theta) or (context.spec.use_phi and not spec.use_phi):
        raise InputError(showers.source, "theta/phi", "vary in the data",
                         "only the angles the --init-from model is conditioned on")
    return RunContext(context.geometry, context.preprocessor, spec, context.ranges)


def _held(showers: ShowerSet | ShowerSource, config: DataConfig) -> ShowerSet | ShowerSource:
    """The training showers as the run holds them: loaded when ``data.stream`` is off (or, unset, when they
    fit in a quarter of this machine's memory), else left on disk; cast to ``data.dtype``."""
    if isinstance(showers, ShowerSource):
        showers = replace(showers, dtype=config.dtype)
        stream = config.stream
        if stream is None:
            stream = showers.n_bytes > _physical_memory() // 4
        if stream:
            log.info("streaming %d showers (%.1f GB) from %s", len(showers), showers.n_bytes / 1e9,
                     showers.source)
            return showers
        return showers.load()
    if config.dtype is not None and showers.showers.dtype != config.dtype:
        return replace(showers, showers=showers.showers.astype(config.dtype))
    return showers


def _physical_memory() -> int:
    """Bytes of memory of this machine (a cgroup limit, where one is set, is not seen)."""
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _declares_validation(module: FamilyModule) -> bool:
    return type(module).validation_loss is not FamilyModule.validation_loss


def train(
    showers: ShowerSet | ShowerSource,
    out_dir: str | PathLike[str],
    config: RunConfig | None = None,
    resume: bool = False,
    progress: bool = True,
    callbacks: list[Callback] | None = None,
    init_from: str | PathLike[str] | None = None,
    teacher: str | PathLike[str] | None = None,
) -> Path:
    """Train ``config.family`` on ``showers``; returns the path of ``out_dir/model.ckpt``.

    ``showers`` is a set in memory or an ``io.ShowerSource`` (files on disk), which is loaded when it fits
    (``data.stream``) and otherwise streamed block by block (``caloforge.datamodule``): preprocessing is
    fitted in passes over its blocks and memory stays bounded by ``data.shuffle_blocks`` blocks.

    With ``resume``, continues from ``out_dir/checkpoints/last.ckpt`` with the context saved there and (unless
    ``config`` is given, which must then keep the run's family, model, preprocess and conditions) its
    config. Without it, refuses a directory that already holds a run rather than overwrite it.
    ``init_from`` (a checkpoint of the same family and geometry, or of another readout of the same detector
    for a readout-free family) starts from that run's sampler weights;
    ``teacher`` (a checkpoint) is handed to families that distil. Everything is checked before anything
    is written.
    """
    out = Path(out_dir)
    last = out / "checkpoints" / "last.ckpt"
    if resume:
        if init_from is not None:
            raise InputError(None, "--init-from", "was given with --resume", "one of them")
        if not last.exists():
            raise InputError(last, None, "does not exist, so there is nothing to resume",
                             "a run directory with checkpoints/last.ckpt (or leave out --resume)")
        saved = read_checkpoint(last, weights=False)
        if saved.format != 2:
            raise InputError(last, f"{CHECKPOINT_KEY}.format", f"is {saved.format}",
                             "format 2 to resume (an older run can be continued with --init-from)")
        if config is not None:
            _check_resumable(config, saved, last)
        config = config or saved.config
        if saved.geometry != showers.geometry:
            raise InputError(showers.source, "geometry", f"is '{showers.geometry.name}'",
                             f"'{saved.geometry.name}' as in the run being resumed")
        context = saved.context
        source = None
    else:
        if last.exists() or (out / "model.ckpt").exists():
            raise InputError(out, None, "already holds a training run", "a new --out directory, or --resume")
        source = None if init_from is None else read_checkpoint(init_from)
        config = config or (source.config if source is not None else RunConfig())
        if source is not None:
            if source.family != config.family:
                raise InputError(init_from, "family", f"is '{source.family}'",
                                 f"'{config.family}', the family being trained")
            # another readout of the same detector only for readout-free families (a new context is
            # fitted to the new data below; the weights know no cells)
            get_family(config.family).check_readout(source.geometry, showers.geometry, init_from, "geometry")
        if isinstance(showers, ShowerSet):
            showers.check()  # a ShowerSource's blocks are checked as they are read
    family = get_family(config.family)
    family.check_teacher(teacher is not None)
    # Loaded once here when it fits (a new run's context is then fitted in memory, not in passes over
    # the files), else streamed.
    held = _held(showers, config.data)
    if not resume:
        context = _context_for(held, config, source)
    module = family.module(config, context, None if teacher is None else load_sampler(teacher))
    if not isinstance(module, FamilyModule):
        raise TypeError(f"family '{family.name}' built a {type(module).__name__}, not a FamilyModule")
    if source is not None:
        assert source.sampler_state is not None
        try:
            module.load_sampler_state_dict(source.sampler_state)
        except RuntimeError as error:
            raise InputError(init_from, "sampler weights", f"do not fit the configured model ({error})",
                             "a checkpoint whose model section matches the config") from None
    if config.adapt.method != "full":
        trained, total = module.adapt()  # after --init-from's weights, before --resume's (which hold them)
        log.info("adapt.method %s: training %d of %d weights", config.adapt.method, trained, total)

    data = ShowerDataModule(
        held, context, config.data,
        batch_size=min(config.train.batch_size, len(showers)), seed=config.train.seed,
        representation=family.representation,
    )
    validates = data.val_data is not None and _declares_validation(module)
    trainer = build_trainer(config.train, out, progress=progress, callbacks=callbacks,
                            automatic_optimization=module.automatic_optimization,
                            validate_every=config.data.validation_every if validates else None)
    if trainer.is_global_zero:  # under DDP every rank runs this function; one writes
        out.mkdir(parents=True, exist_ok=True)
        _write_atomic(out / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    with warnings.catch_warnings():
        # Manual-optimisation families (mdma-gan) checkpoint after their step, which is what they mean; the
        # warning's multi-line code example would otherwise repeat at every checkpoint.
        warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
        trainer.fit(module, datamodule=data, ckpt_path=str(last) if resume else None)

    final = out / "model.ckpt"
    tmp = out / ".model.ckpt.tmp"
    trainer.save_checkpoint(tmp, weights_only=False)  # full state: the final model can be trained on
    if trainer.is_global_zero:
        os.replace(tmp, final)
    if module.best is not None:
        log.info("model.ckpt holds the sampler of step %d, the lowest val/loss (%.4g) of the run",
                 module.best[1], module.best[0])
    log.info("trained %d steps; model written to %s", trainer.global_step, final)
    return final

