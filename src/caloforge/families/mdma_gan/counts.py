"""p(n_hits | conditions): the hit count drawn before the hits, from one uniform number.

A piecewise-uniform density over [0, max_hits + 1) in ``bins`` equal bins, the bin probabilities the softmax
of a small MLP of the condition vector (energy, angles, detector); trained by maximum likelihood (the
cross-entropy of the true count's bin). Drawing inverts its CDF: u in [0, 1) picks the bin whose cumulative
probability first exceeds u, and u's place inside that bin's probability places n inside the bin, so one
uniform number per shower gives a continuous draw, n = floor(x) (module ``draw``; no Python branching,
ONNX-traceable).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["HitCountModel"]


class HitCountModel(nn.Module):
    """Categorical-over-bins model of the hit count.

    Args:
        cond_dim: length of the condition vector.
        max_hits: largest count (the sampler's hit slots).
        bins: number of equal bins over [0, max_hits + 1) (at most max_hits + 1).
        width: hidden width of the MLP.
    """

    def __init__(self, cond_dim: int, max_hits: int, bins: int, width: int) -> None:
        super().__init__()
        self.max_hits = int(max_hits)
        self.bins = max(1, min(int(bins), self.max_hits + 1))
        self.bin_width = (self.max_hits + 1) / self.bins
        self.net = nn.Sequential(nn.Linear(cond_dim, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, self.bins))

    def logits(self, cond: Tensor) -> Tensor:
        """cond (N, C) -> bin logits (N, bins)."""
        return self.net(cond)

    def bin_of(self, n_hits: Tensor) -> Tensor:
        """Counts (N,) -> their bins (N,) int64."""
        return torch.floor(n_hits.to(torch.float32) / self.bin_width).long().clamp(0, self.bins - 1)

    def loss(self, cond: Tensor, n_hits: Tensor) -> Tensor:
        """Mean negative log-likelihood (nats, up to the constant ln bin_width) of the counts (N,)."""
        return F.cross_entropy(self.logits(cond), self.bin_of(n_hits))

    def draw(self, cond: Tensor, u: Tensor) -> Tensor:
        """cond (N, C), u (N,) uniform on [0, 1) -> counts (N,) float (whole numbers in [0, max_hits]),
        non-decreasing in u for fixed cond."""
        u = u.clamp(1e-7, 1 - 1e-7)  # u = 0 exactly would pick a first bin of vanishing probability
        p = torch.softmax(self.logits(cond), dim=-1)  # (N, K)
        cdf = torch.cumsum(p, dim=-1)  # (N, K)
        k = (cdf <= u[:, None]).long().sum(-1).clamp(max=self.bins - 1)  # (N,)
        p_k = p.gather(1, k[:, None])[:, 0]
        below = cdf.gather(1, k[:, None])[:, 0] - p_k  # (N,) probability of the bins before k
        inside = ((u - below) / p_k.clamp(min=1e-12)).clamp(0.0, 1.0 - 1e-6)  # (N,) place inside bin k
        x = (k.to(u.dtype) + inside) * self.bin_width
        return torch.floor(x).clamp(0, self.max_hits)
