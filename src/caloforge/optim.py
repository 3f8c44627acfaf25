"""Optimiser and learning-rate schedule shared by every family: AdamW, linear warm-up, cosine decay.

The schedule is a torch ``LambdaLR`` whose factor is a pure function of the step and of the fraction of
the time budget spent (``lr_factor``), so a time-budgeted run still anneals to its floor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from caloforge.errors import InputError

__all__ = ["SCHEDULES", "OptimConfig", "build_optimizer", "build_scheduler", "lr_factor"]

SCHEDULES = ("cosine", "constant")


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay to ``lr * min_lr_factor``.

    The decay follows training progress: the larger of step / max_steps and elapsed / max_minutes, so a
    time-budgeted run still anneals.
    """

    lr: float = 5e-4
    weight_decay: float = 0.0
    warmup_steps: int = 200
    min_lr_factor: float = 0.05
    schedule: str = "cosine"  # or "constant"

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise InputError(None, "optim.schedule", f"is '{self.schedule}'", "'cosine' or 'constant'")


def lr_factor(step: int, progress: float, config: OptimConfig) -> float:
    """The learning rate at optimiser step ``step`` as a fraction of ``config.lr``.

    ``progress`` in [0, 1] is how far training is (module doc); warm-up is linear over the first
    ``warmup_steps`` steps, then the factor decays along a half cosine to ``min_lr_factor``.
    """
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return 1.0
    floor = config.min_lr_factor
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def build_optimizer(
    parameters: Iterable[nn.Parameter], config: OptimConfig, precision: str = "32-true"
) -> torch.optim.AdamW:
    """AdamW over ``parameters``. At full precision the fused kernel (CPU and CUDA) updates every tensor in
    one pass, ~7 % less time per step for the CPU DiT, whose ~100 parameter tensors are small; under mixed
    ``precision`` (``train.precision``) Lightning clips gradients itself, which it refuses for a fused
    optimizer, so the plain one is used."""
    fused = precision in ("32-true", "32", "64-true", "64")
    return torch.optim.AdamW(list(parameters), lr=config.lr, weight_decay=config.weight_decay, fused=fused)


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: OptimConfig, progress: Callable[[int], float]
) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` setting lr = config.lr x ``lr_factor(step, progress(step))``, stepped once per step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, progress(step), config)
    )
