"""The run config: which family, its own section, and the sections every family shares.

One YAML file (and the ``config`` of every checkpoint) reads::

    family: edm-dit            # a name from ``caloforge families`` (default: the diffusion transformer)
    model: {...}               # the family's own section, validated by its config dataclass
    preprocess: {...}          # caloforge.preprocess.PreprocessConfig
    conditions: {...}          # ConditionConfig (spare detector slots)
    optim: {...}               # OptimConfig (caloforge.optim)
    train: {...}               # TrainConfig
    data: {...}                # DataConfig (streaming, validation split, workers)
    adapt: {...}               # AdaptConfig (which weights train: full, bias or lora)

Every section rejects unknown keys, naming the dotted key and the known ones. No Lightning here: a
checkpoint's config is read on the generation path too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from os import PathLike
from typing import Any

from caloforge.config import from_dict, read_yaml_mapping, to_dict
from caloforge.errors import InputError
from caloforge.optim import OptimConfig
from caloforge.preprocess import PreprocessConfig

__all__ = [
    "DEFAULT_FAMILY",
    "AdaptConfig",
    "ConditionConfig",
    "DataConfig",
    "RunConfig",
    "TrainConfig",
    "load_run_config",
    "run_config_from_dict",
]

DEFAULT_FAMILY = "edm-dit"


@dataclass
class TrainConfig:
    """How long and where to train (any family).

    Args:
        batch_size: showers per step (per device).
        max_steps: optimiser steps.
        max_minutes: wall-clock budget for training (``None``: no limit); whichever comes first stops.
        ema_decay: decay of the exponential moving average of the weights used for generation.
        grad_clip: gradient-norm clip (0: none).
        precision: ``lightning.Trainer`` precision: ``32-true``, or ``bf16-mixed`` on GPUs that have it
            (the safe mixed precision: float32's range; float16 mixed needs loss scaling).
        accelerator, devices, num_nodes, strategy: passed to ``lightning.Trainer`` (``ddp`` for several
            processes; see docs/scale.md).
        checkpoint_every: steps between ``checkpoints/last.ckpt`` writes.
        log_every: steps between logged losses.
        seed: seeds the weights, the data order and the noise.
        tensorboard: also log to TensorBoard (``logs/``).
        keep_best: the sampler weights checkpoints (and ``model.ckpt``) hold are those of the validation
            pass with the lowest ``val/loss`` so far, not the last step's (needs ``data.validation_fraction``
            and a family that declares a validation loss; for GANs, whose last iterate is not their best).
    """

    batch_size: int = 128
    max_steps: int = 20000
    max_minutes: float | None = None
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    precision: str = "32-true"
    accelerator: str = "auto"
    devices: int | str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    checkpoint_every: int = 500
    log_every: int = 25
    seed: int = 0
    tensorboard: bool = False
    keep_best: bool = False


@dataclass
class DataConfig:
    """How training showers reach the model (``caloforge.datamodule``; any family).

    Args:
        stream: read the training files block by block instead of loading them (``None``: stream when
            their showers would take more than a quarter of this machine's memory).
        block_rows: showers per block read from a file (one contiguous HDF5 slice).
        shuffle_blocks: blocks shuffled together in memory (a streamed run holds this many blocks per
            dataloader worker).
        dtype: dtype showers are held in (``float16`` halves the memory of float32 files; ``None``: as
            stored). Model inputs are float32 whatever this is.
        validation_fraction: fraction of the blocks (of the showers, in memory) held out for ``val/loss``,
            for families that declare a validation loss.
        validation_every: training steps between validation passes.
        workers: dataloader worker processes per rank (0: read in the training process).
        balance_detectors: in showers of several detectors, repeat the smaller detectors' showers so every
            detector is seen as often as the largest (``caloforge.datamodule.balanced_pass``).
        bucket_by_hits: cut training batches from buffers sorted by hit count, the batches in random order
            (``caloforge.datamodule.bucket_by_hits``), so padded point clouds cost about their own size
            (``None``: on for families whose representation is padded, ``points``).
    """

    stream: bool | None = None
    block_rows: int = 4096
    shuffle_blocks: int = 8
    dtype: str | None = None
    validation_fraction: float = 0.0
    validation_every: int = 500
    workers: int = 0
    balance_detectors: bool = True
    bucket_by_hits: bool | None = None

    def __post_init__(self) -> None:
        if self.block_rows < 1 or self.shuffle_blocks < 1 or self.workers < 0 or self.validation_every < 1:
            raise InputError(None, "data", f"has block_rows={self.block_rows}, shuffle_blocks="
                             f"{self.shuffle_blocks}, workers={self.workers}, validation_every="
                             f"{self.validation_every}", "block_rows, shuffle_blocks, validation_every >= 1 "
                             "and workers >= 0")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise InputError(None, "data.validation_fraction", f"is {self.validation_fraction}",
                             "a fraction in [0, 1)")
        if self.dtype not in (None, "float16", "float32"):
            raise InputError(None, "data.dtype", f"is {self.dtype!r}", "float16, float32 or null")


@dataclass
class ConditionConfig:
    """The condition vector's layout beyond what the training data shows.

    Args:
        detector_slots: one-hot detector slots to reserve (0: as many as the data's detectors). Spare slots
            let a model pre-trained on k detectors be adapted to a new one (``--init-from``) with the
            weights still fitting: the new detector takes a free slot.
    """

    detector_slots: int = 0


@dataclass
class AdaptConfig:
    """Which weights of the generating networks train (``caloforge.adapters``): all of them (``full``, every
    run's default), only the biases (``bias``) or low-rank updates of the linear layers (``lora``), the
    methods ``caloforge adapt`` offers for moving a pre-trained model to a new detector.

    Args:
        method: ``full``, ``bias`` or ``lora``.
        lora_rank: rank r of each low-rank update.
        lora_alpha: the updates are scaled by alpha / r.
    """

    method: str = "full"
    lora_rank: int = 8
    lora_alpha: float = 16.0

    def __post_init__(self) -> None:
        from caloforge.adapters import ADAPT_METHODS

        if self.method not in ADAPT_METHODS:
            raise InputError(None, "adapt.method", f"is {self.method!r}",
                             f"one of {', '.join(ADAPT_METHODS)}")
        if self.lora_rank < 1 or not self.lora_alpha > 0:
            raise InputError(None, "adapt", f"has lora_rank={self.lora_rank}, lora_alpha={self.lora_alpha}",
                             "lora_rank >= 1 and lora_alpha > 0")


@dataclass
class RunConfig:
    """Everything a run needs; saved in every checkpoint and as ``config.yaml``.

    ``model`` is the family's own config dataclass (``caloforge.families``); ``None`` means its defaults
    (filled in by ``run_config_from_dict`` and ``RunConfig.for_family``).
    """

    family: str = DEFAULT_FAMILY
    model: Any = None
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    conditions: ConditionConfig = field(default_factory=ConditionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)

    def __post_init__(self) -> None:
        if self.model is None:
            from caloforge.families import get_family

            self.model = get_family(self.family).config()

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts (for YAML and checkpoints); ``run_config_from_dict`` inverts it."""
        return to_dict(self)


def run_config_from_dict(
    data: dict[str, Any], path: str | PathLike[str] | None = None, family: str | None = None
) -> RunConfig:
    """A ``RunConfig`` from plain dicts; ``family`` (e.g. ``--family``) must agree with ``data['family']``.

    The family's section ``model`` is built by the family's own config dataclass, so its unknown keys are
    refused as ``model.KEY``.
    """
    from caloforge.families import get_family

    data = dict(data)
    named = data.pop("family", None)
    if named is not None and not isinstance(named, str):
        raise InputError(path, "family", f"is {named!r}", "a family name (see 'caloforge families')")
    if family is not None and named is not None and family != named:
        raise InputError(path, "family", f"is '{named}' but '{family}' was asked for (--family)",
                         "one family: leave out --family or make them agree")
    name = family or named or DEFAULT_FAMILY
    chosen = get_family(name)
    model = from_dict(chosen.config, data.pop("model", None), path, prefix="model")
    shared = from_dict(_SharedSections, data, path)
    return RunConfig(name, model, shared.preprocess, shared.conditions, shared.optim, shared.train,
                     shared.data, shared.adapt)


@dataclass
class _SharedSections:
    """The sections every family shares (``RunConfig`` less ``family`` and ``model``), for validation."""

    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    conditions: ConditionConfig = field(default_factory=ConditionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)


def load_run_config(path: str | PathLike[str] | None, family: str | None = None) -> RunConfig:
    """A ``RunConfig`` from YAML (module doc); ``None`` gives the defaults of ``family`` (or the DiT's)."""
    data = {} if path is None else read_yaml_mapping(path)
    return run_config_from_dict(data, path, family)
