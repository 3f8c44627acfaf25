"""Tokens of the prior and how they are drawn, as small pure torch functions (ONNX-traceable).

* E_tot / E_inc as digitised tokens (``RatioTokens``): ln R is placed on ``base ** digits`` equal levels
  over ln(mean R) +- ln(span), written as ``digits`` base-``base`` digits, most significant first, so the
  prior draws the coarse value before the fine one. Decoding puts a uniform draw inside the level, so the
  generated R is continuous.
* Drawing a token from logits with a uniform number u (``draw``): temperature, then top-k and top-p
  (nucleus, Holtzman et al. 2019) filtering of the probabilities, then the inverse CDF at u. All
  randomness is u, so the sampler is a deterministic function of its noise inputs (exportable, and the
  same noise gives the same showers in PyTorch and onnxruntime).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["RatioTokens", "draw", "filter_probabilities", "inverse_cdf"]


class RatioTokens:
    """R = E_tot / E_inc <-> ``digits`` tokens in [0, base).

    Args:
        mean_ratio: the centre of the range (the training set's mean R, from the run's context).
        span: R covers [mean / span, mean x span]; values outside are clamped to the end levels.
        base, digits: ``base ** digits`` levels in ln R.
    """

    def __init__(self, mean_ratio: float, span: float, base: int, digits: int) -> None:
        self.base, self.digits = int(base), int(digits)
        self.levels = self.base**self.digits
        centre = math.log(max(float(mean_ratio), 1e-12))
        self.log_lo, self.log_width = centre - math.log(span), 2 * math.log(span)

    def encode(self, ratio: Tensor) -> Tensor:
        """ratio (N,) -> tokens (N, digits) int64, most significant digit first."""
        position = (torch.log(ratio.clamp(min=1e-30)) - self.log_lo) / self.log_width * self.levels
        level = position.floor().clamp(0, self.levels - 1).long()  # (N,)
        powers = torch.tensor([self.base ** (self.digits - 1 - i) for i in range(self.digits)],
                              device=ratio.device)
        return torch.div(level[:, None], powers, rounding_mode="floor") % self.base

    def decode(self, tokens: Tensor, u: Tensor) -> Tensor:
        """tokens (N, digits) int64 and u (N,) uniform in [0, 1) (the place inside the level) -> R (N,)."""
        level = tokens[:, 0].to(u.dtype)
        for i in range(1, self.digits):
            level = level * self.base + tokens[:, i].to(u.dtype)
        return torch.exp(self.log_lo + (level + u) / self.levels * self.log_width)


def filter_probabilities(
    logits: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> Tensor:
    """logits (N, V) -> unnormalised probabilities (N, V) after temperature, top-k (keep the k most likely;
    0 = all) and top-p (keep the most likely tokens whose cumulative probability first reaches p; 1 = all).

    Written with TopK/Sort, CumSum, Gather and Where only (ONNX opset 17); ties at a cut are kept.
    """
    probs = torch.softmax(logits / temperature, dim=-1)  # (N, V)
    zero = torch.zeros_like(probs)
    if 0 < top_k < probs.shape[-1]:
        kth = torch.topk(probs, top_k, dim=-1).values[:, -1:]  # (N, 1)
        probs = torch.where(probs < kth, zero, probs)
    if top_p < 1.0:
        ordered = torch.sort(probs, dim=-1, descending=True).values  # (N, V)
        before = torch.cumsum(ordered, dim=-1) - ordered  # mass strictly more likely than each
        total = ordered.sum(dim=-1, keepdim=True)
        n_keep = (before < top_p * total).sum(dim=-1, keepdim=True).clamp(min=1)  # (N, 1), >= 1
        cut = torch.gather(ordered, 1, n_keep - 1)  # (N, 1) the least likely token kept
        probs = torch.where(probs < cut, zero, probs)
    return probs


def inverse_cdf(probs: Tensor, u: Tensor) -> Tensor:
    """Token (N,) int64 drawn from unnormalised probabilities (N, V) with u (N,) uniform in [0, 1): the
    first index whose cumulative probability exceeds u x total (tokens of probability 0 are never drawn)."""
    cdf = torch.cumsum(probs, dim=-1)  # (N, V)
    below = (cdf <= u[:, None] * cdf[:, -1:]).to(torch.int64)
    return below.sum(dim=-1).clamp(max=probs.shape[-1] - 1)


def draw(logits: Tensor, u: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """One token (N,) int64 per row of logits (N, V) from u (N,) uniform (module doc)."""
    return inverse_cdf(filter_probabilities(logits, temperature, top_k, top_p), u)
