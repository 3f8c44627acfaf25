"""Autoregressive normalizing flows: MADE-masked affine or spline transforms stacked into MAF and IAF flows.

MAF (Papamakarios et al., arXiv 1705.07057) and IAF (Kingma et al., arXiv 1606.04934) share one building
block, an affine autoregressive transform whose parameters come from a MADE (Germain et al., arXiv
1502.03509) that reads the transform's *input*::

    v_i = u_i exp(s_i(u_<i, c)) + m_i(u_<i, c)          (one network pass: ``fast``)
    u_i = (v_i - m_i(u_<i, c)) exp(-s_i(u_<i, c))      (dimension by dimension, D passes: ``slow``)

``<i`` means "earlier in the transform's autoregressive order" and ``c`` is a context (condition) vector.
A MAF runs ``fast`` from data x to latent z, so its density is one pass per transform and its sampling D
passes; an IAF runs ``fast`` from z to x, so it samples in one pass and needs D passes for a density. That
is CaloFlow's teacher-student pair (Krause & Shih, arXiv 2110.11377, "CaloFlow II"): a MAF teacher with
exact, fast likelihood, an IAF student with fast sampling distilled from it. Transform k of a MAF with K
transforms is mirrored by transform K - 1 - k of its IAF (same order), so their intermediate states can be
matched (``AutoregressiveFlow.fast_chain``).

Instead of the affine map, a transform can be a monotonic rational-quadratic spline per dimension (Durkan et
al., "Neural Spline Flows", arXiv 1906.04140; CaloFlow's choice): K bins on [-B, B] whose widths, heights
and interior knot slopes the MADE gives, the identity outside (slope 1 at +-B). One spline dimension can
be bimodal, which an affine one cannot: a voxel is either empty (a narrow dequantised band) or holds a
deposit, and an affine flow spills the band into faint hits. ``rational_quadratic_spline`` is the pure
function; bins are found by counting knots below the input, so it traces into ONNX without searchsorted.

The log scale is soft-clamped, s = c tanh(raw / c), so a transform never scales by more than e^c; the last
layer of every MADE starts at zero, so a fresh flow is the identity. No Python branching on tensor values:
the D passes of ``slow`` are a Python loop over a constant, which the ONNX tracer unrolls.

``LayerwiseFlow`` applies one flow to a shower layer by layer, each layer conditioned on the context, the
layer's index and the previous layer's values (L2LFlows, Buss et al., arXiv 2312.09290), so the flow's
dimension is the voxels of one layer rather than of the shower.

Shapes: flows act on (N, D) with context (N, C); log-determinants and log-densities are (N,) in nats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from caloforge.errors import InputError

__all__ = [
    "FLOW_KINDS",
    "FLOW_SIZES",
    "MADE",
    "AutoregressiveAffine",
    "AutoregressiveFlow",
    "AutoregressiveSpline",
    "FlowNetConfig",
    "LayerwiseFlow",
    "MaskedLinear",
    "flow_orders",
    "rational_quadratic_spline",
    "standard_normal_log_prob",
]

FLOW_KINDS = ("maf", "iaf")
_LOG_2PI = math.log(2.0 * math.pi)


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """log N(z; 0, 1) summed over the last axis: z (N, D) -> (N,) nats."""
    return -0.5 * (z * z).sum(dim=-1) - 0.5 * z.shape[-1] * _LOG_2PI


# ---- MADE ------------------------------------------------------------------------------------------------
class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (out_features, in_features).

    Without gradients (sampling) the masked weight is kept until the weight changes (its version or
    storage), so a pass costs one matrix product: at batch 1 the mask multiplication was half the work.
    """

    mask: Tensor

    def __init__(self, in_features: int, out_features: int, mask: Tensor) -> None:
        super().__init__(in_features, out_features)
        self.register_buffer("mask", mask.float(), persistent=False)  # rebuilt from the config
        self._masked: tuple[tuple[int, int, int], Tensor] | None = None

    def masked_weight(self) -> Tensor:
        if torch.is_grad_enabled() or torch.jit.is_tracing():
            return self.weight * self.mask
        key = (self.weight._version, self.weight.data_ptr(), self.mask.data_ptr())
        if self._masked is None or self._masked[0] != key:
            self._masked = (key, self.weight * self.mask)
        return self._masked[1]

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.masked_weight(), self.bias)


