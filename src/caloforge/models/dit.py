"""A diffusion transformer (DiT, Peebles & Xie, arXiv 2212.09748) for cylindrical showers.

The flat voxel vector (N, n_voxels) is reshaped to the (layer, alpha, radial) grid, zero-padded up to
a multiple of the 3D patch size, cut into patches (tokens), and run through transformer blocks whose
LayerNorms are modulated by the noise level and the condition vector (adaLN-Zero, DiT section 3.2).
The positional embedding is fixed: sinusoids of the layer and radial patch index, and sin/cos of
multiples of the patch's alpha angle, so that the first and last alpha patches are neighbours.

The backbone knows nothing about noise schedules: it sees a scalar noise feature per shower
(``c_noise``, chosen by the diffusion wrapper) and returns a tensor of the input's shape.
Reading order (as DiT ``models.py``): helpers, blocks, the model, then named sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from caloforge.errors import UnknownNameError
from caloforge.geometry import CylindricalGeometry

__all__ = ["DIT_SIZES", "DiT", "DiTConfig", "DiTSize"]


# ---- helpers ----------------------------------------------------------------------------------------------
def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation: x (N, T, D), shift/scale (N, D)."""
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


def sinusoidal(positions: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Transformer sinusoidal features (Vaswani et al. 2017): positions (...,) -> (..., dim), dim even."""
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32, device=positions.device)
    freqs = torch.exp(-math.log(max_period) * k / half)
    args = positions.float()[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def periodic(angles: Tensor, dim: int) -> Tensor:
    """Features periodic in 2 pi: cos and sin of k * angle, k = 1 .. dim/2; angles (...,) -> (..., dim)."""
    k = torch.arange(1, dim // 2 + 1, dtype=torch.float32, device=angles.device)
    args = angles.float()[..., None] * k
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def position_embedding(n_tokens: tuple[int, int, int], dim: int) -> Tensor:
    """Fixed embedding (T, dim) of the token grid (layer, alpha, radial), flattened radial fastest.

    dim is split into three even parts: layer index (sinusoids), alpha angle of the patch centre
    (periodic), radial index (sinusoids).
    """
    n_layer, n_alpha, n_radial = n_tokens
    d_alpha = 2 * (dim // 6)
    d_radial = 2 * (dim // 6)
    d_layer = dim - d_alpha - d_radial
    layer, alpha, radial = torch.meshgrid(
        torch.arange(n_layer), torch.arange(n_alpha), torch.arange(n_radial), indexing="ij"
    )
    angle = (alpha.float() + 0.5) * (2 * math.pi / n_alpha)
    emb = torch.cat(
        [sinusoidal(layer, d_layer), periodic(angle, d_alpha), sinusoidal(radial, d_radial)], dim=-1
    )
    return emb.reshape(n_layer * n_alpha * n_radial, dim)


# ---- blocks -----------------------------------------------------------------------------------------------
class NoiseEmbedder(nn.Module):
    """Scalar noise feature (N,) -> (N, D): sinusoidal features then an MLP (DiT ``TimestepEmbedder``)."""

    def __init__(self, hidden: int, n_freq: int = 256) -> None:
        super().__init__()
        self.n_freq = n_freq
        self.mlp = nn.Sequential(nn.Linear(n_freq, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, c_noise: Tensor) -> Tensor:
        # c_noise is O(1) (e.g. ln(sigma)/4 for EDM); scale up so the sinusoids resolve it.
        return self.mlp(sinusoidal(1000.0 * c_noise, self.n_freq))


class Attention(nn.Module):
    """Multi-head self-attention over tokens (N, T, D)."""

    def __init__(self, hidden: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor) -> Tensor:
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (N, H, T, D/H)
        return self.proj(out.transpose(1, 2).reshape(n, t, d))


class DiTBlock(nn.Module):
    """Pre-LN transformer block with adaLN-Zero: the conditioning regresses shift, scale and a gate
    for both sub-layers; the gate starts at zero so every block starts as the identity (DiT sec. 3.2)."""

    def __init__(self, hidden: int, n_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, n_heads)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        mlp_hidden = int(hidden * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, mlp_hidden), nn.GELU(approximate="tanh"), nn.Linear(mlp_hidden, hidden)
        )
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=1)  # each (N, D)
        x = x + gate1[:, None, :] * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None, :] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm and a linear map from tokens back to patch values (or, with a voxel
    head, to ``channels`` features per voxel of the patch)."""

    def __init__(self, hidden: int, patch_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, patch_dim)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.ada(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


class VoxelHead(nn.Module):
    """A small MLP shared by all voxels: a voxel's output from its features (decoded from its token),
    a learned per-voxel embedding and the voxel's own input value.

    A linear patch decoder maps D token features to every voxel of the patch at once; denoising a voxel
    whose value is bimodal (empty, or a hit spread over decades) needs a nonlinear function of that
    voxel's own noisy value, which this adds at a small cost per voxel. The last layer starts at zero, so
    the untrained head outputs 0 as the adaLN-Zero backbone does.

    ``forward(features, x)``: features (N, V, C), x (N, V) -> (N, V).
    """

    def __init__(self, n_voxels: int, channels: int, width: int) -> None:
        super().__init__()
        self.embed = nn.Parameter(torch.zeros(n_voxels, channels))
        self.mlp = nn.Sequential(nn.Linear(channels + 1, width), nn.SiLU())
        self.out = nn.Linear(width, 1)

    def forward(self, features: Tensor, x: Tensor) -> Tensor:
        h = torch.cat([features + self.embed, x[..., None]], dim=-1)  # (N, V, C + 1)
        return self.out(self.mlp(h))[..., 0]


# ---- the model --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DiTSize:
    """Width and depth of a DiT: hidden size D, blocks, attention heads, MLP width / D."""

    hidden: int
    depth: int
    n_heads: int
    mlp_ratio: float = 4.0


@dataclass
class DiTConfig:
    """A DiT: a named size from ``DIT_SIZES`` and the (layer, alpha, radial) patch size.

    Args:
        size: key of ``DIT_SIZES``.
        patch_size: voxels per patch along (layer, alpha, radial); dimensions that do not divide are
            zero-padded.
        hidden, depth, n_heads: override the named size when set.
        head_channels: features per voxel fed to the per-voxel MLP head (``VoxelHead``); 0 = decode
            the patches linearly (the plain DiT).
        head_width: hidden width of that MLP.
    """

    size: str = "small"
    patch_size: tuple[int, int, int] = (3, 4, 3)
    hidden: int | None = None
    depth: int | None = None
    n_heads: int | None = None
    head_channels: int = 4
    head_width: int = 16

    def resolved(self) -> DiTSize:
        """The size after overrides."""
        if self.size not in DIT_SIZES:
            raise UnknownNameError("DiT size", self.size, DIT_SIZES)
        base = DIT_SIZES[self.size]
        return replace(
            base,
            hidden=self.hidden or base.hidden,
            depth=self.depth or base.depth,
            n_heads=self.n_heads or base.n_heads,
        )


class DiT(nn.Module):
    """DiT backbone on a regular cylindrical geometry.

    ``forward(x, c_noise, cond)``: x (N, n_voxels), c_noise (N,), cond (N, cond_dim) -> (N, n_voxels).
    """

    def __init__(self, config: DiTConfig, geometry: CylindricalGeometry, cond_dim: int) -> None:
        super().__init__()
        if not geometry.is_regular:
            raise ValueError(
                f"the DiT needs a regular (layer, alpha, radial) grid; geometry '{geometry.name}' has "
                "per-layer "
                "binning (CaloChallenge dataset 1 is not supported by this backbone)"
            )
        size = config.resolved()
        if size.hidden % size.n_heads:
            raise ValueError(f"hidden size {size.hidden} is not divisible by {size.n_heads} heads")
        self.grid = geometry.grid_shape
        if len(config.patch_size) != 3 or min(config.patch_size) < 1:
            raise ValueError(f"patch_size must be three positive integers, got {config.patch_size}")
        self.patch: tuple[int, int, int] = tuple(config.patch_size)  # type: ignore[assignment]
        (gl, ga, gr), (pl, pa, pr) = self.grid, self.patch
        self.tokens: tuple[int, int, int] = (-(-gl // pl), -(-ga // pa), -(-gr // pr))  # ceil division
        patch_dim = self.patch[0] * self.patch[1] * self.patch[2]
        hidden = size.hidden

        self.x_embed = nn.Linear(patch_dim, hidden)
        self.register_buffer("pos_embed", position_embedding(self.tokens, hidden), persistent=False)
        self.noise_embed = NoiseEmbedder(hidden)
        self.cond_embed = nn.Sequential(nn.Linear(cond_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.blocks = nn.ModuleList(
            [DiTBlock(hidden, size.n_heads, size.mlp_ratio) for _ in range(size.depth)]
        )
        channels = max(config.head_channels, 1)
        self.final = FinalLayer(hidden, patch_dim * channels)
        self.head = (
            VoxelHead(geometry.n_voxels, config.head_channels, config.head_width)
            if config.head_channels > 0
            else None
        )
        self._init_weights()

    def _init_weights(self) -> None:
        # As DiT: Xavier for linear layers, small normal for the embedding MLPs, zero for every adaLN
        # regression and the output layer (adaLN-Zero), so the untrained model outputs 0.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        for mlp in (self.noise_embed.mlp, self.cond_embed):
            for layer in mlp:
                if isinstance(layer, nn.Linear):
                    nn.init.normal_(layer.weight, std=0.02)
        for block in [*self.blocks, self.final]:
            nn.init.zeros_(block.ada[-1].weight)
            nn.init.zeros_(block.ada[-1].bias)
        nn.init.zeros_(self.final.linear.weight)
        nn.init.zeros_(self.final.linear.bias)
        if self.head is not None:
            nn.init.normal_(self.head.embed, std=0.02)
            nn.init.zeros_(self.head.out.weight)
            nn.init.zeros_(self.head.out.bias)

    def patchify(self, x: Tensor) -> Tensor:
        """(N, n_voxels) -> tokens (N, T, patch_dim), zero padding up to whole patches."""
        (gl, ga, gr), (pl, pa, pr), (tl, ta, tr) = self.grid, self.patch, self.tokens
        x = x.reshape(-1, gl, ga, gr)
        padding = (0, tr * pr - gr, 0, ta * pa - ga, 0, tl * pl - gl)
        if any(padding):  # static (from the config): skips a copy when the patches tile the grid
            x = F.pad(x, padding)  # (N, tl*pl, ta*pa, tr*pr)
        x = x.reshape(-1, tl, pl, ta, pa, tr, pr).permute(0, 1, 3, 5, 2, 4, 6)
        return x.reshape(-1, tl * ta * tr, pl * pa * pr)

    def unpatchify(self, tokens: Tensor) -> Tensor:
        """tokens (N, T, patch_dim * C) -> (N, n_voxels, C), dropping the padding."""
        (gl, ga, gr), (pl, pa, pr), (tl, ta, tr) = self.grid, self.patch, self.tokens
        c = tokens.shape[-1] // (pl * pa * pr)
        x = tokens.reshape(-1, tl, ta, tr, pl, pa, pr, c).permute(0, 1, 4, 2, 5, 3, 6, 7)
        x = x.reshape(-1, tl * pl, ta * pa, tr * pr, c)[:, :gl, :ga, :gr]
        return x.reshape(-1, gl * ga * gr, c)

    def forward(self, x: Tensor, c_noise: Tensor, cond: Tensor) -> Tensor:
        h = self.x_embed(self.patchify(x)) + self.pos_embed  # (N, T, D)
        c = self.noise_embed(c_noise) + self.cond_embed(cond)  # (N, D)
        for block in self.blocks:
            h = block(h, c)  # (N, T, D)
        out = self.unpatchify(self.final(h, c))  # (N, n_voxels, C)
        return out[..., 0] if self.head is None else self.head(out, x)  # (N, n_voxels)


# ---- named sizes (also what the CLI accepts) -------------------------------------------------------------
DIT_SIZES: dict[str, DiTSize] = {
    "tiny": DiTSize(hidden=32, depth=2, n_heads=2, mlp_ratio=2.0),  # tests and quick CPU demos
    "small": DiTSize(hidden=128, depth=4, n_heads=4),  # CPU training in an hour
    "base": DiTSize(hidden=384, depth=12, n_heads=6),  # GPU (DiT-S/B-like)
}
