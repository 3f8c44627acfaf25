"""The layer-energy stage's backbone: shapes, the zero-initialised output, and that every input matters."""

from __future__ import annotations

import torch

from caloforge.models import LayerMLP, LayerModelConfig


def test_output_shape_and_zero_start() -> None:
    net = LayerMLP(46, 5, LayerModelConfig(width=32, depth=2))
    y, c_noise, cond = torch.randn(7, 46), torch.randn(7), torch.randn(7, 5)
    out = net(y, c_noise, cond)
    assert out.shape == (7, 46)
    assert torch.count_nonzero(out) == 0  # zero output layer: EDM starts from its skip connection


def test_output_depends_on_the_vector_noise_level_and_condition() -> None:
    torch.manual_seed(0)
    net = LayerMLP(10, 3, LayerModelConfig(width=16, depth=1))
    torch.nn.init.normal_(net.out.weight, std=0.1)
    y, c_noise, cond = torch.randn(4, 10), torch.randn(4), torch.randn(4, 3)
    base = net(y, c_noise, cond)
    for changed in (net(y + 1, c_noise, cond), net(y, c_noise + 1, cond), net(y, c_noise, cond + 1)):
        assert not torch.allclose(changed, base)