class MADE(nn.Module):
    """Masked autoencoder: x (N, D), context (N, C) -> ``n_params`` outputs per dimension (N, n_params, D),
    output [:, :, i] depending only on the x_j with ``order[j] < order[i]`` (and on all of the context).

    Args:
        order: (D,) a permutation of 0 .. D-1: each dimension's place in the autoregressive order.
        context: C, the context size (0: none).
        hidden: units per hidden layer; depth: hidden layers (>= 1).
        n_params: outputs per dimension.
    """

    def __init__(self, order: Tensor, context: int, hidden: int, depth: int, n_params: int) -> None:
        super().__init__()
        d = int(order.numel())
        self.features, self.n_params = d, n_params
        # Hidden degrees spread evenly over 0 .. D-2 (Germain et al.), so every input reaches some unit even
        # when hidden < D - 1; with D = 1 they are -1 and the outputs see the context only.
        hidden_degree = torch.arange(hidden) * (d - 1) // hidden if d > 1 else torch.full((hidden,), -1)
        in_degree = torch.cat([order.long(), torch.full((context,), -1)])  # the context precedes everything
        layers: list[nn.Module] = []
        previous = in_degree
        for _ in range(depth):
            mask = hidden_degree[:, None] >= previous[None, :]
            layers += [MaskedLinear(len(previous), hidden, mask), nn.SiLU()]
            previous = hidden_degree
        out_degree = order.long().repeat(n_params)  # (n_params * D,), parameter-major
        last = MaskedLinear(hidden, n_params * d, out_degree[:, None] > previous[None, :])
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)

    def forward(self, x: Tensor, context: Tensor | None) -> Tensor:
        h = x if context is None else torch.cat([x, context], dim=1)  # (N, D + C)
        return self.net(h).reshape(-1, self.n_params, self.features)  # (N, n_params, D)


