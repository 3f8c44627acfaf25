"""The cylindrical U-Net: circular padding in alpha only, geometric channels, rotation equivariance,
shapes with odd grids and down-sampled layers, kernels trimmed on one-bin axes, zero start, named sizes."""

from __future__ import annotations

import math

import pytest
import torch

from caloforge.errors import InputError, UnknownNameError
from caloforge.geometry import PRESETS, CylindricalGeometry
from caloforge.models.unet import UNET_SIZES, CylindricalConv3d, UNet, UNetConfig, geometric_channels


def _picking(offset_alpha: int, offset_radial: int) -> CylindricalConv3d:
    """A 3x3x3 convolution: output at (l, a, r) = input at (l, a + offset_alpha, r + offset_radial)."""
    conv = CylindricalConv3d(1, 1)
    with torch.no_grad():
        conv.conv.weight.zero_()
        conv.conv.bias.zero_()
        conv.conv.weight[0, 0, 1, 1 + offset_alpha, 1 + offset_radial] = 1.0
    return conv


def test_convolution_wraps_alpha_but_not_radius_or_layer() -> None:
    x = torch.zeros(1, 1, 3, 6, 4)
    x[0, 0, 1, 5, 3] = 1.0  # last alpha bin, last radial bin
    # the left alpha neighbour of bin 0 is bin 5: the delta appears at alpha 0
    out = _picking(-1, 0)(x)
    assert out.shape == x.shape and out[0, 0, 1, 0, 3] == 1.0 and out.sum() == 1.0
    # the right radial neighbour of the last radial bin is zero padding: no wrap to radial bin 0
    out = _picking(0, 1)(x)
    assert out[0, 0, 1, 5, 2] == 1.0 and out.sum() == 1.0 and out[0, 0, 1, 5, 0] == 0.0
    # one alpha bin is its own neighbour on both sides
    ones = CylindricalConv3d(1, 1)
    with torch.no_grad():
        ones.conv.weight.zero_()
        ones.conv.bias.zero_()
        ones.conv.weight[0, 0, 1, :, 1] = 1.0
    single = torch.full((1, 1, 2, 1, 2), 2.0)
    torch.testing.assert_close(ones(single), torch.full_like(single, 6.0))


