"""The one checkpoint format: a Lightning checkpoint with a ``caloforge`` entry (format 2).

Besides Lightning's own keys (``state_dict`` with the training module's weights, optimiser and loop state
for resuming), every checkpoint holds::

    checkpoint["caloforge"] = {
        "format": 2,
        "family": "edm-dit",                  # caloforge.families
        "config": RunConfig as plain dicts,    # caloforge.runconfig
        "context": RunContext.to_dict(),       # geometry, fitted preprocessing, condition spec, ranges
        "sampler": {name: tensor},             # the weights the family's sampler loads (averaged ones)
        "calibration": {...},                  # optional: caloforge.calibration.CellCalibration.to_dict()
    }

so ``read_checkpoint`` (and ``caloforge generate``) needs nothing else, and never Lightning. Only plain
types and tensors are stored, so the file loads with ``torch.load(weights_only=True)``.

Format 1 (written until the family contract, edm-dit only: the entry held config, geometry, preprocess,
conditions and ranges, and the sampler's weights sat in Lightning's ``state_dict`` under ``ema.`` and
``layer_ema.``) is read too, and generates the same showers for the same seed; it can be generated from,
exported and used with ``--init-from``, not resumed.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from caloforge.conditioning import ConditionRanges, ConditionSpec
from caloforge.context import RunContext
from caloforge.errors import InputError
from caloforge.geometry import CylindricalGeometry
from caloforge.preprocess import ShowerPreprocessor
from caloforge.runconfig import RunConfig, run_config_from_dict

__all__ = [
    "CHECKPOINT_KEY",
    "FORMAT_VERSION",
    "CheckpointContent",
    "checkpoint_entry",
    "read_checkpoint",
    "write_sampler_checkpoint",
]

CHECKPOINT_KEY = "caloforge"
FORMAT_VERSION = 2
_READABLE = (1, 2)


@dataclass
class CheckpointContent:
    """What a checkpoint holds for generation.

    ``sampler_state`` is the state dict the family's sampler loads (``None`` when read with
    ``weights=False``); ``step`` the optimiser steps trained; ``format`` the file's format version;
    ``calibration`` the cell-spectrum calibration applied after the sampler (``caloforge calibrate``), if any.
    """

    config: RunConfig
    context: RunContext
    sampler_state: dict[str, Tensor] | None = None
    step: int = 0
    format: int = FORMAT_VERSION
    calibration: dict[str, Any] | None = None

    @property
    def family(self) -> str:
        return self.config.family

    @property
    def geometry(self) -> CylindricalGeometry:
        return self.context.geometry

    @property
    def preprocessor(self) -> ShowerPreprocessor:
        return self.context.preprocessor

    @property
    def spec(self) -> ConditionSpec:
        return self.context.spec

    @property
    def ranges(self) -> ConditionRanges:
        return self.context.ranges


def checkpoint_entry(
    config: RunConfig, context: RunContext, sampler_state: dict[str, Tensor],
    calibration: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``caloforge`` entry of a checkpoint (module doc)."""
    entry = {
        "format": FORMAT_VERSION,
        "family": config.family,
        "config": config.to_dict(),
        "context": context.to_dict(),
        "sampler": {name: tensor.detach().cpu() for name, tensor in sampler_state.items()},
    }
    if calibration is not None:
        entry["calibration"] = calibration
    return entry


def _format1_config(data: dict[str, Any]) -> dict[str, Any]:
    """A format-1 RunConfig dict (sections model, layers, diffusion, preprocess, optim, train, sample) in
    format 2's layout: the DiT's sections move under ``model``."""
    data = dict(data)
    model = {"dit": data.pop("model", {})}
    for section in ("layers", "diffusion", "sample"):
        if section in data:
            model[section] = data.pop(section)
    return {"family": "edm-dit", "model": model, **data}


def _format1_weights(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The EMA weights of a format-1 ``state_dict``, named as the edm-dit sampler's."""
    renamed = {"ema.": "denoiser.", "layer_ema.": "layer_denoiser."}
    return {
        new + key.removeprefix(old): value
        for key, value in state.items()
        for old, new in renamed.items()
        if key.startswith(old)
    }


def read_checkpoint(path: str | PathLike[str], weights: bool = True) -> CheckpointContent:
    """Read a caloforge checkpoint (format 1 or 2); raises ``InputError`` naming what is missing or
    malformed."""
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, OSError, pickle.UnpicklingError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise InputError(
            path, None, f"cannot be read as a checkpoint ({error})",
            "a model.ckpt written by 'caloforge train'",
        ) from None
    if not isinstance(checkpoint, dict) or CHECKPOINT_KEY not in checkpoint:
        raise InputError(path, CHECKPOINT_KEY, "is missing", "a checkpoint written by 'caloforge train'")
    entry = checkpoint[CHECKPOINT_KEY]
    version = entry.get("format") if isinstance(entry, dict) else None
    if version not in _READABLE:
        raise InputError(path, f"{CHECKPOINT_KEY}.format", f"is {version!r}",
                         f"one of {', '.join(map(str, _READABLE))} (a newer caloforge wrote it?)")
    try:
        if version == 1:
            config = run_config_from_dict(_format1_config(entry["config"]), path)
            context = RunContext.from_dict(entry)
            state = _format1_weights(checkpoint.get("state_dict", {})) if weights else None
        else:
            config = run_config_from_dict(entry["config"], path)
            context = RunContext.from_dict(entry["context"])
            state = dict(entry["sampler"]) if weights else None
        calibration = entry.get("calibration")
    except (KeyError, TypeError) as error:
        raise InputError(
            path, CHECKPOINT_KEY, f"lacks or mangles {error}", "a complete caloforge entry"
        ) from None
    if state is not None and not state:
        raise InputError(path, CHECKPOINT_KEY, "holds no sampler weights", "a checkpoint of a trained model")
    if calibration is not None and not isinstance(calibration, dict):
        raise InputError(path, f"{CHECKPOINT_KEY}.calibration", f"is a {type(calibration).__name__}",
                         "a calibration table written by 'caloforge calibrate'")
    return CheckpointContent(config, context, state, int(checkpoint.get("global_step", 0)), int(version),
                             calibration)


def write_sampler_checkpoint(content: CheckpointContent, path: str | PathLike[str]) -> Path:
    """Write ``content`` (read with weights, any format) as a slim format-2 checkpoint: the ``caloforge``
    entry and the step count, no optimiser or loop state. It generates and exports like the full one (a
    fraction of its size: what the package ships), but cannot be resumed; ``--init-from`` takes it."""
    from caloforge.io import atomic_output

    if content.sampler_state is None:
        raise InputError(None, "sampler weights", "were not read", "read_checkpoint(path, weights=True)")
    target = Path(path)
    with atomic_output(target) as tmp:
        entry = checkpoint_entry(content.config, content.context, content.sampler_state, content.calibration)
        torch.save({CHECKPOINT_KEY: entry, "global_step": content.step}, tmp)
    return target
