"""A 3D U-Net over the (layer, alpha, radial) grid of a cylindrical readout, as in CaloDiffusion.

Amram & Pedro, "Denoising diffusion models with geometry adaptation for high fidelity calorimeter
simulation", arXiv 2308.03876 (CaloDiffusion): a U-Net of ResNet blocks with

* cylindrical convolutions: circular padding along alpha (the first and last angular bins are
  neighbours), ordinary zero padding along layer and radius;
* geometric conditioning: besides the voxel value, the input has channels holding each voxel's radius,
  the cosine and sine of its angle and its layer, because showers are not translation invariant in r
  and z and a convolution alone cannot tell where it is;
* down-sampling (strided convolutions) in alpha and radius (and layer, ``down_layer``), nearest
  up-sampling back to the skip connection's size, attention at the lowest resolution (``attention``);
* the noise level and the condition vector (energy, angles, detector; ``caloforge.conditioning``)
  embedded by a small MLP and fed to every block as a FiLM scale and shift (DDPM's / ADM's
  scale-shift norm, Dhariwal & Nichol arXiv 2105.05233).

The backbone knows nothing about noise schedules: ``forward(x, c_noise, cond)`` as the DiT's. It needs a
regular grid; irregular readouts (CaloChallenge dataset 1) reach it through GLaM (``caloforge.models.glam``).
Reading order (as DiT ``models.py``): helpers, blocks, the model, then named sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from caloforge.errors import InputError, UnknownNameError
from caloforge.geometry import CylindricalGeometry
from caloforge.models.dit import NoiseEmbedder

__all__ = ["UNET_SIZES", "CylindricalConv3d", "UNet", "UNetConfig", "UNetSize", "geometric_channels"]

N_GEOMETRIC = 4  # radius, cos(alpha), sin(alpha), layer


# ---- helpers ----------------------------------------------------------------------------------------------
def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with the most groups among 8, 4, 2, 1 that divide ``channels``."""
    groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


def geometric_channels(geometry: CylindricalGeometry) -> Tensor:
    """(4, L, A, R) position of every voxel of a regular grid: radius of the bin centre / outer radius,
    cos and sin of the alpha bin centre (0 rad for one bin), layer index / (L - 1) (0 for one layer)."""
    n_layers, n_alpha, n_radial = geometry.grid_shape
    edges = torch.tensor(geometry.r_edges_mm, dtype=torch.float32)
    r = 0.5 * (edges[1:] + edges[:-1]) / edges[-1]  # (R,)
    alpha_edges = torch.linspace(-math.pi, math.pi, n_alpha + 1)
    alpha = 0.5 * (alpha_edges[1:] + alpha_edges[:-1]) if n_alpha > 1 else torch.zeros(1)  # (A,)
    layer = torch.arange(n_layers, dtype=torch.float32) / max(n_layers - 1, 1)  # (L,)
    shape = (n_layers, n_alpha, n_radial)
    return torch.stack([
        r[None, None, :].expand(shape),
        torch.cos(alpha)[None, :, None].expand(shape),
        torch.sin(alpha)[None, :, None].expand(shape),
        layer[:, None, None].expand(shape),
    ])


def zero_(layer: nn.Conv3d) -> None:
    """Zero a convolution's weights and bias (a block that starts as its skip path)."""
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


