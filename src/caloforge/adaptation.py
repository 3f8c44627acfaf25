"""Moving a pre-trained model to a new detector (``caloforge adapt``): the new detector claims a spare
one-hot slot, and a short run starts from the pre-trained weights, training all of them or only the
adapters ``adapt.method`` names (``caloforge.adapters``).

The adapted run is an ordinary run (``config.yaml``, ``checkpoints/``, ``model.ckpt``) whose checkpoint holds
merged weights, so ``caloforge generate``, ``evaluate`` and ``export`` take it as they take any other; its
condition ranges record the claimed slot, which generation then uses by default.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from caloforge.checkpoint import CheckpointContent, read_checkpoint
from caloforge.data import ShowerSet
from caloforge.errors import InputError
from caloforge.io.source import ShowerSource
from caloforge.runconfig import AdaptConfig, RunConfig

__all__ = ["adapt", "claim_slot"]

log = logging.getLogger(__name__)


def claim_slot(source: CheckpointContent, requested: int | None = None, where: str | None = None) -> int:
    """The detector slot a new detector takes in the model ``source``: ``requested`` when given (it must be
    one of the model's slots), else the first slot the model was not trained on; a one-slot model's only
    slot is reused. ``where`` names the checkpoint in errors."""
    n_slots = source.spec.n_detectors
    if requested is not None:
        if not 0 <= requested < n_slots:
            raise InputError(where, "--slot", f"is {requested}",
                             f"one of the model's detector slots 0..{n_slots - 1}")
        return requested
    if n_slots == 1:
        return 0
    trained = set(source.ranges.detectors)
    if not trained:
        raise InputError(where, "context.ranges.detectors", "is not recorded (a checkpoint written before "
                         "trained slots were)", "--slot K naming the slot the new detector takes")
    spare = [k for k in range(n_slots) if k not in trained]
    if not spare:
        raise InputError(where, "detector slots", f"are all trained on ({n_slots} of {n_slots})",
                         "a model pre-trained with spare slots (conditions.detector_slots), or --slot K to "
                         "overwrite one")
    return spare[0]


def adapt(
    pretrained: str | PathLike[str],
    showers: ShowerSet | ShowerSource,
    out_dir: str | PathLike[str],
    method: str = "full",
    *,
    slot: int | None = None,
    config: RunConfig | None = None,
    lora_rank: int = 8,
    lora_alpha: float = 16.0,
    progress: bool = True,
    callbacks: list[Any] | None = None,
) -> tuple[Path, int]:
    """Adapt the model of checkpoint ``pretrained`` to ``showers`` of one new detector; returns
    (``out_dir/model.ckpt``, the slot claimed).

    ``showers`` (loaded into memory: adaptation sets are small) must hold one detector, whatever index its
    file gives it; it is trained as detector ``slot`` (``claim_slot``). ``config`` (default: the
    pre-trained run's) must keep its family and model sections; its ``adapt`` section is set from
    ``method``, ``lora_rank`` and ``lora_alpha``. ``callbacks`` (Lightning callbacks) go to ``train``.
    """
    from caloforge.training import train

    source = read_checkpoint(pretrained, weights=False)
    claimed = claim_slot(source, slot, str(pretrained))
    held = showers.load() if isinstance(showers, ShowerSource) else showers
    detectors = np.unique(held.condition("detector"))
    if detectors.size > 1:
        raise InputError(held.source, "detector", f"holds {detectors.size} detectors "
                         f"({', '.join(str(int(d)) for d in detectors[:5])})",
                         "the showers of one new detector")
    held = replace(held, detector=np.full(len(held), claimed, dtype=np.int64))
    run_config = replace(config or source.config,
                         adapt=AdaptConfig(method=method, lora_rank=lora_rank, lora_alpha=lora_alpha))
    log.info("adapting %s to %d showers as detector slot %d (%s)", pretrained, len(held), claimed, method)
    path = train(held, out_dir, run_config, progress=progress, callbacks=callbacks, init_from=pretrained)
    return path, claimed
