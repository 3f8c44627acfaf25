"""Mean-field attention networks over point clouds (MDMA: Buss, Kasieczka et al., "Mean-field attention"
for calorimeter point clouds, CaloChallenge 2024 entry), a generator and a critic.

N sets of hits are packed: all hits in one tensor (T, D), and ``seg`` (T,) int64, the set each hit belongs
to (so a batch costs its real hits only, never padding up to its largest set). The hits of a set exchange
information only through one learned mean-field vector per set (N, D):

* the mean field queries its hits with multi-head cross-attention (a per-set softmax; a learned "null" hit
  is always attended, so a set with no hit is well defined), then an MLP of [attention output, mean field,
  condition] updates it;
* every hit is updated by the same per-hit MLP of [hit, mean field of its set, condition].

So a block costs O(T D) instead of attention's O(M^2 D) per set, hits are permutation equivariant, and
anything read off the mean field is permutation invariant. Per-set sums are scatter-adds (ONNX ScatterND
with reduction add: ``scatter_rows``), so the networks export with a dynamic number of hits; sampling in
PyTorch sums by products with a sparse matrix instead (``summing_matrix``) and reads the attention scores
off one block-diagonal sparse product (``set_products``). The backbones
know no objective: the ``mdma-gan`` family's module owns the WGAN-GP losses. File layout: helpers,
blocks, the two models, then named size presets.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Any, cast

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
    "per_set_sum",
    "scatter_rows",
    "set_products",
    "summing_matrix",
]


# ---- helpers ----------------------------------------------------------------------------------------------
def _mlp(d_in: int, d_hidden: int, d_out: int, inplace: bool = False) -> nn.Sequential:
    """Linear, LeakyReLU(0.2), Linear (LeakyReLU as in most WGAN critics and generators); ``inplace``: the
    activation overwrites the first Linear's fresh output (for per-hit MLPs: a pass less over (T, hidden))."""
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.LeakyReLU(0.2, inplace=inplace),
                         nn.Linear(d_hidden, d_out))


def _weight_normalise(module: nn.Module) -> nn.Module:
    """Weight normalisation (Salimans & Kingma 2016) on every Linear of ``module``, in place."""
    for child in list(module.modules()):
        if isinstance(child, nn.Linear):
            weight_norm(child)
    return module


class _RowScatterAdd(torch.autograd.Function):
    """base (N, *S) with rows values (T, *S) added at rows index (T, 1) int64, exported as ONNX ScatterND
    with reduction add (opset >= 16): onnxruntime adds whole rows there, while ScatterElements (what
    ``scatter_add`` exports to) takes one index per element and ran 30x slower (49 ms against 1.5 ms for
    64,000 hits x 32 on one busy core). Used only while exporting (``scatter_rows``); no backward."""

    @staticmethod
    def forward(ctx: Any, base: Tensor, index: Tensor, values: Tensor) -> Tensor:
        return base.index_put((index[:, 0],), values, accumulate=True)

    @staticmethod
    def symbolic(g: Any, base: Any, index: Any, values: Any) -> Any:
        return g.op("ScatterND", base, index, values, reduction_s="add")


def _csr_index_dtype(n_values: int) -> torch.dtype:
    """The index dtype of a CSR matrix of ``n_values`` stored numbers: int32 below 2^31 (products with it
    ran 30 % faster than with int64 indices), else int64."""
    return torch.int32 if n_values < 2**31 else torch.int64


def _csr(crow: Tensor, columns: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    """A sparse CSR matrix of ``shape`` from its row offsets, column indices and values, unchecked (the
    callers build valid ones; checking costs a pass)."""
    with warnings.catch_warnings():  # PyTorch calls its CSR support beta; products with it are tested here
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)
        return torch.sparse_csr_tensor(crow, columns, values, shape, check_invariants=False)


