"""EDM preconditioning, noise grid and samplers, checked against closed forms for Gaussian data."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from caloforge.diffusion import EDM, SAMPLERS, EDMConfig, get_sampler
from caloforge.errors import UnknownNameError


class Zero(nn.Module):
    def forward(self, x: Tensor, c_noise: Tensor, cond: Tensor) -> Tensor:
        return torch.zeros_like(x)


def test_sigma_grid_follows_karras_eq5() -> None:
    edm = EDM(Zero(), EDMConfig(sigma_min=0.01, sigma_max=10.0, rho=7.0))
    sigmas = edm.sigmas(3)
    # middle: (10^(1/7) + 0.5 (0.01^(1/7) - 10^(1/7)))^7 worked out by hand = 0.4466...
    middle = (10 ** (1 / 7) + 0.5 * (0.01 ** (1 / 7) - 10 ** (1 / 7))) ** 7
    torch.testing.assert_close(sigmas, torch.tensor([10.0, middle, 0.01, 0.0]))


def test_preconditioning_with_a_zero_backbone_is_the_skip_term() -> None:
    edm = EDM(Zero(), EDMConfig(sigma_data=0.5))
    x = torch.ones(2, 4)
    out = edm(x, torch.tensor([0.5, 2.0]), torch.zeros(2, 1))
    # c_skip = s_d^2 / (sigma^2 + s_d^2): 0.25/0.5 = 0.5 and 0.25/4.25
    torch.testing.assert_close(out[:, 0], torch.tensor([0.5, 0.25 / 4.25]))


def exact_denoiser(mean: float, std: float):
    """D(x; sigma) = E[x0 | x] for x0 ~ N(mean, std^2): (std^2 x + sigma^2 mean) / (std^2 + sigma^2)."""

    def denoise(x: Tensor, sigma: Tensor, cond: Tensor) -> Tensor:
        s2 = sigma[:, None] ** 2
        return (std**2 * x + s2 * mean) / (std**2 + s2)

    return denoise


@pytest.mark.parametrize("name", ["heun", "euler", "stochastic"])
def test_samplers_recover_a_gaussian(name: str) -> None:
    edm = EDM(Zero())
    sigmas = edm.sigmas(40)
    gen = torch.Generator().manual_seed(0)
    x = edm.prior((4000, 2), 40, generator=gen)
    out = get_sampler(name)(exact_denoiser(2.0, 0.5), x, sigmas, torch.zeros(4000, 1), generator=gen)
    assert float(out.mean()) == pytest.approx(2.0, abs=0.03)
    tolerance = 0.05 if name == "euler" else 0.02
    assert float(out.std()) == pytest.approx(0.5, abs=tolerance)


def test_samplers_are_reproducible_and_call_back() -> None:
    edm = EDM(Zero())
    sigmas = edm.sigmas(5)
    x = edm.prior((8, 3), 5, generator=torch.Generator().manual_seed(1))
    seen: list[int] = []
    a = SAMPLERS["stochastic"](
        exact_denoiser(0.0, 1.0),
        x,
        sigmas,
        torch.zeros(8, 1),
        generator=torch.Generator().manual_seed(3),
        callback=lambda d: seen.append(d["i"]),
    )
    b = SAMPLERS["stochastic"](
        exact_denoiser(0.0, 1.0), x, sigmas, torch.zeros(8, 1), generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(a, b)
    assert seen == [0, 1, 2, 3, 4]
    with pytest.raises(UnknownNameError, match="heun"):
        get_sampler("huen")


def test_loss_is_the_weighted_error_of_eq8() -> None:
    edm = EDM(Zero(), EDMConfig(sigma_data=1.0, p_mean=0.0, p_std=1e-12))  # sigma = 1 exactly
    x0 = torch.full((5, 2), 3.0)
    gen = torch.Generator().manual_seed(0)
    loss = edm.loss(x0, torch.zeros(5, 1), generator=gen)
    gen = torch.Generator().manual_seed(0)
    torch.randn(5, generator=gen)
    noise = torch.randn(5, 2, generator=gen)
    # D = c_skip (x0 + noise) = (x0 + noise) / 2; lambda(1) = 2
    expected = (2 * ((x0 + noise) / 2 - x0) ** 2).mean()
    torch.testing.assert_close(loss, expected)
