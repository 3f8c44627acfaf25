"""Adapting a trained model to a new detector: which weights train (``adapt.method`` of the run config).

* ``full``: every weight (the default of every run);
* ``bias``: only the biases (BitFit, Ben Zaken et al., arXiv 2106.10199): every weight matrix stays the
  pre-trained one;
* ``lora``: every ``nn.Linear`` weight W (out, in) of the generating networks becomes W + (alpha / r) B A
  with A (r, in) and B (out, r) the only trained weights (LoRA, Hu et al., arXiv 2106.09685; B starts at
  zero, so training starts from the pre-trained model). Convolutions keep their weights.

The low-rank terms are ``torch.nn.utils.parametrize`` parametrizations, so a network's forward pass is
unchanged code. A sampler never sees them: ``merged_state_dict`` folds each W + (alpha / r) B A into a plain
``weight``, which is what checkpoints hand to samplers and exports (one checkpoint format whatever the
method). Only the networks that generate (those with a weight average in ``FamilyModule``) are adapted;
a GAN's critic, for instance, trains fully.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

__all__ = ["ADAPT_METHODS", "LowRankUpdate", "add_adapters", "merged_state_dict", "trainable_count"]

ADAPT_METHODS = ("full", "bias", "lora")
_ORIGINAL = ".parametrizations.weight.original"
_UPDATE = ".parametrizations.weight.0."


class LowRankUpdate(nn.Module):
    """The parametrization W -> W + scale B A of a weight (out, in): ``down`` A (rank, in), ``up`` B
    (out, rank), ``scale`` = alpha / rank (a buffer, so a state dict alone can be merged)."""

    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float) -> None:
        super().__init__()
        self.down = nn.Parameter(torch.empty(rank, in_features))
        self.up = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))  # nn.Linear's own initialisation
        self.scale: Tensor
        self.register_buffer("scale", torch.tensor(alpha / rank))

    def forward(self, weight: Tensor) -> Tensor:
        return weight + self.scale * (self.up @ self.down)


def add_adapters(network: nn.Module, method: str, rank: int = 8, alpha: float = 16.0) -> None:
    """Set which weights of ``network`` train under ``method`` (``ADAPT_METHODS``; module doc), adding
    the low-rank updates for ``lora``. Weights that do not train get ``requires_grad = False``."""
    if method not in ADAPT_METHODS:
        raise ValueError(f"adapt.method is '{method}'; expected one of {', '.join(ADAPT_METHODS)}")
    if method == "full":
        return
    if method == "lora":
        for module in list(network.modules()):
            if isinstance(module, nn.Linear) and not parametrize.is_parametrized(module, "weight"):
                out_features, in_features = module.weight.shape
                update = LowRankUpdate(out_features, in_features, rank, alpha).to(module.weight)
                parametrize.register_parametrization(module, "weight", update)
    for name, parameter in network.named_parameters():
        if method == "bias":
            parameter.requires_grad_(name.endswith("bias"))
        else:
            parameter.requires_grad_(_UPDATE in name)


def trainable_count(network: nn.Module) -> tuple[int, int]:
    """(trained, total) numbers of weights of ``network``, the low-rank updates counted as trained and not
    in the total (the total is the merged network's)."""
    trained = sum(p.numel() for p in network.parameters() if p.requires_grad)
    total = sum(p.numel() for n, p in network.named_parameters() if _UPDATE not in n)
    return trained, total


def merged_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state`` with every low-rank parametrization folded into a plain ``weight`` (W + scale B A under the
    module's own ``weight`` key); a state without parametrizations is returned as it is."""
    if not any(_ORIGINAL in key for key in state):
        return state
    merged: dict[str, Tensor] = {}
    for key, value in state.items():
        if _ORIGINAL in key:
            prefix = key.removesuffix(_ORIGINAL)
            up, down = state[prefix + _UPDATE + "up"], state[prefix + _UPDATE + "down"]
            scale = state[prefix + _UPDATE + "scale"]
            merged[prefix + ".weight"] = (value + scale * (up @ down)).to(value.dtype)
        elif _UPDATE not in key:
            merged[key] = value
    return merged
