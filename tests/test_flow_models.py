"""The autoregressive flows of ``caloforge.models.flows``: exact densities, inverses, Jacobians, the
autoregressive structure, layer-by-layer flows, and distillation of an IAF from a MAF."""

from __future__ import annotations

import math

import pytest
import torch

from caloforge.families.flow.module import distillation_losses
from caloforge.models.flows import (
    AutoregressiveFlow,
    FlowNetConfig,
    LayerwiseFlow,
    MaskedLinear,
    flow_orders,
    rational_quadratic_spline,
)


def _randomised(flow: torch.nn.Module, seed: int, scale: float = 0.3) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * scale)
    return flow


@pytest.mark.parametrize("kind", ["maf", "iaf"])
def test_log_prob_of_a_known_gaussian(kind: str) -> None:
    # A fresh flow is the identity: its density is the standard normal's.
    flow = AutoregressiveFlow(3, 0, FlowNetConfig(2, 8, 1), kind)
    x = torch.tensor([[0.0, 1.0, -2.0], [0.5, 0.5, 3.0]])
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(dim=1)
    torch.testing.assert_close(flow.log_prob(x, None), expected)
    # One transform with constant shift b and log scale a (the MADE's output biases) is affine, so the
    # density is Gaussian per dimension: a MAF maps data to latent, z = x e^s + b, so x ~ N(-b e^-s, e^-2s);
    # an IAF maps latent to data, x = z e^s + b, so x ~ N(b, e^2s).
    a, b = torch.tensor([0.3, -0.7, 1.1]), torch.tensor([1.0, -2.0, 0.25])
    with torch.no_grad():
        last = flow.transforms[0].made.net[-1]
        last.bias.copy_(torch.cat([b, a]))  # parameter-major: shifts, then raw log scales
    s = 3.0 * torch.tanh(a / 3.0)  # the soft clamp
    mean, std = (-b * (-s).exp(), (-s).exp()) if kind == "maf" else (b, s.exp())
    expected = torch.distributions.Normal(mean, std).log_prob(x).sum(dim=1)
    torch.testing.assert_close(flow.log_prob(x, None), expected)
    # and the flow samples that Gaussian
    z = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(flow.to_data(z, None), z * std + mean)


def test_spline_is_monotonic_exactly_invertible_and_the_identity_outside_its_interval() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.linspace(-5.0, 5.0, 2001, dtype=torch.float64)
    widths, heights = (torch.randn(1, 6, generator=generator, dtype=torch.float64).expand(2001, 6)
                       for _ in range(2))
    slopes = torch.randn(1, 5, generator=generator, dtype=torch.float64).expand(2001, 5)
    y, logdet = rational_quadratic_spline(x, widths, heights, slopes, bound=3.0)
    assert (y[1:] > y[:-1]).all()
    outside = x.abs() >= 3.0
    assert torch.equal(y[outside], x[outside]) and (logdet[outside] == 0).all()
    assert not torch.allclose(y[~outside], x[~outside])  # random bins do transform inside
    back, back_logdet = rational_quadratic_spline(y, widths, heights, slopes, inverse=True, bound=3.0)
    torch.testing.assert_close(back, x, atol=1e-12, rtol=0)
    torch.testing.assert_close(back_logdet, -logdet)
    slope = torch.autograd.functional.jacobian(
        lambda v: rational_quadratic_spline(v, widths, heights, slopes, bound=3.0)[0], x).diagonal()
    torch.testing.assert_close(torch.log(slope), logdet)
    # all-zero parameters (a fresh MADE's) give the identity
    zero = rational_quadratic_spline(x, widths * 0, heights * 0, slopes * 0, bound=3.0)
    torch.testing.assert_close(zero[0], x)
    torch.testing.assert_close(zero[1], torch.zeros_like(x))


def test_spline_reads_its_tables_along_any_axis() -> None:
    # a MADE's parameter-major output (N, K, D) is read with dim=1; the same tables bins-last agree
    generator = torch.Generator().manual_seed(1)
    x = 4.0 * torch.randn(5, 7, generator=generator, dtype=torch.float64)
    widths, heights = (torch.randn(5, 4, 7, generator=generator, dtype=torch.float64) for _ in range(2))
    slopes = torch.randn(5, 3, 7, generator=generator, dtype=torch.float64)
    for inverse in (False, True):
        first = rational_quadratic_spline(x, widths, heights, slopes, inverse, 3.0, dim=1)
        bins_last = (t.transpose(1, 2) for t in (widths, heights, slopes))
        last = rational_quadratic_spline(x, *bins_last, inverse, 3.0)
        assert first[0].shape == x.shape and first[1].shape == x.shape
        torch.testing.assert_close(first, last)


