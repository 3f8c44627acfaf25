"""DiT backbone: shapes on every regular preset, padding, periodic alpha embedding, adaLN-Zero start."""

from __future__ import annotations

import math

import pytest
import torch

from caloforge.errors import UnknownNameError
from caloforge.geometry import PRESETS, CylindricalGeometry
from caloforge.models import DIT_SIZES, DiT, DiTConfig
from caloforge.models.dit import periodic, position_embedding

REGULAR = [name for name, g in PRESETS.items() if g.is_regular]
IRREGULAR = [name for name, g in PRESETS.items() if not g.is_regular]


@pytest.mark.parametrize("name", REGULAR)
def test_output_shape_on_every_regular_preset(name: str) -> None:
    geometry = PRESETS[name]
    torch.manual_seed(0)
    net = DiT(DiTConfig(size="tiny", patch_size=(5, 4, 3)), geometry, cond_dim=3)
    # perturb the zero-initialised output layers so the check covers a non-trivial map
    torch.nn.init.normal_(net.final.linear.weight, std=0.1)
    assert net.head is not None
    torch.nn.init.normal_(net.head.out.weight, std=0.1)
    x = torch.randn(2, geometry.n_voxels)
    out = net(x, torch.zeros(2), torch.randn(2, 3))
    assert out.shape == (2, geometry.n_voxels)
    assert torch.isfinite(out).all() and torch.count_nonzero(out) > 0


def test_irregular_geometry_raises_a_clear_error() -> None:
    assert IRREGULAR, "expected the dataset-1 presets to be irregular"
    with pytest.raises(ValueError, match="regular"):
        DiT(DiTConfig(size="tiny"), PRESETS[IRREGULAR[0]], cond_dim=1)


def test_patchify_pads_and_unpatchify_inverts() -> None:
    geometry = CylindricalGeometry.regular("odd", 7, 5, (0.0, 1.0, 2.0, 3.0), 3.4, "SiW")  # 7 x 5 x 3
    net = DiT(DiTConfig(size="tiny", patch_size=(3, 2, 2)), geometry, cond_dim=1)
    assert net.tokens == (3, 3, 2)  # ceil(7/3), ceil(5/2), ceil(3/2)
    x = torch.arange(2 * geometry.n_voxels, dtype=torch.float32).reshape(2, -1)
    tokens = net.patchify(x)
    assert tokens.shape == (2, 18, 12)
    # padded voxels hold zeros: the sum is preserved
    assert torch.equal(tokens.sum(dim=(1, 2)), x.sum(dim=1))
    # first token = layers 0-2, alpha 0-1, radial 0-1 of the (z, alpha, r) grid
    grid = x.reshape(2, 7, 5, 3)
    assert torch.equal(tokens[0, 0], grid[0, :3, :2, :2].reshape(-1))
    assert torch.equal(net.unpatchify(tokens)[..., 0], x)


def test_alpha_embedding_is_periodic() -> None:
    angles = torch.tensor([0.3, 1.7])
    torch.testing.assert_close(periodic(angles, 8), periodic(angles + 2 * math.pi, 8), atol=1e-5, rtol=0)
    emb = position_embedding((1, 8, 1), 48).reshape(8, 48)
    # neighbouring alpha patches are equally similar across the -pi/pi seam as anywhere else
    dist = [float((emb[i] - emb[(i + 1) % 8]).norm()) for i in range(8)]
    assert max(dist) - min(dist) < 1e-4


def test_adaln_zero_starts_at_zero_output_and_sizes_are_named() -> None:
    geometry = PRESETS["calochallenge-2"]
    net = DiT(DiTConfig(size="tiny", patch_size=(5, 4, 9)), geometry, cond_dim=2)
    out = net(torch.randn(3, geometry.n_voxels), torch.randn(3), torch.randn(3, 2))
    assert torch.count_nonzero(out) == 0
    assert {"tiny", "small", "base"} <= set(DIT_SIZES)
    with pytest.raises(UnknownNameError, match="tiny"):
        DiTConfig(size="tinny").resolved()
    assert DiTConfig(size="tiny", hidden=48).resolved().hidden == 48


def test_voxel_head_maps_each_voxel_from_its_own_value() -> None:
    geometry = PRESETS["calochallenge-2"]
    torch.manual_seed(0)
    net = DiT(DiTConfig(size="tiny", patch_size=(5, 4, 9), head_channels=3, head_width=8), geometry, 2)
    assert net.head is not None
    torch.nn.init.normal_(net.head.out.weight, std=0.5)
    # the output layer is still zero, so each voxel's features are its embedding alone: voxel i's output
    # must change with x_i and with nothing else
    x = torch.randn(1, geometry.n_voxels)
    moved = x.clone()
    moved[0, 100] += 1.0
    c_noise, cond = torch.zeros(1), torch.zeros(1, 2)
    before, after = net(x, c_noise, cond), net(moved, c_noise, cond)
    changed = torch.nonzero(before != after)[:, 1].tolist()
    assert changed == [100]
    plain = DiT(DiTConfig(size="tiny", patch_size=(5, 4, 9), head_channels=0), geometry, 2)
    assert plain.head is None and plain(x, c_noise, cond).shape == (1, geometry.n_voxels)
