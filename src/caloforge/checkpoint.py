"""The one checkpoint format: a Lightning checkpoint with a ``caloforge`` entry.

Besides Lightning's own keys (``state_dict`` with the trained weights under ``edm.`` and their moving
average under ``ema.``, the layer-energy stage's under ``layer_edm.`` and ``layer_ema.`` when the run has
one, optimiser and loop state for resuming), every checkpoint holds::

    checkpoint["caloforge"] = {
        "format": 1,
        "config": RunConfig as a plain dict,
        "geometry": CylindricalGeometry.to_dict(),
        "preprocess": ShowerPreprocessor.to_dict(),
        "conditions": ConditionSpec.to_dict(),
        "ranges": ConditionRanges.to_dict(),   # span of the training conditions, mean E_tot / E_inc
    }

so ``read_checkpoint`` (and ``caloforge generate``) needs nothing else. Only plain types and tensors are
stored, so the file loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from caloforge.conditioning import ConditionRanges, ConditionSpec
from caloforge.config import from_dict, to_dict
from caloforge.errors import InputError
from caloforge.geometry import CylindricalGeometry
from caloforge.preprocess import ShowerPreprocessor

if TYPE_CHECKING:
    from caloforge.training import RunConfig

__all__ = ["CHECKPOINT_KEY", "FORMAT_VERSION", "CheckpointContent", "read_checkpoint"]

CHECKPOINT_KEY = "caloforge"
FORMAT_VERSION = 1


@dataclass
class CheckpointContent:
    """What a checkpoint holds for generation.

    ``weights`` is the EMA state dict of the ``EDM`` module (keys as ``EDM.state_dict()``), ``None`` when
    read with ``weights=False``; ``layer_weights`` likewise for the layer-energy stage (``None`` also when
    the run has none); ``step`` the optimiser steps trained.
    """

    config: RunConfig
    geometry: CylindricalGeometry
    preprocessor: ShowerPreprocessor
    spec: ConditionSpec
    ranges: ConditionRanges
    weights: dict[str, Tensor] | None = None
    step: int = 0
    layer_weights: dict[str, Tensor] | None = None

    def payload(self) -> dict[str, Any]:
        """The ``caloforge`` checkpoint entry (plain types)."""
        return {
            "format": FORMAT_VERSION,
            "config": to_dict(self.config),
            "geometry": self.geometry.to_dict(),
            "preprocess": self.preprocessor.to_dict(),
            "conditions": self.spec.to_dict(),
            "ranges": self.ranges.to_dict(),
        }


def read_checkpoint(path: str | PathLike[str], weights: bool = True) -> CheckpointContent:
    """Read a caloforge checkpoint; raises ``InputError`` naming what is missing or malformed."""
    from caloforge.training import RunConfig  # training imports this module; import here to avoid a cycle

    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError) as error:
        raise InputError(
            path,
            None,
            f"cannot be read as a checkpoint ({error})",
            "a model.ckpt written by 'caloforge train'",
        ) from None
    if not isinstance(checkpoint, dict) or CHECKPOINT_KEY not in checkpoint:
        raise InputError(path, CHECKPOINT_KEY, "is missing", "a checkpoint written by 'caloforge train'")
    entry = checkpoint[CHECKPOINT_KEY]
    if entry.get("format") != FORMAT_VERSION:
        raise InputError(path, f"{CHECKPOINT_KEY}.format", f"is {entry.get('format')!r}", f"{FORMAT_VERSION}")
    try:
        content = CheckpointContent(
            config=from_dict(RunConfig, entry["config"], path),
            geometry=CylindricalGeometry.from_dict(entry["geometry"]),
            preprocessor=ShowerPreprocessor.from_dict(entry["preprocess"]),
            spec=ConditionSpec.from_dict(entry["conditions"]),
            ranges=ConditionRanges.from_dict(entry["ranges"]),
            step=int(checkpoint.get("global_step", 0)),
        )
    except (KeyError, TypeError) as error:
        raise InputError(
            path, CHECKPOINT_KEY, f"lacks or mangles {error}", "a complete caloforge entry"
        ) from None
    if weights:
        state = checkpoint.get("state_dict", {})
        content.weights = {k.removeprefix("ema."): v for k, v in state.items() if k.startswith("ema.")}
        if not content.weights:
            raise InputError(
                path, "state_dict", "holds no 'ema.' weights", "a checkpoint of a DiffusionModule"
            )
        layer = {k.removeprefix("layer_ema."): v for k, v in state.items() if k.startswith("layer_ema.")}
        content.layer_weights = layer or None
    return content