def summing_matrix(counts: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """The (N, T) sparse CSR matrix of ones (``dtype``) whose row i sums set i's hits, for hits packed set
    after set (set i has counts[i] of them, counts (N,) int64, T = their sum: ``seg`` is
    repeat_interleave(arange(N), counts)).

    A product with it is a per-set sum 13x faster than a scatter-add: 0.07 against 0.91 ms for 63,000 hits
    x 16 into 100 sets on 2 threads (a COO matrix took 1.3 ms). Its indices are int32 below 2^31 hits
    (products 30 % faster than with int64: 0.080 against 0.114 ms for 76,000 hits x 16). For sampling in
    PyTorch only: no ONNX export, and training keeps the scatter-add (``scatter_rows``)."""
    n_hits = int(counts.sum())
    index = _csr_index_dtype(n_hits)
    crow = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)]).to(index)
    return _csr(crow, torch.arange(n_hits, dtype=index, device=counts.device),
                torch.ones(n_hits, dtype=dtype, device=counts.device), (counts.shape[0], n_hits))


def set_products(x: Tensor, seg: Tensor, weights: Tensor) -> Tensor:
    """Each row of x (T, F) times its set's matrix: weights (N, F, K), seg (T,) int64 the set of each row
    -> (T, K). For sampling in PyTorch: one product of the block-diagonal sparse matrix of the rows (T, N F;
    CSR over x's own numbers, int32 column indices) with the stacked matrices, reading each row once. (The
    attention's scores as per-hit keys times gathered queries took 2.3x as long: 0.84 against 0.37 ms for
    76,000 hits x 16 and 4 heads.)"""
    n_rows, n_in = x.shape
    index = _csr_index_dtype(n_rows * n_in)
    columns = (seg.to(index)[:, None] * n_in + torch.arange(n_in, dtype=index, device=x.device)).reshape(-1)
    rows = torch.arange(0, n_rows * n_in + 1, n_in, dtype=index, device=x.device)
    blocks = _csr(rows, columns, x.contiguous().reshape(-1), (n_rows, weights.shape[0] * n_in))
    return blocks @ weights.reshape(-1, weights.shape[-1])


def scatter_rows(base: Tensor, index: Tensor, values: Tensor, summing: Tensor | None = None) -> Tensor:
    """``base`` (N, *S) plus the rows of values (T, *S) summed into rows index (T,) int64 -> (N, *S).
    ``summing``: the batch's ``summing_matrix`` (sets packed in order), for 2-D values: the sum is a product
    with it."""
    if summing is not None:
        return torch.addmm(base, summing, values)
    if torch.onnx.is_in_onnx_export():
        return _RowScatterAdd.apply(base.contiguous(), index[:, None], values)
    return base.scatter_add(0, index.view(-1, *([1] * (values.dim() - 1))).expand_as(values), values)


def _folded(linear: nn.Linear, embed: nn.Linear | None) -> tuple[Tensor, Tensor]:
    """Weight and bias of ``linear`` applied to embed(x), as one affine map of x: (W A, W c + b) for embed
    x -> A x + c (``linear``'s own without ``embed``). A hit's input x has F < D numbers (the generator's
    latent, the critic's 5 features), so a product with the folded weight costs F/D of one with W."""
    if embed is None:
        return linear.weight, linear.bias
    return linear.weight @ embed.weight, linear.bias + linear.weight @ embed.bias


def per_set_sum(values: Tensor, seg: Tensor, sets: Tensor) -> Tensor:
    """Sum of per-hit rows over each set: values (T, *S), seg (T,) int64 -> (N, *S), N = len(sets) (any
    (N, ...) tensor of the batch; its length is taken from the graph, so an exported batch stays dynamic)."""
    zeros = torch.zeros_like(sets.reshape(sets.shape[0], -1)[:, :1])  # (N, 1)
    zeros = zeros.view(-1, *([1] * (values.dim() - 1))).expand(-1, *values.shape[1:])
    return scatter_rows(zeros, seg, values)


