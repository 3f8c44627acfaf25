"""Mean-field attention networks over point clouds (MDMA: Buss, Kasieczka et al., "Mean-field attention"
for calorimeter point clouds, CaloChallenge 2024 entry), a generator and a critic.

A set of M hits (B, M, D), of which ``mask`` (B, M) marks the real ones, exchanges information only through
one learned mean-field vector per set (B, D):

* the mean field queries the hits with multi-head cross-attention (masked; a learned "null" hit is always
  attended, so a set with no hit is well defined and padding never enters the softmax), then an MLP of
  [attention output, mean field, condition] updates it;
* every hit is updated by the same per-hit MLP of [hit, mean field, condition].

So a block costs O(M D) instead of attention's O(M^2 D), hits are permutation equivariant, and anything read
off the mean field is permutation invariant. The backbones know no objective: the ``mdma-gan`` family's
module owns the WGAN-GP losses. File layout: helpers, blocks, the two models, then named size presets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from caloforge.errors import InputError, UnknownNameError

__all__ = [
    "MEAN_FIELD_SIZES",
    "MeanFieldAttention",
    "MeanFieldBlock",
    "MeanFieldConfig",
    "MeanFieldCritic",
    "MeanFieldGenerator",
    "MeanFieldSize",
]


# ---- helpers ----------------------------------------------------------------------------------------------
def _mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    """Linear, LeakyReLU(0.2), Linear (LeakyReLU as in most WGAN critics and generators)."""
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.LeakyReLU(0.2), nn.Linear(d_hidden, d_out))


def _weight_normalise(module: nn.Module) -> nn.Module:
    """Weight normalisation (Salimans & Kingma 2016) on every Linear of ``module``, in place."""
    for child in list(module.modules()):
        if isinstance(child, nn.Linear):
            weight_norm(child)
    return module


def _hit_mask(mask: Tensor, like: Tensor) -> Tensor:
    """mask (B, M) bool -> (B, M, 1) in ``like``'s dtype."""
    return mask.to(like.dtype)[..., None]


# ---- blocks -----------------------------------------------------------------------------------------------
class MeanFieldAttention(nn.Module):
    """Multi-head cross-attention of the mean field over the real hits plus a learned null hit.

    ``forward(mf, h, mask)``: mf (B, D), h (B, M, D), mask (B, M) bool -> (B, D). Invariant under any
    permutation of the hits (with their mask entries); padded hits get probability exactly 0.
    """

    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"hidden size {dim} is not divisible by {n_heads} heads")
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.query, self.key, self.value, self.out = (nn.Linear(dim, dim) for _ in range(4))
        self.null_key = nn.Parameter(torch.randn(n_heads, self.head_dim) * 0.02)
        self.null_value = nn.Parameter(torch.zeros(n_heads, self.head_dim))

    def forward(self, mf: Tensor, h: Tensor, mask: Tensor) -> Tensor:
        heads = (self.n_heads, self.head_dim)
        scale = 1.0 / math.sqrt(self.head_dim)
        q = self.query(mf).unflatten(-1, heads)  # (B, H, dh)
        k = self.key(h).unflatten(-1, heads)  # (B, M, H, dh)
        v = self.value(h).unflatten(-1, heads)  # (B, M, H, dh)
        scores = (k * q[:, None]).sum(-1) * scale  # (B, M, H)
        scores = scores.masked_fill(~mask[..., None], float("-inf"))
        null = (self.null_key * q).sum(-1)[:, None] * scale  # (B, 1, H)
        p = torch.softmax(torch.cat([null, scores], dim=1), dim=1)  # (B, 1 + M, H)
        pooled = p[:, 0, :, None] * self.null_value + (p[:, 1:, :, None] * v).sum(1)  # (B, H, dh)
        return self.out(pooled.flatten(1))  # (B, D)


