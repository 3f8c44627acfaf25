"""A small causal transformer (nanoGPT-style: Radford et al. 2019; Karpathy's nanoGPT ``model.py``) over
token sequences made of contiguous segments with their own vocabularies, conditioned by a prefix token.

The sequence has S tokens, split into segments ``(vocab_size, length)``, e.g. two digits of E_tot / E_inc
over 32 levels each, then 96 codes of a 256-code book. Each segment has its own token embedding and
output head; position embeddings are learned. The condition vector (N, cond_dim) becomes the first input
position (a learned projection), so the model predicts token t from the condition and tokens < t:

    input  = [cond, tok_0, ..., tok_{S-2}]        logits_t = p(tok_t | cond, tok_<t)

``forward`` runs the whole sequence with a causal mask (training); ``step`` runs one position with a
key/value cache (generation: each step costs one position's work instead of the whole prefix).
The backbone knows nothing of how tokens are drawn (``caloforge.families.vq_gpt.tokens``).
Reading order: blocks, the model, named sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from caloforge.errors import InputError, UnknownNameError

__all__ = ["GPT", "GPT_SIZES", "GPTConfig", "GPTSize", "KVCache"]

KVCache = list[tuple[Tensor, Tensor]]  # per block: keys and values (N, H, t, D / H)


# ---- blocks -----------------------------------------------------------------------------------------------
class CausalSelfAttention(nn.Module):
    """Multi-head self-attention; causal over a whole sequence, or one new position against a cache."""

    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.n_heads, self.dropout = n_heads, dropout

    def _heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        shape = (n, t, self.n_heads, d // self.n_heads)
        q, k, v = (a.reshape(shape).transpose(1, 2) for a in (q, k, v))
        return q, k, v

    def forward(self, x: Tensor) -> Tensor:
        """x (N, S, D) -> (N, S, D), position s attending to positions <= s."""
        q, k, v = self._heads(x)  # (N, H, S, D / H)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(x.shape))

    def step(self, x: Tensor, cache: tuple[Tensor, Tensor] | None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x (N, 1, D), the keys/values of earlier positions (N, H, t, D / H) -> (N, 1, D), the cache with
        this position appended. Plain matmul and softmax (no mask needed: the cache holds only the past)."""
        q, k, v = self._heads(x)
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        att = torch.softmax(q @ k.transpose(2, 3) / math.sqrt(q.shape[-1]), dim=-1)  # (N, H, 1, t + 1)
        y = (att @ v).transpose(1, 2).reshape(x.shape)
        return self.proj(y), (k, v)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, dim: int, n_heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, n_heads, dropout)
        self.ln2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim),
                                 nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))  # (N, S, D)

    def step(self, x: Tensor, cache: tuple[Tensor, Tensor] | None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        h, cache = self.attn.step(self.ln1(x), cache)
        x = x + h
        return x + self.mlp(self.ln2(x)), cache  # (N, 1, D)


# ---- the model --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GPTSize:
    """Width D, blocks, attention heads and MLP width / D of a GPT."""

    dim: int
    depth: int
    n_heads: int
    mlp_ratio: float = 4.0


@dataclass
class GPTConfig:
    """The stage-2 prior.

    Args:
        size: key of ``GPT_SIZES``; ``dim``, ``depth``, ``n_heads`` override it.
        dropout: dropout in attention and MLP (training only).
    """

    size: str = "small"
    dim: int | None = None
    depth: int | None = None
    n_heads: int | None = None
    dropout: float = 0.0

    def resolved(self) -> GPTSize:
        """The size after overrides (an unknown preset raises ``UnknownNameError``)."""
        if self.size not in GPT_SIZES:
            raise UnknownNameError("GPT size", self.size, GPT_SIZES)
        base = GPT_SIZES[self.size]
        size = replace(base, dim=self.dim or base.dim, depth=self.depth or base.depth,
                       n_heads=self.n_heads or base.n_heads)
        if size.dim % size.n_heads:
            raise InputError(None, "model.gpt.dim", f"is {size.dim}",
                             f"a multiple of n_heads ({size.n_heads})")
        return size


class GPT(nn.Module):
    """Causal transformer over segmented token sequences, conditioned by a prefix (module doc).

    Args:
        config: sizes.
        cond_dim: length of the condition vector.
        segments: ((vocab_size, length), ...) in sequence order; S = total length.
    """

    def __init__(self, config: GPTConfig, cond_dim: int, segments: tuple[tuple[int, int], ...]) -> None:
        super().__init__()
        size = config.resolved()
        self.segments = tuple((int(v), int(n)) for v, n in segments)
        self.length = sum(n for _, n in self.segments)
        # segment index of each position's token (static: generation loops are unrolled over it)
        self.kind_of: tuple[int, ...] = tuple(k for k, (_, n) in enumerate(self.segments) for _ in range(n))
        self.cond = nn.Linear(cond_dim, size.dim)
        self.embed = nn.ModuleList(nn.Embedding(v, size.dim) for v, _ in self.segments)
        self.position = nn.Parameter(torch.zeros(self.length, size.dim))
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(size.dim, size.n_heads, size.mlp_ratio, config.dropout)
                                    for _ in range(size.depth))
        self.ln = nn.LayerNorm(size.dim)
        self.heads = nn.ModuleList(nn.Linear(size.dim, v) for v, _ in self.segments)
        self.apply(self._init)
        nn.init.normal_(self.position, std=0.02)

    @staticmethod
    def _init(module: nn.Module) -> None:
        # nanoGPT's initialisation: N(0, 0.02) weights, zero biases.
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def input(self, position: int, cond: Tensor | None = None, token: Tensor | None = None) -> Tensor:
        """The input vector (N, 1, D) at ``position``: the condition's projection at 0, else the embedding
        of token ``position - 1`` (N,) int64, plus the position embedding."""
        if position == 0:
            assert cond is not None
            x = self.cond(cond)
        else:
            assert token is not None
            x = self.embed[self.kind_of[position - 1]](token)
        return (x + self.position[position])[:, None]

    def forward(self, cond: Tensor, tokens: Tensor) -> list[Tensor]:
        """cond (N, cond_dim), tokens (N, S) int64 -> logits per segment, [(N, length_k, vocab_k), ...],
        the logits at position t predicting token t from the condition and tokens < t."""
        parts = [self.cond(cond)[:, None]]  # (N, 1, D)
        start = 0
        for embed, (_, n) in zip(self.embed, self.segments, strict=True):
            parts.append(embed(tokens[:, start : start + n]))
            start += n
        x = torch.cat(parts, dim=1)[:, : self.length] + self.position  # (N, S, D)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x)
        x = self.ln(x)
        logits, start = [], 0
        for head, (_, n) in zip(self.heads, self.segments, strict=True):
            logits.append(head(x[:, start : start + n]))
            start += n
        return logits

    def step(self, x: Tensor, position: int, cache: KVCache | None) -> tuple[Tensor, KVCache]:
        """One position: input x (N, 1, D) (``input``) and the cache of positions < ``position`` -> logits
        (N, vocab) of the token at ``position`` and the cache extended by it."""
        new_cache: KVCache = []
        for k, block in enumerate(self.blocks):
            assert isinstance(block, Block)
            x, entry = block.step(x, None if cache is None else cache[k])
            new_cache.append(entry)
        head = self.heads[self.kind_of[position]]
        return head(self.ln(x)[:, 0]), new_cache


# ---- named sizes ------------------------------------------------------------------------------------------
GPT_SIZES: dict[str, GPTSize] = {
    "tiny": GPTSize(dim=16, depth=1, n_heads=2, mlp_ratio=2.0),  # tests
    "small": GPTSize(dim=128, depth=4, n_heads=4),  # CPU in an hour
    "base": GPTSize(dim=256, depth=8, n_heads=8),  # GPU
}