# ---- blocks -----------------------------------------------------------------------------------------------
class CylindricalConv3d(nn.Module):
    """Conv3d over (N, C, layer, alpha, radial) with circular padding in alpha and zero padding in layer
    and radius (CaloDiffusion's cylindrical convolution); ``stride`` per axis (1 or 2).

    ``shape``, the (layer, alpha, radial) size of the input when known, trims the kernel to 1 along every
    axis of size 1. That changes nothing the convolution can compute (along a one-bin layer or radial
    axis the outer taps see only zero padding; along a one-bin alpha axis all taps see the same bin, so
    their sum is the one weight) and saves two thirds of the work per such axis: a patch stem that
    merges all radial bins leaves a (L, A, 1) grid. A checkpoint saved with full kernels loads into the
    trimmed shape (``_trim_full_kernel``).
    """

    def __init__(
        self, c_in: int, c_out: int, kernel: int = 3, stride: tuple[int, int, int] = (1, 1, 1),
        shape: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__()
        k_l, k_a, k_r = (1 if shape is not None and shape[axis] == 1 else kernel for axis in range(3))
        self.kernel = (k_l, k_a, k_r)
        self.conv = nn.Conv3d(c_in, c_out, self.kernel, stride=stride,
                              padding=(self.kernel[0] // 2, 0, self.kernel[2] // 2))
        # A kernel of 1 along radius, unstrided: the same convolution as a 2D one over (layer, alpha) with
        # the radial bins in the batch, which PyTorch runs 2-3 times faster on a CPU (training included).
        self.planar = self.kernel[2] == 1 and self.conv.stride[2] == 1
        self._register_load_state_dict_pre_hook(self._trim_full_kernel)

    def _trim_full_kernel(self, state_dict: dict[str, Tensor], prefix: str, *args: object) -> None:
        """A full (k, k, k) kernel from a checkpoint, cut to this conv's trimmed kernel: the centre tap
        along a trimmed layer or radial axis, the sum of the taps along a trimmed alpha axis."""
        key = prefix + "conv.weight"
        weight = state_dict.get(key)
        if weight is None or tuple(weight.shape[2:]) == self.kernel:
            return
        if self.kernel[0] == 1 and weight.shape[2] > 1:
            weight = weight.narrow(2, weight.shape[2] // 2, 1)
        if self.kernel[1] == 1 and weight.shape[3] > 1:
            weight = weight.sum(dim=3, keepdim=True)
        if self.kernel[2] == 1 and weight.shape[4] > 1:
            weight = weight.narrow(4, weight.shape[4] // 2, 1)
        state_dict[key] = weight

    def forward(self, x: Tensor) -> Tensor:
        p = self.kernel[1] // 2
        if p:  # wrap alpha: the last bins come before the first and the first after the last
            n_alpha = x.shape[3]
            reps = -(-p // n_alpha)  # fewer alpha bins than the padding (e.g. 1 bin): wrap several times
            ring = x if reps == 1 else x.repeat(1, 1, 1, reps, 1)
            x = torch.cat([ring[:, :, :, -p:], x, ring[:, :, :, :p]], dim=3)
        if not self.planar:
            return self.conv(x)
        n, c, n_l, n_a, n_r = x.shape
        planes = x.permute(0, 4, 1, 2, 3).reshape(n * n_r, c, n_l, n_a)  # (N R, C, L, A)
        out = F.conv2d(planes, self.conv.weight[..., 0], self.conv.bias, stride=self.conv.stride[:2],
                       padding=(self.kernel[0] // 2, 0))
        return out.reshape(n, n_r, *out.shape[1:]).permute(0, 2, 3, 4, 1)  # (N, C', L', A', R)


class ResBlock(nn.Module):
    """GroupNorm, SiLU, conv; FiLM from the embedding (h * (1 + scale) + shift after the second norm);
    SiLU, dropout, conv (zero-initialised, so the block starts as its skip path); 1x1x1 skip projection
    when the width changes."""

    def __init__(
        self, c_in: int, c_out: int, embed: int, dropout: float, shape: tuple[int, int, int] | None = None
    ) -> None:
        super().__init__()
        self.norm1 = group_norm(c_in)
        self.conv1 = CylindricalConv3d(c_in, c_out, shape=shape)
        self.film = nn.Sequential(nn.SiLU(), nn.Linear(embed, 2 * c_out))
        self.norm2 = group_norm(c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = CylindricalConv3d(c_out, c_out, shape=shape)
        self.skip = nn.Conv3d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        zero_(self.conv2.conv)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (N, C, L, A, R)
        scale, shift = self.film(emb)[:, :, None, None, None].chunk(2, dim=1)  # each (N, C, 1, 1, 1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SpatialAttention(nn.Module):
    """Multi-head self-attention over the cells of a (N, C, L, A, R) map; residual, output starts at 0."""

    def __init__(self, channels: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads if channels % n_heads == 0 else 1
        self.norm = group_norm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        n, c, gl, ga, gr = x.shape
        t = self.norm(x).reshape(n, c, gl * ga * gr).transpose(1, 2)  # (N, T, C)
        qkv = self.qkv(t).reshape(n, -1, 3, self.n_heads, c // self.n_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (N, H, T, C/H)
        out = self.proj(out.transpose(1, 2).reshape(n, -1, c))  # (N, T, C)
        return x + out.transpose(1, 2).reshape(n, c, gl, ga, gr)


class Downsample(nn.Module):
    """Strided cylindrical convolution: halves (rounding up) every axis whose stride is 2."""

    def __init__(
        self, channels: int, stride: tuple[int, int, int], shape: tuple[int, int, int] | None = None
    ) -> None:
        super().__init__()
        self.conv = CylindricalConv3d(channels, channels, stride=stride, shape=shape)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour up-sampling to the (static) size of the matching skip connection, then a conv."""

    def __init__(self, channels: int, size: tuple[int, int, int]) -> None:
        super().__init__()
        self.size = size
        self.conv = CylindricalConv3d(channels, channels, shape=size)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, size=self.size, mode="nearest"))


# ---- the model --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UNetSize:
    """Width and depth of a U-Net: base channels, channel multiplier per resolution level (one level per
    entry; all but the last end in a down-sampling), ResNet blocks per level, attention at the lowest
    resolution, width of the conditioning embedding."""

    channels: int
    multipliers: tuple[int, ...]
    blocks: int
    attention: bool
    embed: int
    n_heads: int = 4


@dataclass
class UNetConfig:
    """A U-Net: a named size from ``UNET_SIZES`` and overrides.

    Args:
        size: key of ``UNET_SIZES``.
        channels, multipliers, blocks, attention, embed: override the named size when set.
        down_layer: down-sample the layer axis too (alpha and radius always are, while longer than 1).
        geometric: add the geometric input channels (radius, cos alpha, sin alpha, layer).
        dropout: dropout inside the ResNet blocks.
        patch: (layer, alpha, radial) cells merged by the input stem. (1, 1, 1): a 3x3x3 convolution in
            and out at the readout's resolution (CaloDiffusion). Larger: a strided patch convolution in
            (the U-Net runs on the coarser grid, as a DiT's tokens), a transposed one out, then a
            per-voxel head that sees each voxel's own noisy value and position. On a CPU this is what
            makes the U-Net affordable: a (3, 2, 1) patch cuts the finest level's cells six-fold.
        head_channels, head_width: the per-voxel head's input channels (from the transposed
            convolution) and hidden width; used only with a patch.
    """

    size: str = "small"
    channels: int | None = None
    multipliers: tuple[int, ...] | None = None
    blocks: int | None = None
    attention: bool | None = None
    embed: int | None = None
    down_layer: bool = False
    geometric: bool = True
    dropout: float = 0.0
    patch: tuple[int, int, int] = (1, 1, 1)
    head_channels: int = 8
    head_width: int = 32

    def resolved(self) -> UNetSize:
        """The size after overrides."""
        if self.size not in UNET_SIZES:
            raise UnknownNameError("U-Net size", self.size, UNET_SIZES)
        base = UNET_SIZES[self.size]
        size = replace(
            base,
            channels=self.channels or base.channels,
            multipliers=tuple(self.multipliers) if self.multipliers else base.multipliers,
            blocks=self.blocks or base.blocks,
            attention=base.attention if self.attention is None else self.attention,
            embed=self.embed or base.embed,
        )
        if size.channels < 1 or size.blocks < 1 or size.embed < 1 or min(size.multipliers) < 1:
            raise InputError(None, "model.unet", f"resolves to {size}",
                             "positive channels, multipliers, blocks and embed")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(None, "model.unet.dropout", f"is {self.dropout}", "a number in [0, 1)")
        if len(self.patch) != 3 or min(self.patch) < 1:
            raise InputError(None, "model.unet.patch", f"is {list(self.patch)}",
                             "three positive integers (layer, alpha, radial)")
        if self.head_channels < 1 or self.head_width < 1:
            raise InputError(None, "model.unet.head_channels/head_width",
                             f"are {self.head_channels}/{self.head_width}", "positive integers")
        return size


class UNet(nn.Module):
    """U-Net backbone on a regular cylindrical grid (module doc).

    ``forward(x, c_noise, cond)``: x (N, n_voxels), c_noise (N,), cond (N, cond_dim) -> (N, n_voxels).
    """

    def __init__(self, config: UNetConfig, geometry: CylindricalGeometry, cond_dim: int) -> None:
        super().__init__()
        if not geometry.is_regular:
            raise ValueError(
                f"the U-Net needs a regular (layer, alpha, radial) grid; geometry '{geometry.name}' has "
                "per-layer binning (map it onto a regular grid with caloforge.models.glam.GLaM)"
            )
        size = config.resolved()
        self.grid = geometry.grid_shape
        pl, pa, pr = (int(p) for p in config.patch)
        self.patch = (pl, pa, pr)
        patched = self.patch != (1, 1, 1)
        # The U-Net's finest grid: the readout's, or its patches (the last patch along an axis padded).
        n_l, n_a, n_r = self.grid
        coarse = (-(-n_l // pl), -(-n_a // pa), -(-n_r // pr))
        self.padding = (coarse[0] * pl - n_l, coarse[1] * pa - n_a, coarse[2] * pr - n_r)
        self.geometric = config.geometric
        if self.geometric:
            self.register_buffer("positions", geometric_channels(geometry)[None], persistent=False)
        c_in = 1 + (N_GEOMETRIC if self.geometric else 0)
        widths = [size.channels * m for m in size.multipliers]

        self.noise_embed = NoiseEmbedder(size.embed)
        self.cond_embed = nn.Sequential(nn.Linear(cond_dim, size.embed), nn.SiLU(),
                                        nn.Linear(size.embed, size.embed))
        self.conv_in: nn.Module = (nn.Conv3d(c_in, widths[0], self.patch, stride=self.patch) if patched
                                   else CylindricalConv3d(c_in, widths[0], shape=coarse))

        # Encoder: the shape of every map pushed on the skip stack is recorded for the up-sampling.
        self.down = nn.ModuleList()
        shape = coarse
        skips: list[tuple[int, tuple[int, int, int]]] = [(widths[0], shape)]
        width = widths[0]
        for level, w in enumerate(widths):
            for _ in range(size.blocks):
                self.down.append(ResBlock(width, w, size.embed, config.dropout, shape))
                width = w
                skips.append((width, shape))
            if level < len(widths) - 1:
                stride = (2 if config.down_layer and shape[0] > 1 else 1,
                          2 if shape[1] > 1 else 1, 2 if shape[2] > 1 else 1)
                self.down.append(Downsample(width, stride, shape))
                shape = (-(-shape[0] // stride[0]), -(-shape[1] // stride[1]), -(-shape[2] // stride[2]))
                skips.append((width, shape))
        self.lowest = shape

        self.mid1 = ResBlock(width, width, size.embed, config.dropout, shape)
        self.mid_attn = SpatialAttention(width, size.n_heads) if size.attention else None
        self.mid2 = ResBlock(width, width, size.embed, config.dropout, shape)

        # Decoder: blocks + 1 ResBlocks per level, each eating one skip; up-sample to the next skip's shape.
        self.up = nn.ModuleList()
        for level, w in reversed(list(enumerate(widths))):
            for _ in range(size.blocks + 1):
                c_skip, shape = skips.pop()
                self.up.append(ResBlock(width + c_skip, w, size.embed, config.dropout, shape))
                width = w
            if level > 0:
                self.up.append(Upsample(width, skips[-1][1]))
        self.norm_out = group_norm(width)
        self.head: nn.Sequential | None = None
        if patched:
            # Back to the readout's cells, then each voxel decoded from those features, its own noisy
            # value and its position (the DiT's per-voxel head, docs/decisions.md "Backbone").
            self.conv_out: nn.Module = nn.ConvTranspose3d(width, config.head_channels, self.patch,
                                                          stride=self.patch)
            self.head = nn.Sequential(
                nn.Conv3d(config.head_channels + c_in, config.head_width, 1), nn.SiLU(),
                nn.Conv3d(config.head_width, 1, 1))
            last = self.head[-1]
        else:
            self.conv_out = CylindricalConv3d(width, 1, shape=coarse)
            last = self.conv_out.conv
        assert isinstance(last, nn.Conv3d)
        zero_(last)  # the untrained backbone outputs 0, as the DiT
        for mlp in (self.noise_embed.mlp, self.cond_embed):
            for layer in mlp:
                if isinstance(layer, nn.Linear):
                    nn.init.normal_(layer.weight, std=0.02)

    def forward(self, x: Tensor, c_noise: Tensor, cond: Tensor) -> Tensor:
        n = x.shape[0]
        h = x.reshape(n, 1, *self.grid)  # (N, 1, L, A, R)
        if self.geometric:
            positions: Tensor = self.positions  # type: ignore[assignment]
            h = torch.cat([h, positions.expand(n, -1, -1, -1, -1)], dim=1)  # (N, 1 + 4, L, A, R)
        emb = self.noise_embed(c_noise) + self.cond_embed(cond)  # (N, E)
        x_in = h  # (N, c_in, L, A, R)
        if any(self.padding):
            h = F.pad(h, (0, self.padding[2], 0, self.padding[1], 0, self.padding[0]))
        h = self.conv_in(h)  # (N, C, L', A', R'): the finest grid of the U-Net
        skips = [h]
        for block in self.down:
            h = block(h, emb) if isinstance(block, ResBlock) else block(h)
            skips.append(h)
        h = self.mid1(h, emb)
        if self.mid_attn is not None:
            h = self.mid_attn(h)
        h = self.mid2(h, emb)
        for block in self.up:
            if isinstance(block, ResBlock):
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
            else:
                h = block(h)
        h = F.silu(self.norm_out(h))
        if self.head is None:
            return self.conv_out(h).reshape(n, -1)  # (N, n_voxels)
        return self._decode_voxels(h, x_in)

    def _decode_voxels(self, h: Tensor, x_in: Tensor) -> Tensor:
        """The patched U-Net's way out: the transposed patch convolution back to the readout's cells,
        then the per-voxel head, (N, C, L', A', R') and (N, c_in, L, A, R) -> (N, n_voxels).

        Both are per-position linear maps (the patches do not overlap; the head's kernels are 1x1x1),
        computed here as matrix products over channel-last tensors with the modules' own weights: the same
        numbers as ``conv_out`` and ``head`` applied as convolutions, at a fraction of the cost on a CPU,
        where those 3D convolutions over the full 45 x 16 x 9 readout took about a fifth of the training
        step (py-spy, dataset 2).
        """
        assert self.head is not None and isinstance(self.conv_out, nn.ConvTranspose3d)
        n, c, cl, ca, cr = h.shape
        pl, pa, pr = self.patch
        gl, ga, gr = self.grid
        weight = self.conv_out.weight  # (C, O, pl, pa, pr)
        o = weight.shape[1]
        cells = h.permute(0, 2, 3, 4, 1) @ weight.reshape(c, -1)  # (N, L', A', R', O pl pa pr)
        cells = cells.reshape(n, cl, ca, cr, o, pl, pa, pr).permute(0, 1, 5, 2, 6, 3, 7, 4)
        cells = cells.reshape(n, cl * pl, ca * pa, cr * pr, o)[:, :gl, :ga, :gr]  # (N, L, A, R, O)
        if self.conv_out.bias is not None:
            cells = cells + self.conv_out.bias
        features = torch.cat([F.silu(cells), x_in.permute(0, 2, 3, 4, 1)], dim=-1)  # (N, L, A, R, O + c_in)
        first, last = self.head[0], self.head[2]
        assert isinstance(first, nn.Conv3d) and isinstance(last, nn.Conv3d)
        hidden = F.silu(F.linear(features, first.weight[:, :, 0, 0, 0], first.bias))
        return F.linear(hidden, last.weight[:, :, 0, 0, 0], last.bias).reshape(n, -1)  # (N, n_voxels)


# ---- named sizes (also what the config accepts) ----------------------------------------------------------
UNET_SIZES: dict[str, UNetSize] = {
    "tiny": UNetSize(channels=8, multipliers=(1, 2), blocks=1, attention=False, embed=32),  # tests
    # CPU (CaloDiffusion's scale: ~0.4M parameters, 4x compression in alpha and radius)
    "small": UNetSize(channels=16, multipliers=(1, 2, 2), blocks=1, attention=True, embed=64),
    "base": UNetSize(channels=32, multipliers=(1, 2, 2, 4), blocks=2, attention=True, embed=128),  # GPU
}