# ---- the affine autoregressive transform -----------------------------------------------------------------
class AutoregressiveAffine(nn.Module):
    """v = u exp(s(u_<)) + m(u_<) (module doc), s soft-clamped to (-scale_clamp, scale_clamp).

    ``fast(u, c) -> (v, log|dv/du|)`` in one MADE pass; ``slow(v, c) -> (u, log|du/dv|)`` in D passes.
    """

    def __init__(
        self, order: Tensor, context: int, hidden: int, depth: int, scale_clamp: float = 3.0
    ) -> None:
        super().__init__()
        self.made = MADE(order, context, hidden, depth, 2)
        self.features = int(order.numel())
        self.scale_clamp = float(scale_clamp)

    def params(self, u: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """(shift m, log scale s), each (N, D), from the input u (N, D)."""
        out = self.made(u, context)
        s = self.scale_clamp * torch.tanh(out[:, 1] / self.scale_clamp)
        return out[:, 0], s

    def fast(self, u: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        m, s = self.params(u, context)
        return u * torch.exp(s) + m, s.sum(dim=1)

    def slow(self, v: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        # After pass k the first k dimensions in the order are exact, so D passes invert exactly.
        u = torch.zeros_like(v)
        s = torch.zeros_like(v)
        for _ in range(self.features):
            m, s = self.params(u, context)
            u = (v - m) * torch.exp(-s)
        return u, -s.sum(dim=1)


# ---- the rational-quadratic spline transform -------------------------------------------------------------
_MIN_BIN, _MIN_SLOPE = 1e-3, 1e-3
_SLOPE_SHIFT = math.log(math.expm1(1.0 - _MIN_SLOPE))  # softplus(0 + shift) + min = 1: identity at zero


def _knots(raw: Tensor, bound: float, dim: int) -> tuple[Tensor, Tensor]:
    """Bin edges (K + 1 along ``dim``) from -bound to bound and bin sizes (K) from unnormalised sizes (K)."""
    k = raw.shape[dim]
    size = _MIN_BIN + (1.0 - _MIN_BIN * k) * torch.softmax(raw, dim=dim)
    inner = (torch.cumsum(size, dim=dim) * (2.0 * bound) - bound).narrow(dim, 0, k - 1)
    end = torch.full_like(size.narrow(dim, 0, 1), bound)
    edges = torch.cat([-end, inner, end], dim=dim)  # exact ends
    return edges, edges.narrow(dim, 1, k) - edges.narrow(dim, 0, k)


def rational_quadratic_spline(
    x: Tensor, widths: Tensor, heights: Tensor, slopes: Tensor, inverse: bool = False, bound: float = 6.0,
    dim: int = -1,
) -> tuple[Tensor, Tensor]:
    """A monotonic rational-quadratic spline on [-bound, bound], the identity outside (Durkan et al.).

    Args:
        x: inputs (outputs of the spline when ``inverse``), the tables' shape without their ``dim`` axis:
            (...,) for tables (..., K), or (N, D) for tables (N, K, D) with ``dim=1``.
        widths, heights: K unnormalised bin widths and heights along ``dim`` (softmax-normalised, each
            >= 1e-3 of the interval); slopes: K - 1 unnormalised slopes at the interior knots (softplus,
            >= 1e-3; the slope at +-bound is 1). All zeros give the identity.
        inverse: run the spline backwards (solve its quadratic).
        dim: the tables' bin axis. A MADE's parameter-major output (N, 3K - 1, D) is read with ``dim=1``
            without a transposed copy, and every reduction runs over contiguous rows of D.

    Returns:
        (outputs, log|d outputs / d inputs|), each shaped like x: (y, log|dy/dx|), or with ``inverse``
        (x, log|dx/dy|).
    """
    dim = dim % widths.dim()
    k = widths.shape[dim]
    inside = (x > -bound) & (x < bound)
    xc = torch.clamp(x, -bound, bound).unsqueeze(dim)
    x_edges, x_sizes = _knots(widths, bound, dim)
    y_edges, y_sizes = _knots(heights, bound, dim)
    one = torch.ones_like(slopes.narrow(dim, 0, 1))
    d = torch.cat([one, _MIN_SLOPE + F.softplus(slopes + _SLOPE_SHIFT), one], dim=dim)  # K + 1 knot slopes
    edges = y_edges if inverse else x_edges
    index = (xc >= edges.narrow(dim, 1, k - 1)).sum(dim=dim, keepdim=True)  # the bin, 0 .. K-1

    def pick(table: Tensor, at: Tensor = index) -> Tensor:
        return torch.gather(table, dim, at)

    x0, w, y0, h = pick(x_edges), pick(x_sizes), pick(y_edges), pick(y_sizes)
    d0, d1 = pick(d), pick(d, index + 1)
    s = h / w
    curve = d0 + d1 - 2.0 * s
    if inverse:
        dy = xc - y0
        a = h * (s - d0) + dy * curve
        b = h * d0 - dy * curve
        c = -s * dy
        root = torch.sqrt(torch.clamp(b * b - 4.0 * a * c, min=0.0))
        theta = 2.0 * c / (-b - root)
        out = x0 + theta * w
    else:
        theta = (xc - x0) / w
        out = y0 + h * (s * theta * theta + d0 * theta * (1.0 - theta)) / (s + curve * theta * (1.0 - theta))
    t = theta * (1.0 - theta)
    slope = s * s * (d1 * theta * theta + 2.0 * s * t + d0 * (1.0 - theta) ** 2)
    logdet = torch.log(slope) - 2.0 * torch.log(s + curve * t)
    if inverse:
        logdet = -logdet
    out, logdet = out.squeeze(dim), logdet.squeeze(dim)
    return torch.where(inside, out, x), torch.where(inside, logdet, torch.zeros_like(logdet))


class AutoregressiveSpline(nn.Module):
    """v_i = spline_i(u_i; MADE(u_<i, c)): ``bins`` rational-quadratic bins on [-bound, bound] per dimension,
    the identity outside; fresh (MADE output zero) it is the identity.

    ``fast(u, c) -> (v, log|dv/du|)`` in one MADE pass; ``slow(v, c) -> (u, log|du/dv|)`` in D passes.
    """

    def __init__(self, order: Tensor, context: int, hidden: int, depth: int, bins: int = 8,
                 bound: float = 6.0) -> None:
        super().__init__()
        self.made = MADE(order, context, hidden, depth, 3 * bins - 1)
        self.features, self.bins, self.bound = int(order.numel()), int(bins), float(bound)

    def params(self, u: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """(widths (N, K, D), heights (N, K, D), slopes (N, K - 1, D)) from the input u (N, D): the MADE's
        parameter-major output sliced, bins on axis 1 (no transposed copy)."""
        out = self.made(u, context)  # (N, 3K - 1, D)
        k = self.bins
        return out[:, :k], out[:, k : 2 * k], out[:, 2 * k :]

    def fast(self, u: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        v, logdet = rational_quadratic_spline(u, *self.params(u, context), bound=self.bound, dim=1)
        return v, logdet.sum(dim=1)

    def slow(self, v: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        u = torch.zeros_like(v)
        logdet = torch.zeros_like(v)
        for _ in range(self.features):  # after pass k the first k dimensions in the order are exact
            u, logdet = rational_quadratic_spline(v, *self.params(u, context), inverse=True, bound=self.bound,
                                                  dim=1)
        return u, logdet.sum(dim=1)


def flow_orders(features: int, transforms: int, kind: str) -> list[Tensor]:
    """The autoregressive order of each transform: a MAF alternates identity and reversed order; an IAF
    takes its mirror MAF's orders back to front, so IAF transform j matches MAF transform K - 1 - j."""
    if kind not in FLOW_KINDS:
        raise ValueError(f"flow kind '{kind}' is not one of {FLOW_KINDS}")
    forward, backward = torch.arange(features), torch.arange(features - 1, -1, -1)
    maf = [forward if k % 2 == 0 else backward for k in range(transforms)]
    return maf if kind == "maf" else maf[::-1]


# ---- flows -----------------------------------------------------------------------------------------------
@dataclass
class FlowNetConfig:
    """One flow's size: ``transforms`` autoregressive transforms, each a MADE with ``depth`` hidden layers of
    ``hidden`` units. The ``splines`` transforms nearest the data are rational-quadratic splines (``bins``
    bins on [-``bound``, ``bound``], in the flow's standardised units), the rest affine (log scales clamped
    to +-``scale_clamp``). A spline transform costs several affine ones on a CPU, and one at the data end
    already gives each dimension its two modes, so mixing trades fidelity for steps."""

    transforms: int = 4
    hidden: int = 64
    depth: int = 2
    scale_clamp: float = 3.0
    splines: int = 0
    bins: int = 8
    bound: float = 6.0

    def check(self, prefix: str = "model.") -> None:
        for name in ("transforms", "hidden", "depth"):
            if getattr(self, name) < 1:
                raise InputError(None, f"{prefix}{name}", f"is {getattr(self, name)}", "an integer >= 1")
        if not self.scale_clamp > 0:
            raise InputError(None, f"{prefix}scale_clamp", f"is {self.scale_clamp}", "a number > 0")
        if not 0 <= self.splines <= self.transforms:
            raise InputError(None, f"{prefix}splines", f"is {self.splines}",
                             f"an integer from 0 to transforms ({self.transforms})")
        if self.bins < 2:
            raise InputError(None, f"{prefix}bins", f"is {self.bins}", "an integer >= 2")
        if not self.bound > 0:
            raise InputError(None, f"{prefix}bound", f"is {self.bound}", "a number > 0")


# Named sizes: (layer-energy flow, shower-shape flow).
FLOW_SIZES: dict[str, tuple[FlowNetConfig, FlowNetConfig]] = {
    "tiny": (FlowNetConfig(2, 16, 1), FlowNetConfig(2, 16, 1)),
    "small": (FlowNetConfig(4, 64, 2), FlowNetConfig(4, 128, 2)),
    "base": (FlowNetConfig(6, 128, 2), FlowNetConfig(6, 256, 2)),
}


def _transform(order: Tensor, context: int, config: FlowNetConfig, spline: bool) -> nn.Module:
    if spline:
        return AutoregressiveSpline(order, context, config.hidden, config.depth, config.bins, config.bound)
    return AutoregressiveAffine(order, context, config.hidden, config.depth, config.scale_clamp)


class AutoregressiveFlow(nn.Module):
    """A stack of autoregressive transforms (``AutoregressiveAffine`` or ``AutoregressiveSpline``) over D
    dimensions with a standard normal base.

    ``kind="maf"``: x -> z is the fast direction (density in K passes, sampling in K x D);
    ``kind="iaf"``: z -> x is (sampling in K passes, density in K x D).
    """

    def __init__(self, features: int, context: int, config: FlowNetConfig, kind: str) -> None:
        super().__init__()
        self.kind, self.features = kind, features
        k, n = config.transforms, config.splines
        # A MAF's first transforms read the data, an IAF's last ones write it: splines sit at the data end.
        data_end = range(n) if kind == "maf" else range(k - n, k)
        self.transforms = nn.ModuleList(
            _transform(order, context, config, j in data_end)
            for j, order in enumerate(flow_orders(features, k, kind))
        )

    def fast_chain(self, u: Tensor, context: Tensor | None) -> tuple[list[Tensor], Tensor]:
        """The fast direction with every intermediate state: ([u, after 1, ..., after K], log|det|) where the
        states are (N, D) and the log-determinant (N,)."""
        states, logdet = [u], torch.zeros_like(u[:, 0])
        for transform in self.transforms:
            u, ld = transform.fast(u, context)  # type: ignore[operator]
            states.append(u)
            logdet = logdet + ld
        return states, logdet

    def slow_chain(self, v: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """The slow direction (inverse of ``fast_chain``): (u, log|du/dv|)."""
        logdet = torch.zeros_like(v[:, 0])
        for transform in reversed(self.transforms):
            v, ld = transform.slow(v, context)  # type: ignore[operator]
            logdet = logdet + ld
        return v, logdet

    def to_latent(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """x (N, D) -> (z (N, D), log|dz/dx| (N,))."""
        if self.kind == "maf":
            states, logdet = self.fast_chain(x, context)
            return states[-1], logdet
        return self.slow_chain(x, context)

    def to_data(self, z: Tensor, context: Tensor | None) -> Tensor:
        """z (N, D) -> x (N, D)."""
        if self.kind == "iaf":
            return self.fast_chain(z, context)[0][-1]
        return self.slow_chain(z, context)[0]

    def log_prob(self, x: Tensor, context: Tensor | None) -> Tensor:
        """log p(x | context) (N,) nats, exact: log N(z) + log|dz/dx|."""
        z, logdet = self.to_latent(x, context)
        return standard_normal_log_prob(z) + logdet


class LayerwiseFlow(nn.Module):
    """One flow over a shower's voxels, either whole (``n_layers=1``: D = V) or layer by layer (D = V / L):
    layer l is a draw of the flow with context [context, one-hot(l), previous layer's values] (L2LFlows).

    Densities and training run all layers at once (the previous layer is known); sampling runs the layers
    in turn. Voxels are in CaloChallenge order (layer slowest), so x (N, V) reshapes to (N, L, V / L).
    """

    eye: Tensor

    def __init__(self, n_voxels: int, n_layers: int, context: int, config: FlowNetConfig, kind: str) -> None:
        super().__init__()
        if n_voxels % n_layers:
            raise ValueError(f"{n_voxels} voxels do not split into {n_layers} equal layers")
        self.n_layers, self.per_layer = n_layers, n_voxels // n_layers
        self.layered = n_layers > 1
        extra = n_layers + self.per_layer if self.layered else 0
        self.flow = AutoregressiveFlow(self.per_layer, context + extra, config, kind)
        self.register_buffer("eye", torch.eye(n_layers), persistent=False)

    def rows(self, x: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """The flow's rows for showers x (N, V) with context (N, C): ((N L, V / L), (N L, C')), each layer
        conditioned on its index and the previous layer of x (zeros before the first)."""
        if not self.layered:
            return x, context
        n, per = self.n_layers, self.per_layer
        grid = x.reshape(-1, n, per)  # (N, L, P)
        previous = torch.cat([torch.zeros_like(grid[:, :1]), grid[:, :-1]], dim=1)  # (N, L, P)
        zeros = torch.zeros_like(grid[:, :, :1])  # (N, L, 1)
        rows = torch.cat([context[:, None, :] + zeros, self.eye[None] + zeros, previous], dim=2)
        return grid.reshape(-1, per), rows.reshape(grid.shape[0] * n, -1)

    def log_prob(self, x: Tensor, context: Tensor) -> Tensor:
        """log p(x | context) (N,) nats for showers x (N, V) in the model's space."""
        values, rows = self.rows(x, context)
        return self.flow.log_prob(values, rows).reshape(x.shape[0], -1).sum(dim=1)

    def sample(self, z: Tensor, context: Tensor, low: Tensor | None = None,
               high: Tensor | None = None) -> Tensor:
        """Showers (N, V) in the model's space from standard normal z (N, V), layer after layer.

        ``low``/``high`` (N, V), when given, bound each layer to the data's support before it becomes the
        next layer's context: an affine flow is unbounded, and without the bound one draw far out in a
        tail feeds ever larger values forward until the shower overflows.
        """
        if not self.layered:
            x = self.flow.to_data(z, context)
            return x if low is None or high is None else torch.clamp(x, low, high)
        per = self.per_layer
        previous = torch.zeros_like(z[:, :per])
        layers = []
        for layer in range(self.n_layers):
            one_hot = self.eye[layer] + torch.zeros_like(z[:, :1])  # (N, L)
            rows = torch.cat([context, one_hot, previous], dim=1)
            part = slice(layer * per, (layer + 1) * per)
            previous = self.flow.to_data(z[:, part], rows)
            if low is not None and high is not None:
                previous = torch.clamp(previous, low[:, part], high[:, part])
            layers.append(previous)
        return torch.cat(layers, dim=1)
