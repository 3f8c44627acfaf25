"""A VQ-VAE for cylindrical showers (Calo-VQ style: van den Oord et al., arXiv 1711.00937; Calo-VQ,
Shimmin et al.).

The shower grid (layer z, alpha, radial r) is seen as a 2D image over (z, alpha) with the radial bins as
channels, so every convolution is a 2D kernel over (z, alpha) with *circular* padding in alpha (alpha is
periodic: the first and last bins are neighbours) and zero padding in z. Down- and up-sampling:

* in z, a stride-2 convolution (ceil(L / 2) rows) on the way down and nearest-neighbour resizing to the
  recorded size on the way up;
* in alpha, FFT resampling (``fft_resample_matrix``: rfft, truncate or zero-pad the spectrum, irfft), which
  works for any bin count (50 in CaloChallenge dataset 3 has no convenient divisor) and, being linear, is
  applied as a fixed (n_out, n_in) matrix: exact, cheap at these sizes and plain MatMul in ONNX.

The encoder maps log1p-scaled cell fractions (N, R, L, A) to latents (N, D, L', A'); the quantiser
(``VectorQuantizer``) snaps each latent vector to its nearest code (EMA codebook, dead-code restarts,
k-means initialisation from data, perplexity); the decoder maps codes (and the condition vector) to
K outputs per cell (N, K, V): with ``decoder: softmax`` one logit per cell, whose softmax over all V cells
gives fractions that sum to one; with ``decoder: hurdle`` three (hit logit, mean and log-width of the
deposit's log), whose meaning the family gives (``caloforge.families.vq_gpt.showers``).

The backbone knows nothing of E_inc or E_tot: the family normalises showers before and after
(``caloforge.families.vq_gpt.showers``). Reading order: helpers, blocks, the quantiser, the model, sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from caloforge.errors import InputError, UnknownNameError
from caloforge.geometry import CylindricalGeometry

__all__ = [
    "DECODER_OUTPUTS",
    "VQVAE",
    "VQ_SIZES",
    "AlphaResample",
    "CylindricalDecoder",
    "CylindricalEncoder",
    "VQConfig",
    "VQSize",
    "VectorQuantizer",
    "fft_resample",
    "fft_resample_matrix",
    "from_grid",
    "perplexity",
    "to_grid",
]


# ---- helpers ----------------------------------------------------------------------------------------------
def to_grid(x: Tensor, grid: tuple[int, int, int]) -> Tensor:
    """Flat voxels (N, V) in caloforge order (radial fastest, then alpha, then layer) -> (N, R, L, A)."""
    n_layers, n_alpha, n_radial = grid
    return x.reshape(-1, n_layers, n_alpha, n_radial).permute(0, 3, 1, 2)


def from_grid(x: Tensor) -> Tensor:
    """(N, R, L, A) -> flat voxels (N, V), the inverse of ``to_grid``."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)


