"""DPM-Solver++(2M) against the exact probability-flow ODE solution for Gaussian data."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from caloforge.diffusion import EDM, get_sampler
from caloforge.diffusion.dpm_solver import dpmpp_2m, dpmpp_2m_logsnr, logsnr_grid


def exact_denoiser(std: float) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """D(x; sigma) = E[x0 | x] = std^2 x / (std^2 + sigma^2) for x0 ~ N(0, std^2)."""
    def denoise(x: Tensor, sigma: Tensor, cond: Tensor) -> Tensor:
        return std**2 * x / (std**2 + sigma[:, None] ** 2)

    return denoise


def ode_end_point(x_init: Tensor, sigma_max: float, std: float) -> Tensor:
    """Gaussian data: the ODE keeps x / sqrt(std^2 + sigma^2) fixed, so x(0) = x_T std / sqrt(std^2 + s_T^2).
    """
    return x_init * std / math.sqrt(std**2 + sigma_max**2)


def test_dpmpp_2m_is_registered_and_converges_at_second_order() -> None:
    assert get_sampler("dpmpp_2m") is dpmpp_2m
    edm, std = EDM(torch.nn.Identity()), 0.5
    x_init = torch.randn((256, 3), generator=torch.Generator().manual_seed(0)) * 80.0
    errors = {}
    for n in (16, 32, 64):  # on coarser grids errors of different steps partly cancel
        sigmas = edm.sigmas(n)
        out = dpmpp_2m(exact_denoiser(std), x_init, sigmas, torch.zeros(256, 1))
        errors[n] = float((out - ode_end_point(x_init, float(sigmas[0]), std)).abs().max())
    # The last step to sigma = 0 is exact for this denoiser; the error comes from the rest of the grid.
    # Second order: doubling the steps cuts the error by about 4 (first order would give 2).
    assert errors[32] < errors[16] / 3 and errors[64] < errors[32] / 3
    assert errors[64] < 0.01  # of x values ~ 0.5


def test_dpmpp_2m_beats_euler_at_equal_denoiser_calls() -> None:
    edm, std = EDM(torch.nn.Identity()), 0.5
    x_init = torch.randn((256, 3), generator=torch.Generator().manual_seed(1)) * 80.0
    target = ode_end_point(x_init, 80.0, std)
    cond = torch.zeros(256, 1)
    calls = 6
    dpm = dpmpp_2m(exact_denoiser(std), x_init, edm.sigmas(calls), cond)
    euler = get_sampler("euler")(exact_denoiser(std), x_init, edm.sigmas(calls), cond)
    assert float((dpm - target).abs().max()) < 0.5 * float((euler - target).abs().max())


def test_callback_sees_every_step() -> None:
    seen: list[int] = []
    sigmas = EDM(torch.nn.Identity()).sigmas(5)
    dpmpp_2m(exact_denoiser(1.0), torch.ones(2, 2) * 80, sigmas, torch.zeros(2, 1),
             callback=lambda info: seen.append(info["i"]))
    assert seen == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("n", [1, 2])
def test_very_few_steps_stay_finite(n: int) -> None:
    sigmas = EDM(torch.nn.Identity()).sigmas(n)
    out = dpmpp_2m(exact_denoiser(1.0), torch.ones(4, 2) * 80, sigmas, torch.zeros(4, 1))
    assert torch.isfinite(out).all()


def test_logsnr_grid_is_even_in_log_sigma() -> None:
    sigmas = EDM(torch.nn.Identity()).sigmas(4)  # 80, ..., 0.002, then 0
    grid = logsnr_grid(sigmas)
    # by hand: 80 * (0.002 / 80)^(i / 3) = 80, 2.3392, 0.068399, 0.002, then 0
    torch.testing.assert_close(grid, torch.tensor([80.0, 2.3392, 0.068399, 0.002, 0.0]), rtol=1e-4, atol=0)


def test_dpmpp_2m_logsnr_is_registered_and_solves_the_ode() -> None:
    assert get_sampler("dpmpp_2m_logsnr") is dpmpp_2m_logsnr
    edm, std = EDM(torch.nn.Identity()), 0.5
    x_init = torch.randn((256, 3), generator=torch.Generator().manual_seed(0)) * 80.0
    out = dpmpp_2m_logsnr(exact_denoiser(std), x_init, edm.sigmas(64), torch.zeros(256, 1))
    assert float((out - ode_end_point(x_init, 80.0, std)).abs().max()) < 0.01