@pytest.mark.parametrize("shape", [(5, 4, 1), (5, 1, 3), (1, 4, 3), (3, 1, 1)])
def test_kernels_trimmed_on_one_bin_axes_compute_what_full_kernels_do(shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    full = CylindricalConv3d(3, 4)
    trimmed = CylindricalConv3d(3, 4, shape=shape)
    assert trimmed.kernel == tuple(1 if n == 1 else 3 for n in shape)
    trimmed.load_state_dict(full.state_dict())  # a checkpoint saved with full kernels
    x = torch.randn(2, 3, *shape)
    torch.testing.assert_close(trimmed(x), full(x))
    # with a strided conv too (the down-sampling): same output shape and values
    full_s = CylindricalConv3d(3, 4, stride=(2, 2, 1))
    trimmed_s = CylindricalConv3d(3, 4, stride=(2, 2, 1), shape=shape)
    trimmed_s.load_state_dict(full_s.state_dict())
    torch.testing.assert_close(trimmed_s(x), full_s(x))


def test_planar_path_is_the_3d_convolution() -> None:
    torch.manual_seed(1)
    conv = CylindricalConv3d(3, 4, shape=(5, 6, 1))
    assert conv.planar  # radial kernel 1: run as a 2D convolution with the radial bins in the batch
    for x in (torch.randn(2, 3, 5, 6, 1), torch.randn(2, 3, 5, 6, 3)):
        fast = conv(x)
        conv.planar = False
        torch.testing.assert_close(fast, conv(x))
        conv.planar = True


def test_unet_on_patches_of_all_radial_bins_trims_every_kernel() -> None:
    geometry = CylindricalGeometry.regular("g", 6, 4, (0.0, 1.0, 2.0, 3.0), 1.0, "SiW")
    config = UNetConfig(size="tiny", patch=(2, 1, 3), down_layer=True)
    net = UNet(config, geometry, 2)
    kernels = {m.kernel for m in net.modules() if isinstance(m, CylindricalConv3d)}
    assert kernels == {(3, 3, 1)}  # the finest grid is 3 x 4 x 1, the lowest 2 x 2 x 1


def test_geometric_channels_hold_radius_angle_and_layer() -> None:
    geometry = CylindricalGeometry.regular("g", 3, 4, (0.0, 1.0, 3.0), 1.0, "SiW")
    pos = geometric_channels(geometry)
    assert pos.shape == (4, 3, 4, 2)
    torch.testing.assert_close(pos[0, 0, 0], torch.tensor([0.5 / 3, 2.0 / 3]))  # bin centre / outer edge
    angle = torch.tensor(-math.pi + math.pi / 4)  # centre of the first of 4 bins over [-pi, pi)
    torch.testing.assert_close(pos[1, 2, 0, 1], torch.cos(angle))
    torch.testing.assert_close(pos[2, 2, 0, 1], torch.sin(angle))
    torch.testing.assert_close(pos[3, :, 0, 0], torch.tensor([0.0, 0.5, 1.0]))
    # the network reads them: with and without geometric channels the input width differs
    with_pos = UNet(UNetConfig(size="tiny"), geometry, 2)
    without = UNet(UNetConfig(size="tiny", geometric=False), geometry, 2)
    assert with_pos.conv_in.conv.in_channels == 5 and without.conv_in.conv.in_channels == 1


def _perturbed(net: UNet) -> UNet:
    torch.manual_seed(1)
    for module in net.modules():
        if isinstance(module, torch.nn.Conv3d):
            torch.nn.init.normal_(module.weight, std=0.2)
    return net


def test_rotating_the_shower_in_alpha_rotates_the_output() -> None:
    # Without the (position-dependent) geometric channels, a U-Net of cylindrical convolutions is
    # equivariant to rotations by the down-sampling factor: no seam at alpha = +-pi.
    geometry = CylindricalGeometry.regular("ring", 2, 8, (0.0, 1.0, 2.0, 3.0, 4.0), 1.0, "SiW")
    net = _perturbed(UNet(UNetConfig(size="tiny", geometric=False), geometry, 3)).eval()
    x, c, cond = torch.randn(2, geometry.n_voxels), torch.zeros(2), torch.randn(2, 3)
    out = net(x, c, cond).reshape(2, 2, 8, 4)
    rolled = net(x.reshape(2, 2, 8, 4).roll(2, dims=2).reshape(2, -1), c, cond).reshape(2, 2, 8, 4)
    torch.testing.assert_close(rolled, out.roll(2, dims=2), atol=1e-5, rtol=1e-4)
    assert out.abs().sum() > 0


GRIDS = [((7, 5, 3), True), ((4, 1, 6), False), ((45, 16, 9), False)]


@pytest.mark.parametrize(("grid", "down_layer"), GRIDS)
def test_output_shape_and_zero_start(grid: tuple[int, int, int], down_layer: bool) -> None:
    n_layers, n_alpha, n_radial = grid
    geometry = CylindricalGeometry.regular("g", n_layers, n_alpha, [float(i) for i in range(n_radial + 1)],
                                           1.0, "SiW")
    net = UNet(UNetConfig(size="small", down_layer=down_layer), geometry, 4)
    x = torch.randn(2, geometry.n_voxels)
    assert torch.equal(net(x, torch.zeros(2), torch.randn(2, 4)), torch.zeros_like(x))  # zero-initialised out
    out = _perturbed(net)(x, torch.zeros(2), torch.randn(2, 4))
    assert out.shape == x.shape and torch.isfinite(out).all() and out.abs().sum() > 0
    if down_layer:
        assert net.lowest[0] < n_layers


def test_named_sizes_and_errors() -> None:
    assert list(UNET_SIZES) == ["tiny", "small", "base"]
    counts = [sum(p.numel() for p in UNet(UNetConfig(size=s), PRESETS["calochallenge-2"], 3).parameters())
              for s in UNET_SIZES]
    assert counts == sorted(counts) and 2e5 < counts[1] < 2e6  # small: CaloDiffusion's scale
    with pytest.raises(UnknownNameError, match="did you mean 'small'"):
        UNetConfig(size="smal").resolved()
    with pytest.raises(ValueError, match="GLaM"):
        UNet(UNetConfig(size="tiny"), PRESETS["calochallenge-1-photons"], 3)


@pytest.mark.parametrize("grid", [(7, 5, 3), (45, 16, 9)])
def test_patch_stem_runs_on_a_coarser_grid_and_decodes_every_voxel(grid: tuple[int, int, int]) -> None:
    n_layers, n_alpha, n_radial = grid
    geometry = CylindricalGeometry.regular("g", n_layers, n_alpha, [float(i) for i in range(n_radial + 1)],
                                           1.0, "SiW")
    net = UNet(UNetConfig(size="tiny", patch=(3, 2, 3), down_layer=True), geometry, 4)
    # 7 x 5 x 3 is padded to whole patches (9 x 6 x 3 -> 3 x 3 x 1); one down-sampling halves, rounding up.
    coarse = tuple(-(-n // p) for n, p in zip(grid, (3, 2, 3), strict=True))
    assert net.lowest == tuple(-(-c // 2) if c > 1 else 1 for c in coarse)
    x = torch.randn(2, geometry.n_voxels)
    assert torch.equal(net(x, torch.zeros(2), torch.randn(2, 4)), torch.zeros_like(x))  # zero-init head
    net = _perturbed(net)
    out = net(x, torch.zeros(2), torch.randn(2, 4))
    assert out.shape == x.shape and torch.isfinite(out).all()
    # The per-voxel head sees each voxel's own noisy value: changing one voxel changes its own output.
    y = x.clone()
    y[0, 0] += 5.0
    assert not torch.isclose(net(y, torch.zeros(2), torch.ones(2, 4))[0, 0],
                             net(x, torch.zeros(2), torch.ones(2, 4))[0, 0])


def test_patch_must_be_three_positive_integers() -> None:
    with pytest.raises(InputError, match=r"model\.unet\.patch"):
        UNetConfig(patch=(3, 0, 1)).resolved()