def fft_resample_matrix(n_in: int, n_out: int) -> Tensor:
    """(n_out, n_in) float32 matrix M with ``M @ x`` the FFT resampling of a periodic signal x (n_in,).

    Resampling = rfft, keep the lowest min(n_in, n_out) // 2 + 1 frequencies (zero-pad when upsampling),
    irfft to n_out points, times n_out / n_in so a constant keeps its value. It is linear, so applying it
    to the identity gives the matrix. A signal band-limited below both Nyquist frequencies survives a round
    trip exactly, and upsampling then downsampling is the identity (odd n_in: no Nyquist bin is cut).
    """
    eye = torch.eye(n_in, dtype=torch.float64)
    spectrum = torch.fft.rfft(eye, dim=1)  # (n_in, n_in // 2 + 1)
    keep = min(n_in, n_out) // 2 + 1
    out = torch.zeros(n_in, n_out // 2 + 1, dtype=spectrum.dtype)
    out[:, :keep] = spectrum[:, :keep]  # an even n_out's Nyquist bin: irfft reads its real part only
    resampled = torch.fft.irfft(out, n=n_out, dim=1) * (n_out / n_in)  # (n_in, n_out)
    return resampled.T.contiguous().float()


def fft_resample(x: Tensor, n_out: int) -> Tensor:
    """FFT resampling of the last, periodic axis: x (..., n_in) -> (..., n_out) (``fft_resample_matrix``)."""
    if x.shape[-1] == n_out:
        return x
    return x @ fft_resample_matrix(x.shape[-1], n_out).to(x).T


class AlphaResample(nn.Module):
    """``fft_resample`` of the last axis from ``n_in`` to ``n_out`` bins, its matrix kept as a buffer."""

    matrix: Tensor

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.identity = n_in == n_out
        self.register_buffer("matrix", fft_resample_matrix(n_in, n_out).T.contiguous(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return x if self.identity else x @ self.matrix  # (..., n_in) -> (..., n_out)


def circular_pad(x: Tensor, pad: int) -> Tensor:
    """Pad the last axis (alpha) of x (N, C, L, A) periodically by ``pad`` on each side.

    Written as slices and a concat (not ``F.pad(mode="circular")``): ONNX opset 17's Pad has no wrap mode.
    """
    if pad == 0:
        return x
    return torch.cat([x[..., -pad:], x, x[..., :pad]], dim=-1)


def perplexity(indices: Tensor, n_codes: int) -> Tensor:
    """exp(entropy) of the code usage in ``indices`` (any shape, int64 in [0, n_codes)): 1 when one code is
    used, k when k codes are used equally often; the standard VQ-VAE codebook-usage figure."""
    counts = torch.bincount(indices.reshape(-1), minlength=n_codes).to(torch.float32)
    p = counts / counts.sum().clamp(min=1)
    return torch.exp(-(p * torch.log(p.clamp(min=1e-12))).sum())


def _groups(channels: int) -> int:
    return math.gcd(channels, 8)


# ---- blocks -----------------------------------------------------------------------------------------------
class CylConv(nn.Module):
    """A 2D convolution over (z, alpha) of (N, C, L, A): circular padding in alpha, zeros in z."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride_z: int = 1) -> None:
        super().__init__()
        self.pad = kernel // 2
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=(stride_z, 1), padding=(self.pad, 0))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(circular_pad(x, self.pad))  # (N, C_out, L', A)


class ResBlock(nn.Module):
    """GroupNorm, SiLU, CylConv, twice, plus the input (pre-activation residual block)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(channels), channels)
        self.conv1 = CylConv(channels, channels)
        self.norm2 = nn.GroupNorm(_groups(channels), channels)
        self.conv2 = CylConv(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))  # (N, C, L, A)


def latent_sizes(grid: tuple[int, int, int], down_layers: int, down_alpha: int) -> list[tuple[int, int]]:
    """(L, A) at the input and after each down stage: z halves (ceil) for ``down_layers`` stages, alpha
    halves (ceil, FFT-resampled) for ``down_alpha`` stages; stages = max of the two."""
    n_layers, n_alpha, _ = grid
    sizes = [(n_layers, n_alpha)]
    for stage in range(max(down_layers, down_alpha)):
        z, a = sizes[-1]
        sizes.append((-(-z // 2) if stage < down_layers else z, -(-a // 2) if stage < down_alpha else a))
    return sizes


class Down(nn.Module):
    """One down stage: residual blocks, then z stride 2 (optional) and alpha FFT-resampled
    ``n_alpha[0] -> n_alpha[1]``."""

    def __init__(self, channels: int, n_blocks: int, halve_z: bool, n_alpha: tuple[int, int]) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[ResBlock(channels) for _ in range(n_blocks)])
        self.conv = CylConv(channels, channels, stride_z=2 if halve_z else 1)
        self.resample = AlphaResample(*n_alpha)

    def forward(self, x: Tensor) -> Tensor:
        return self.resample(self.conv(self.blocks(x)))  # (N, C, L', A')


class Up(nn.Module):
    """One up stage: z resized (nearest) to ``size[0]``, alpha FFT-resampled to ``size[1]``, a CylConv,
    then residual blocks."""

    def __init__(self, channels: int, n_blocks: int, size: tuple[int, int], n_alpha_in: int) -> None:
        super().__init__()
        self.size = size
        self.resample = AlphaResample(n_alpha_in, size[1])
        self.conv = CylConv(channels, channels)
        self.blocks = nn.Sequential(*[ResBlock(channels) for _ in range(n_blocks)])

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[2] != self.size[0]:
            x = F.interpolate(x, size=(self.size[0], x.shape[3]), mode="nearest")
        return self.blocks(self.conv(self.resample(x)))  # (N, C, L, A)


# ---- the quantiser ----------------------------------------------------------------------------------------
class VectorQuantizer(nn.Module):
    """Nearest-code quantiser with an EMA codebook (van den Oord et al. 2017, appendix A.1; Razavi et al.
    2019), dead-code restarts (Dhariwal et al. 2020, Jukebox) and k-means initialisation from data.

    ``forward(z, update, generator)``: z (M, D) latent vectors -> (quantised (M, D) with straight-through
    gradients, indices (M,) int64, commitment loss ||z - sg(q)||^2). With ``update`` (training stage 1):
    on the first call the codebook is initialised by ``kmeans_iters`` rounds of k-means on z; then the
    EMA statistics move towards this batch's assignments, and codes whose EMA count falls below
    ``dead_threshold`` are restarted at random vectors of the batch (drawn with ``generator``).

    Buffers (all saved): ``embedding`` (K, D), ``ema_count`` (K,), ``ema_sum`` (K, D), ``initialised``.
    """

    embedding: Tensor
    ema_count: Tensor
    ema_sum: Tensor
    initialised: Tensor

    def __init__(
        self, n_codes: int, dim: int, decay: float = 0.99, dead_threshold: float = 1.0,
        kmeans_iters: int = 10, eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.n_codes, self.dim = n_codes, dim
        self.decay, self.dead_threshold = decay, dead_threshold
        self.kmeans_iters, self.eps = kmeans_iters, eps
        self.register_buffer("embedding", torch.randn(n_codes, dim) / math.sqrt(dim))
        self.register_buffer("ema_count", torch.ones(n_codes))
        self.register_buffer("ema_sum", self.embedding.clone())
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    def nearest(self, z: Tensor) -> Tensor:
        """Index (M,) of the nearest code to each row of z (M, D) in Euclidean distance."""
        distance = (z * z).sum(1, keepdim=True) - 2 * z @ self.embedding.T + (self.embedding**2).sum(1)[None]
        return distance.argmin(dim=1)

    def lookup(self, indices: Tensor) -> Tensor:
        """Codes (..., D) of indices (...) int64."""
        return F.embedding(indices, self.embedding)

    @torch.no_grad()
    def _sample_rows(self, z: Tensor, n: int, generator: torch.Generator | None) -> Tensor:
        """n rows of z (M, D) drawn uniformly with replacement, plus a little jitter when M < n so that
        copies of one vector become distinct codes."""
        rows = torch.randint(0, z.shape[0], (n,), generator=generator, device=z.device)
        picked = z[rows].clone()
        if z.shape[0] < n:
            scale = 1e-3 * (z.std() + 1e-6)
            picked += scale * torch.randn(picked.shape, generator=generator, device=z.device)
        return picked

    @torch.no_grad()
    def initialise(self, z: Tensor, generator: torch.Generator | None = None) -> None:
        """k-means (``kmeans_iters`` Lloyd rounds) on z (M, D) from randomly drawn rows; sets the codebook
        and its EMA statistics (count 1 per code)."""
        centres = self._sample_rows(z, self.n_codes, generator)
        for _ in range(self.kmeans_iters):
            self.embedding.copy_(centres)
            assign = self.nearest(z)
            counts = torch.bincount(assign, minlength=self.n_codes).to(z.dtype)
            sums = torch.zeros_like(centres).index_add_(0, assign, z)
            used = counts > 0
            centres = torch.where(used[:, None], sums / counts.clamp(min=1)[:, None], centres)
        self.embedding.copy_(centres)
        self.ema_sum.copy_(centres)
        self.ema_count.fill_(1.0)
        self.initialised.fill_(True)

    @torch.no_grad()
    def update(self, z: Tensor, indices: Tensor, generator: torch.Generator | None = None) -> None:
        """One EMA step of the codebook towards the assignment of z (M, D) to ``indices`` (M,), then the
        dead-code restart. Laplace smoothing of the counts keeps every code's divisor positive."""
        one_hot = F.one_hot(indices, self.n_codes).to(z.dtype)  # (M, K)
        counts, sums = one_hot.sum(0), one_hot.T @ z  # (K,), (K, D)
        self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.ema_count.sum()
        smoothed = (self.ema_count + self.eps) / (total + self.n_codes * self.eps) * total
        self.embedding.copy_(self.ema_sum / smoothed[:, None])
        dead = self.ema_count < self.dead_threshold  # (K,)
        n_dead = int(dead.sum())
        if n_dead:
            fresh = self._sample_rows(z, n_dead, generator)
            self.embedding[dead] = fresh
            self.ema_sum[dead] = fresh * self.dead_threshold
            self.ema_count[dead] = self.dead_threshold

    def forward(
        self, z: Tensor, update: bool = False, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        if update and not bool(self.initialised):
            self.initialise(z.detach(), generator)
        indices = self.nearest(z.detach())  # (M,)
        if update:
            self.update(z.detach(), indices, generator)
            indices = self.nearest(z.detach())  # restarted codes may now be nearer
        q = self.lookup(indices)  # (M, D)
        commitment = F.mse_loss(z, q.detach())
        return z + (q - z).detach(), indices, commitment  # straight-through estimator


# ---- the model --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VQSize:
    """Width of a VQ-VAE: conv channels, residual blocks per stage, code dimension, codebook size."""

    channels: int
    n_blocks: int
    code_dim: int
    n_codes: int


@dataclass
class VQConfig:
    """The stage-1 VQ-VAE.

    Args:
        size: key of ``VQ_SIZES``; ``channels``, ``n_blocks``, ``code_dim``, ``n_codes`` override it.
        down_layers: stages that halve the layers (ceil), e.g. 45 -> 23 -> 12 with 2.
        down_alpha: stages that halve the alpha bins (ceil, FFT-resampled), e.g. 50 -> 25 -> 13 with 2.
        commitment: weight beta of the commitment loss ||z_e - sg(e)||^2.
        decay: EMA decay of the codebook statistics.
        dead_threshold: a code whose EMA count (assignments per batch) falls below this is restarted at
            a random latent of the batch.
        kmeans_iters: Lloyd rounds of the k-means that initialises the codebook on the first batch.
        input_scale: encoder input = log1p(fraction x input_scale); ``None`` = the voxel count, i.e.
            fractions relative to a shower spread evenly over all cells.
        ce_weight: weight of the cross-entropy -sum f log f_hat of the decoded fractions, added to the
            squared error in the encoder's log1p space (``decoder: softmax`` only).
        decoder: what the decoder gives each cell. ``softmax``: its mean share of the shower (one logit;
            every cell with a mean above the readout threshold is lit in every shower). ``hurdle``: a
            distribution to draw from (the probability that the cell is hit, and a log-normal deposit
            if it is), trained by likelihood (``caloforge.families.vq_gpt.showers.hurdle_nll``).
    """

    size: str = "small"
    channels: int | None = None
    n_blocks: int | None = None
    code_dim: int | None = None
    n_codes: int | None = None
    down_layers: int = 2
    down_alpha: int = 1
    commitment: float = 0.25
    decay: float = 0.99
    dead_threshold: float = 1.0
    kmeans_iters: int = 10
    input_scale: float | None = None
    ce_weight: float = 1.0
    decoder: str = "softmax"

    @property
    def cell_outputs(self) -> int:
        """Decoder outputs per cell: 1 (``softmax``) or 3 (``hurdle``)."""
        return DECODER_OUTPUTS[self.decoder]

    def resolved(self) -> VQSize:
        """The size after overrides (an unknown preset raises ``UnknownNameError``)."""
        if self.size not in VQ_SIZES:
            raise UnknownNameError("VQ-VAE size", self.size, VQ_SIZES)
        base = VQ_SIZES[self.size]
        return replace(
            base,
            channels=self.channels or base.channels,
            n_blocks=base.n_blocks if self.n_blocks is None else self.n_blocks,
            code_dim=self.code_dim or base.code_dim,
            n_codes=self.n_codes or base.n_codes,
        )

    def check(self) -> None:
        """Raise ``InputError`` for settings no model can be built with."""
        self.resolved()
        for name in ("down_layers", "down_alpha", "kmeans_iters"):
            if getattr(self, name) < 0:
                raise InputError(None, f"model.vq.{name}", f"is {getattr(self, name)}", "an integer >= 0")
        if not 0 < self.decay < 1:
            raise InputError(None, "model.vq.decay", f"is {self.decay}", "a number in (0, 1)")
        if self.decoder not in DECODER_OUTPUTS:
            raise UnknownNameError("VQ-VAE decoder", self.decoder, DECODER_OUTPUTS)
        if self.input_scale is not None and self.input_scale <= 0:
            raise InputError(None, "model.vq.input_scale", f"is {self.input_scale}", "a number > 0")


class CylindricalEncoder(nn.Module):
    """(N, R, L, A) log1p-scaled fractions -> latents (N, D, L', A'); a depth channel (-1 .. 1 over the
    layers) is appended to the input, since showers are not translation invariant in z."""

    depth: Tensor

    def __init__(self, size: VQSize, n_radial: int, sizes: list[tuple[int, int]], down_layers: int) -> None:
        super().__init__()
        n_layers = sizes[0][0]
        depth = torch.linspace(-1.0, 1.0, n_layers)[None, None, :, None]  # (1, 1, L, 1)
        self.register_buffer("depth", depth, persistent=False)
        self.stem = CylConv(n_radial + 1, size.channels)
        self.stages = nn.ModuleList(
            Down(size.channels, size.n_blocks, stage < down_layers, (sizes[stage][1], sizes[stage + 1][1]))
            for stage in range(len(sizes) - 1)
        )
        self.mid = ResBlock(size.channels)
        self.norm = nn.GroupNorm(_groups(size.channels), size.channels)
        self.out = nn.Conv2d(size.channels, size.code_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        depth = self.depth.expand(x.shape[0], 1, x.shape[2], x.shape[3])
        h = self.stem(torch.cat([x, depth], dim=1))  # (N, C, L, A)
        for stage in self.stages:
            h = stage(h)
        return self.out(F.silu(self.norm(self.mid(h))))  # (N, D, L', A')


class CylindricalDecoder(nn.Module):
    """Codes (N, D, L', A') and condition vector (N, cond_dim) -> K outputs per cell (N, K x R, L, A).

    The condition enters as a per-channel bias at the latent resolution, beside a learned position map
    (the latent grid is not translation invariant either)."""

    def __init__(
        self, size: VQSize, n_radial: int, sizes: list[tuple[int, int]], cond_dim: int, cell_outputs: int = 1
    ) -> None:
        super().__init__()
        self.stem = nn.Conv2d(size.code_dim, size.channels, 1)
        self.position = nn.Parameter(torch.zeros(1, size.channels, *sizes[-1]))
        self.cond = nn.Linear(cond_dim, size.channels)
        self.mid = ResBlock(size.channels)
        self.stages = nn.ModuleList(
            Up(size.channels, size.n_blocks, sizes[stage], sizes[stage + 1][1])
            for stage in reversed(range(len(sizes) - 1))
        )
        self.norm = nn.GroupNorm(_groups(size.channels), size.channels)
        self.out = CylConv(size.channels, cell_outputs * n_radial)

    def forward(self, codes: Tensor, cond: Tensor) -> Tensor:
        h = self.stem(codes) + self.position + self.cond(cond)[:, :, None, None]  # (N, C, L', A')
        h = self.mid(h)
        for stage in self.stages:
            h = stage(h)
        return self.out(F.silu(self.norm(h)))  # (N, K x R, L, A)


class VQVAE(nn.Module):
    """Encoder, quantiser and decoder on a regular cylindrical geometry (module doc).

    Attributes:
        latent_shape: (L', A'), the latent grid; ``n_latent`` = L' x A' codes per shower, ordered layer
            slowest, alpha fastest.
    """

    def __init__(self, config: VQConfig, geometry: CylindricalGeometry, cond_dim: int) -> None:
        super().__init__()
        if not geometry.is_regular:
            raise ValueError(f"the VQ-VAE needs a regular (layer, alpha, radial) grid; geometry "
                             f"'{geometry.name}' has per-layer binning")
        size = config.resolved()
        self.grid: tuple[int, int, int] = geometry.grid_shape
        sizes = latent_sizes(self.grid, config.down_layers, config.down_alpha)
        self.latent_shape: tuple[int, int] = sizes[-1]
        self.n_latent = sizes[-1][0] * sizes[-1][1]
        self.code_dim, self.n_codes = size.code_dim, size.n_codes
        n_radial = self.grid[2]
        self.encoder = CylindricalEncoder(size, n_radial, sizes, config.down_layers)
        self.quantizer = VectorQuantizer(size.n_codes, size.code_dim, config.decay, config.dead_threshold,
                                         config.kmeans_iters)
        self.cell_outputs = config.cell_outputs
        self.decoder = CylindricalDecoder(size, n_radial, sizes, cond_dim, self.cell_outputs)

    def encode(self, x: Tensor) -> Tensor:
        """Encoder input (N, V) (log1p-scaled fractions, flat) -> latent vectors (N, T, D), T = n_latent."""
        z = self.encoder(to_grid(x, self.grid))  # (N, D, L', A')
        return z.flatten(2).transpose(1, 2)

    def quantise(
        self, x: Tensor, update: bool = False, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(N, V) -> (quantised latents (N, T, D), code indices (N, T), commitment loss)."""
        z = self.encode(x)
        n, t, d = z.shape
        q, indices, commitment = self.quantizer(z.reshape(n * t, d), update, generator)
        return q.reshape(n, t, d), indices.reshape(n, t), commitment

    def decode(self, q: Tensor, cond: Tensor) -> Tensor:
        """Quantised latents (N, T, D) and condition (N, C) -> K outputs per cell (N, K, V), each (N, V) in
        the readout's voxel order (K = 1: logits whose softmax over V gives the cell fractions)."""
        n = q.shape[0]
        grid = q.transpose(1, 2).reshape(n, self.code_dim, *self.latent_shape)
        out = self.decoder(grid, cond)  # (N, K x R, L, A), the K outputs of a cell R channels apart
        k = self.cell_outputs
        return from_grid(out.reshape(n * k, out.shape[1] // k, *out.shape[2:])).reshape(n, k, -1)

    def decode_indices(self, indices: Tensor, cond: Tensor) -> Tensor:
        """Code indices (N, T) int64 -> K outputs per cell (N, K, V)."""
        return self.decode(self.quantizer.lookup(indices), cond)


#: outputs per cell of each decoder kind (``VQConfig.decoder``)
DECODER_OUTPUTS = {"softmax": 1, "hurdle": 3}


# ---- named sizes ------------------------------------------------------------------------------------------
VQ_SIZES: dict[str, VQSize] = {
    "tiny": VQSize(channels=8, n_blocks=1, code_dim=4, n_codes=16),  # tests
    "small": VQSize(channels=48, n_blocks=1, code_dim=32, n_codes=256),  # CPU in an hour
    "base": VQSize(channels=128, n_blocks=2, code_dim=64, n_codes=512),  # GPU
}