# ---- blocks -----------------------------------------------------------------------------------------------
class MeanFieldAttention(nn.Module):
    """Multi-head cross-attention of each set's mean field over its hits plus a learned null hit.

    ``forward(mf, h, seg, embed=None, summing=None)``: mf (N, D), h (T, D), seg (T,) int64 -> (N, D).
    Invariant under any permutation of the hits (with their ``seg`` entries). With ``embed`` (a Linear
    F -> D), h (T, F) is the embedding's input and the hits are embed(h) (``_folded``). ``summing``: the
    batch's ``summing_matrix`` when its hits are packed set after set (sums as products; ``scatter_rows``).
    """

    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"hidden size {dim} is not divisible by {n_heads} heads")
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.query, self.key, self.value, self.out = (nn.Linear(dim, dim) for _ in range(4))
        self.null_key = nn.Parameter(torch.randn(n_heads, self.head_dim) * 0.02)
        self.null_value = nn.Parameter(torch.zeros(n_heads, self.head_dim))
        # (D, H): column j sums head j's dh numbers (not weights: built from the sizes)
        self.register_buffer("head_sum", torch.eye(n_heads).repeat_interleave(self.head_dim, 0),
                             persistent=False)

    head_sum: Tensor

    def forward(self, mf: Tensor, h: Tensor, seg: Tensor, embed: nn.Linear | None = None,
                summing: Tensor | None = None) -> Tensor:
        # view(-1, H, dh), not unflatten: a constant shape, where unflatten exports as shape arithmetic
        # (Shape, Gather, Concat: nodes that cost onnxruntime microseconds each, which is most of a shower
        # at batch 1)
        heads = (-1, self.n_heads, self.head_dim)
        scale = 1.0 / math.sqrt(self.head_dim)
        q = self.query(mf).view(heads)  # (N, H, dh)
        # The hits' keys and values without their biases, which act per set instead (exactly): the key bias
        # adds b_k.q to every hit's score of a set, a shift of the softmax that the null hit's key absorbs
        # (null_key - b_k); the value bias adds b_v to the weighted mean of values whose null value is read
        # as null_value - b_v. Per-hit tensors are large: a bias pass over them cost as much time as the
        # product itself. (Two products, not one split in two: onnxruntime copies a split.)
        # Per-hit heads stay flat (T, D): a head's sum and a weight's spread over its dh numbers are products
        # with ``head_sum`` (T, D) x (D, H) and (T, H) x (H, D), which ran 10 % faster than reductions and
        # broadcasts over (T, H, dh) views (the same sums: products with ones and zeros).
        (w_k, b_k), (w_v, b_v) = (_folded(self.key, embed), _folded(self.value, embed))
        if summing is None:
            k = h @ w_k.T  # (T, D)
            scores = (k * q.flatten(1).index_select(0, seg)) @ (self.head_sum * scale)  # (T, H)
        else:  # the same scores, h (T, F) times its set's (F, H) matrix W_k^T diag(q) head_sum
            per_set = torch.einsum("df,nd,dh->nfh", w_k, q.flatten(1), self.head_sum * scale)  # (N, F, H)
            scores = set_products(h, seg, per_set)
        v = h @ w_v.T  # (T, D)
        null = ((self.null_key - b_k.view(heads[1:])) * q).sum(-1) * scale  # (N, H)
        # A softmax is unchanged by a constant shift within a set; one shift for all sets and heads (the
        # largest score) keeps exp() finite without a per-set maximum. The floor only matters if a whole
        # set's head scored ~80 below the batch's largest score: its weights then stay finite (and equal).
        # (A per-head maximum over the hits, a reduction across rows, took 14x the time of the whole one:
        # 0.66 against 0.047 ms for 72,575 hits x 4 heads.)
        shift = torch.cat([null.reshape(-1), scores.reshape(-1)]).amax().detach()  # (); also with no hits
        w_hits = torch.exp((scores - shift).clamp(min=-80.0))  # (T, H)
        w_null = torch.exp((null - shift).clamp(min=-80.0))  # (N, H)
        # the hits' sums are added onto the null hit's terms (no zeros to build)
        total = scatter_rows(w_null, seg, w_hits, summing)  # (N, H)
        null_value = self.null_value - b_v.view(heads[1:])  # (H, dh)
        pooled = scatter_rows((w_null[..., None] * null_value).flatten(1), seg,
                              (w_hits @ self.head_sum.T).mul_(v), summing)  # (N, D)
        return self.out((pooled.view(heads) / total[..., None]).flatten(1) + b_v)  # (N, D)