class MeanFieldBlock(nn.Module):
    """One mean-field update then one per-hit update (module doc), both residual.

    ``forward(h, mf, mask, cond)``: h (B, M, D), mf (B, D), mask (B, M) bool, cond (B, C) ->
    (h (B, M, D) with padded hits zero, mf (B, D)).
    """

    def __init__(self, dim: int, n_heads: int, cond_dim: int) -> None:
        super().__init__()
        self.attention = MeanFieldAttention(dim, n_heads)
        self.field = _mlp(2 * dim + cond_dim, 2 * dim, dim)
        # the per-hit MLP's first layer split into its hit part and its (mean field, condition) part, so
        # the latter is computed once per set and broadcast, not copied to every hit
        self.hit_in = nn.Linear(dim, 2 * dim)
        self.context_in = nn.Linear(dim + cond_dim, 2 * dim, bias=False)
        self.hit_out = nn.Sequential(nn.LeakyReLU(0.2), nn.Linear(2 * dim, dim))

    def forward(self, h: Tensor, mf: Tensor, mask: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        pooled = self.attention(mf, h, mask)  # (B, D)
        mf = mf + self.field(torch.cat([pooled, mf, cond], dim=1))  # (B, D)
        context = self.context_in(torch.cat([mf, cond], dim=1))  # (B, 2D)
        h = h + self.hit_out(self.hit_in(h) + context[:, None])  # (B, M, D)
        return h * _hit_mask(mask, h), mf


# ---- the models -------------------------------------------------------------------------------------------
class MeanFieldGenerator(nn.Module):
    """Latent hits -> hit features, given the set's condition.

    ``forward(z, mask, cond)``: z (B, M, latent) standard normal, mask (B, M) bool (the real hits),
    cond (B, C) -> hits (B, M, n_features), zero where ``mask`` is False. Permutation equivariant.
    """

    def __init__(self, config: MeanFieldConfig, cond_dim: int, n_features: int) -> None:
        super().__init__()
        size = config.resolved()
        d = size.hidden
        self.latent = size.latent
        self.embed = nn.Linear(size.latent, d)
        self.field0 = _mlp(cond_dim, d, d)
        self.blocks = nn.ModuleList(MeanFieldBlock(d, size.n_heads, cond_dim) for _ in range(size.depth))
        self.head = _mlp(d, d, n_features)

    def forward(self, z: Tensor, mask: Tensor, cond: Tensor) -> Tensor:
        h = self.embed(z) * _hit_mask(mask, z)  # (B, M, D)
        mf = self.field0(cond)  # (B, D)
        for block in self.blocks:
            h, mf = block(h, mf, mask, cond)
        return self.head(h) * _hit_mask(mask, z)  # (B, M, F)


class MeanFieldCritic(nn.Module):
    """Hit sets -> a WGAN critic score and the final mean field, both permutation invariant.

    ``forward(x, mask, cond)``: x (B, M, n_features), mask (B, M) bool, cond (B, C) ->
    (score (B,), mean field (B, D), the features of feature matching). Every Linear is weight-normalised.
    """

    def __init__(self, config: MeanFieldConfig, cond_dim: int, n_features: int) -> None:
        super().__init__()
        size = config.resolved()
        d = size.hidden
        self.embed = nn.Linear(n_features, d)
        self.field0 = _mlp(cond_dim, d, d)
        self.blocks = nn.ModuleList(MeanFieldBlock(d, size.n_heads, cond_dim) for _ in range(size.depth))
        self.readout = MeanFieldAttention(d, size.n_heads)  # so the last block's hit update is read too
        self.head = _mlp(d + cond_dim, d, 1)
        _weight_normalise(self)

    def forward(self, x: Tensor, mask: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        h = self.embed(x * _hit_mask(mask, x)) * _hit_mask(mask, x)  # (B, M, D)
        mf = self.field0(cond)  # (B, D)
        for block in self.blocks:
            h, mf = block(h, mf, mask, cond)
        mf = mf + self.readout(mf, h, mask)  # (B, D)
        return self.head(torch.cat([mf, cond], dim=1))[:, 0], mf


# ---- named sizes ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MeanFieldSize:
    """Hidden width D, blocks, attention heads, and per-hit latent size of the generator."""

    hidden: int
    depth: int
    n_heads: int
    latent: int


MEAN_FIELD_SIZES = {
    "tiny": MeanFieldSize(hidden=16, depth=1, n_heads=2, latent=4),  # tests: seconds on a CPU
    "small": MeanFieldSize(hidden=64, depth=3, n_heads=4, latent=8),  # dataset 2 on a CPU
    "base": MeanFieldSize(hidden=128, depth=5, n_heads=8, latent=16),  # one GPU
}


@dataclass
class MeanFieldConfig:
    """Generator and critic size: a name of ``MEAN_FIELD_SIZES`` and optional overrides (both networks
    take the same size).

    Args:
        size: key of ``MEAN_FIELD_SIZES``.
        hidden, depth, n_heads, latent: override the named size when set.
    """

    size: str = "small"
    hidden: int | None = None
    depth: int | None = None
    n_heads: int | None = None
    latent: int | None = None

    def resolved(self) -> MeanFieldSize:
        """The size after overrides; raises for an unknown name or sizes no network can take."""
        if self.size not in MEAN_FIELD_SIZES:
            raise UnknownNameError("mean-field size", self.size, MEAN_FIELD_SIZES)
        base = MEAN_FIELD_SIZES[self.size]
        size = replace(base, hidden=self.hidden or base.hidden, depth=self.depth or base.depth,
                       n_heads=self.n_heads or base.n_heads, latent=self.latent or base.latent)
        if min(size.hidden, size.depth, size.n_heads, size.latent) < 1 or size.hidden % size.n_heads:
            raise InputError(None, "model.net", f"has hidden {size.hidden}, depth {size.depth}, n_heads "
                             f"{size.n_heads}, latent {size.latent}",
                             "positive sizes with hidden divisible by n_heads")
        return size