def test_a_spline_dimension_fits_two_modes_an_affine_one_cannot() -> None:
    # A voxel is either empty (a narrow band) or holds a deposit: two modes. One spline transform learns
    # such a 1D density far better than one affine transform (which is Gaussian), in the same steps.
    generator = torch.Generator().manual_seed(0)
    n = 4000
    hit = torch.rand(n, generator=generator) < 0.3
    x = torch.where(hit, 1.5 + 0.5 * torch.randn(n, generator=generator),
                    -1.0 + 0.1 * torch.rand(n, generator=generator))[:, None]
    nll = {}
    for transform in ("affine", "spline"):
        torch.manual_seed(0)
        config = FlowNetConfig(1, 8, 1, splines=int(transform == "spline"), bound=4.0)
        flow = AutoregressiveFlow(1, 0, config, "maf")
        optimizer = torch.optim.Adam(flow.parameters(), lr=0.05)
        for _ in range(300):
            optimizer.zero_grad()
            loss = -flow.log_prob(x, None).mean()
            loss.backward()
            optimizer.step()
        nll[transform] = float(-flow.log_prob(x, None).mean().detach())
    assert nll["spline"] < nll["affine"] - 0.5, nll


@pytest.mark.parametrize("transform", ["affine", "spline"])
@pytest.mark.parametrize("kind", ["maf", "iaf"])
def test_inverse_and_log_determinant_are_exact(kind: str, transform: str) -> None:
    config = FlowNetConfig(3, 16, 2, splines=2 if transform == "spline" else 0, bins=5, bound=2.0)
    flow = _randomised(AutoregressiveFlow(4, 2, config, kind).double(), seed=1)
    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    c = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    z, logdet = flow.to_latent(x, c)
    torch.testing.assert_close(flow.to_data(z, c), x, atol=1e-10, rtol=0)
    for i in range(2):
        jacobian = torch.autograd.functional.jacobian(
            lambda v, i=i: flow.to_latent(v[None], c[i : i + 1])[0][0], x[i])
        torch.testing.assert_close(torch.linalg.slogdet(jacobian)[1], logdet[i])
    assert not torch.allclose(z, x)  # the random weights do transform


@pytest.mark.parametrize("kind_of_transform", ["affine", "spline"])
def test_each_transform_is_autoregressive_in_its_order(kind_of_transform: str) -> None:
    config = FlowNetConfig(2, 12, 2, splines=2 if kind_of_transform == "spline" else 0, bound=5.0)
    flow = _randomised(AutoregressiveFlow(5, 1, config, "maf").double(), seed=4)
    x = torch.randn(1, 5, dtype=torch.float64)
    c = torch.zeros(1, 1, dtype=torch.float64)
    for transform, order in zip(flow.transforms, flow_orders(5, 2, "maf"), strict=True):
        jacobian = torch.autograd.functional.jacobian(lambda v, t=transform: t.fast(v[None], c)[0][0], x[0])
        for i in range(5):
            for j in range(5):
                if order[j] > order[i]:
                    assert jacobian[i, j] == 0  # output i never sees a later input
        assert jacobian[order.argsort()[-1], order.argsort()[0]] != 0  # and the last sees the first


