"""Weight averaging shared by every family: an exponential moving average through
``torch.optim.swa_utils.AveragedModel``.

The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates, so early averages are not dominated by
the initial weights. The average starts as a copy of the module (update 0), so update n follows optimiser
step n.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

__all__ = ["exponential_average"]


def exponential_average(module: nn.Module, decay: float) -> AveragedModel:
    """An ``AveragedModel`` of ``module`` (a copy, no gradients); call ``update_parameters(module)`` after
    each optimiser step. ``.module`` is the averaged network."""

    def update(
        averaged: list[Tensor] | tuple[Tensor, ...], current: list[Tensor] | tuple[Tensor, ...],
        n_averaged: Tensor | int,
    ) -> None:
        n = int(n_averaged)
        # One multi-tensor op: ~100 small lerps cost more in dispatch than in arithmetic.
        torch._foreach_lerp_(list(averaged), list(current), 1 - min(decay, (1 + n) / (10 + n)))

    average = AveragedModel(module, multi_avg_fn=update, use_buffers=False)
    average.update_parameters(module)  # n_averaged 0 -> 1: a plain copy
    return average.requires_grad_(False)