class MeanFieldBlock(nn.Module):
    """One mean-field update then one per-hit update (module doc), both residual.

    ``forward(h, mf, seg, cond, embed=None, summing=None)``: h (T, D), mf (N, D), seg (T,) int64, cond (N, C)
    -> (h (T, D), mf (N, D)) (``summing``: ``MeanFieldAttention``'s). With ``embed`` (a Linear F -> D),
    h (T, F) is the embedding's input and the block takes embed(h): the embedding is folded into the block's
    per-hit products (``_folded``), which then multiply F numbers a hit, not D, and embed(h) is never written
    out on its own.
    """

    def __init__(self, dim: int, n_heads: int, cond_dim: int) -> None:
        super().__init__()
        self.attention = MeanFieldAttention(dim, n_heads)
        self.field = _mlp(2 * dim + cond_dim, 2 * dim, dim)
        # the per-hit MLP's first layer split into its hit part and its (mean field, condition) part, so
        # the latter is computed once per set and gathered, not concatenated to every hit
        self.hit_in = nn.Linear(dim, 2 * dim)
        self.context_in = nn.Linear(dim + cond_dim, 2 * dim, bias=False)
        self.hit_out = nn.Sequential(nn.LeakyReLU(0.2, inplace=True), nn.Linear(2 * dim, dim))

    def forward(self, h: Tensor, mf: Tensor, seg: Tensor, cond: Tensor, embed: nn.Linear | None = None,
                summing: Tensor | None = None) -> tuple[Tensor, Tensor]:
        pooled = self.attention(mf, h, seg, embed, summing)  # (N, D)
        mf = mf + self.field(torch.cat([pooled, mf, cond], dim=1))  # (N, D)
        w_in, b_in = _folded(self.hit_in, embed)
        context = self.context_in(torch.cat([mf, cond], dim=1)) + b_in  # (N, 2D)
        # hit_in(h) + context of each hit's set in one pass: the gathered context is addmm's input term
        # (per-hit tensors are large and their elementwise passes, not the matmuls, bound a CPU's time)
        # (in place on fresh tensors: the gathered context and h + bias; neither is kept for the backward)
        hidden = context.index_select(0, seg).addmm_(h, w_in.T)  # (T, 2D)
        out, act = cast(nn.Linear, self.hit_out[1]), self.hit_out[0](hidden)
        if embed is None:  # the residual: h + hit_out(hidden)
            return (h + out.bias).addmm_(act, out.weight.T), mf  # (T, D)
        # embed(h) + hit_out(hidden)
        return torch.addmm(out.bias + embed.bias, act, out.weight.T).addmm_(h, embed.weight.T), mf


# ---- the models -------------------------------------------------------------------------------------------
class MeanFieldGenerator(nn.Module):
    """Latent hits -> hit features, given each set's condition.

    ``forward(z, seg, cond, summing=None)``: z (T, latent) standard normal, one row per hit, seg (T,) int64
    the set of each hit, cond (N, C) -> hits (T, n_features). Permutation equivariant. ``summing``: the
    batch's ``summing_matrix`` when its hits are packed set after set (faster sums; sampling only).
    """

    def __init__(self, config: MeanFieldConfig, cond_dim: int, n_features: int) -> None:
        super().__init__()
        size = config.resolved()
        d = size.hidden
        self.latent = size.latent
        self.embed = nn.Linear(size.latent, d)
        self.field0 = _mlp(cond_dim, d, d)
        self.blocks = nn.ModuleList(MeanFieldBlock(d, size.n_heads, cond_dim) for _ in range(size.depth))
        self.head = _mlp(d, d, n_features, inplace=True)  # per hit: 0.82 against 0.94 ms for 73,000 hits

    def forward(self, z: Tensor, seg: Tensor, cond: Tensor, summing: Tensor | None = None) -> Tensor:
        mf = self.field0(cond)  # (N, D)
        # the first block takes embed(z), folded
        h, mf = self.blocks[0](z, mf, seg, cond, self.embed, summing)
        for block in self.blocks[1:]:
            h, mf = block(h, mf, seg, cond, summing=summing)  # (T, D)
        return self.head(h)  # (T, F)


class MeanFieldCritic(nn.Module):
    """Hit sets -> a WGAN critic score and the final mean field, both permutation invariant.

    ``forward(x, seg, cond)``: x (T, n_features), seg (T,) int64, cond (N, C) -> (score (N,), mean field
    (N, D), the features of feature matching). Every Linear is weight-normalised.
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

    def forward(self, x: Tensor, seg: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        mf = self.field0(cond)  # (N, D)
        h, mf = self.blocks[0](x, mf, seg, cond, self.embed)  # the first block takes embed(x), folded
        for block in self.blocks[1:]:
            h, mf = block(h, mf, seg, cond)  # (T, D)
        mf = mf + self.readout(mf, h, seg)  # (N, D)
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