def test_layerwise_flow_samples_and_scores_layer_by_layer() -> None:
    flow = _randomised(LayerwiseFlow(12, 3, 2, FlowNetConfig(2, 8, 1), "maf").double(), seed=5)
    z = torch.randn(4, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    c = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    x = flow.sample(z, c)
    values, rows = flow.rows(x, c)
    assert values.shape == (12, 4) and rows.shape == (12, 2 + 3 + 4)
    latent, logdet = flow.flow.to_latent(values, rows)
    torch.testing.assert_close(latent.reshape(4, 12), z, atol=1e-9, rtol=0)
    # layer 2 depends on layer 1 (its context) but layer 1 not on layer 2
    jacobian = torch.autograd.functional.jacobian(lambda v: flow.log_prob(v[None], c[:1])[0], x[0])
    assert jacobian[4:8].abs().sum() > 0
    expected = (-0.5 * (latent**2).sum(1) - 2 * math.log(2 * math.pi) + logdet).reshape(4, 3).sum(1)
    torch.testing.assert_close(flow.log_prob(x, c), expected)


def test_layerwise_sampling_bounds_each_layer_before_it_conditions_the_next() -> None:
    flow = _randomised(LayerwiseFlow(12, 3, 2, FlowNetConfig(2, 8, 1), "maf").double(), seed=5, scale=1.0)
    z = 30 * torch.randn(4, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    c = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    low, high = torch.full_like(z, -2.0), torch.full_like(z, 3.0)
    free, bounded = flow.sample(z, c), flow.sample(z, c, low, high)
    assert free.abs().max() > 3 and bounded.min() >= -2 and bounded.max() <= 3
    # layer 1 is the clamped free draw; layer 2 is drawn with the clamped layer 1 as its context
    torch.testing.assert_close(bounded[:, :4], free[:, :4].clamp(-2, 3))
    _, rows = flow.rows(bounded, c)
    expected_l2 = flow.flow.to_data(z[:, 4:8], rows.reshape(4, 3, -1)[:, 1]).clamp(-2, 3)
    torch.testing.assert_close(bounded[:, 4:8], expected_l2)


@pytest.mark.parametrize("transform", ["affine", "spline"])
def test_student_matches_teacher_after_distillation(transform: str) -> None:
    torch.manual_seed(0)
    config = FlowNetConfig(2, 16, 1, splines=2 if transform == "spline" else 0)
    teacher = _randomised(AutoregressiveFlow(3, 1, config, "maf"), seed=8, scale=0.2).requires_grad_(False)
    student = AutoregressiveFlow(3, 1, config, "iaf")
    generator = torch.Generator().manual_seed(9)
    z = torch.randn(256, 3, generator=generator)
    c = torch.rand(256, 1, generator=generator) * 2 - 1

    def gap() -> float:
        with torch.no_grad():
            return float((student.to_data(z, c) - teacher.to_data(z, c)).abs().mean())

    before = gap()
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-2)
    for _ in range(500):
        data = teacher.to_data(torch.randn(128, 3, generator=generator), c[:128])
        x_loss, z_loss = distillation_losses(student, teacher, data, c[:128], generator)
        optimizer.zero_grad()
        (x_loss + z_loss).backward()
        optimizer.step()
    after = gap()
    # the student's one-pass samples reproduce the teacher's D-pass samples of the same latents
    limit = 0.02 if transform == "affine" else 0.03  # the spline pair converges a little slower
    assert after < 0.05 * before and after < limit, (before, after)


def test_distillation_without_z_side_keeps_the_x_side_and_draws_nothing() -> None:
    config = FlowNetConfig(2, 16, 1, splines=1)
    teacher = _randomised(AutoregressiveFlow(3, 1, config, "maf"), seed=8, scale=0.2).requires_grad_(False)
    student = _randomised(AutoregressiveFlow(3, 1, config, "iaf"), seed=3, scale=0.2)
    data, c = torch.randn(64, 3), torch.rand(64, 1)
    both = distillation_losses(student, teacher, data, c, torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(1)
    x_only = distillation_losses(student, teacher, data, c, generator, z_side=False)
    torch.testing.assert_close(x_only[0], both[0])
    assert both[1] > 0 and x_only[1] == 0
    # no latent was drawn for a z side: the generator is where it started
    assert torch.equal(generator.get_state(), torch.Generator().manual_seed(1).get_state())


def test_masked_linear_reuses_its_masked_weight_only_while_the_weight_is_unchanged() -> None:
    torch.manual_seed(0)
    layer = MaskedLinear(3, 2, torch.tensor([[1, 0, 1], [0, 1, 0]]))
    x = torch.randn(4, 3)
    with torch.no_grad():
        before = layer(x)
        torch.testing.assert_close(before, x @ (layer.weight * layer.mask).T + layer.bias)
        layer.weight.add_(1.0)  # an in-place update (an optimiser step, a loaded state, the average)
        after = layer(x)
    torch.testing.assert_close(after, x @ (layer.weight * layer.mask).T + layer.bias)
    assert not torch.allclose(before, after)
    # with gradients the mask is applied in the graph, so masked entries get no gradient
    layer(x).sum().backward()
    assert layer.weight.grad is not None and torch.all(layer.weight.grad[layer.mask == 0] == 0)
