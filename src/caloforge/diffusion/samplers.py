"""Samplers: small pure functions integrating the probability-flow ODE / SDE of a denoiser.

Every sampler has ONE signature (as k-diffusion ``sampling.py``)::

    sampler(denoiser, x_init, sigmas, cond, generator=None, callback=None) -> x

``denoiser(x, sigma, cond)`` returns D(x; sigma) (x (N, V), sigma (N,), cond (N, C));
``x_init`` is noise at ``sigmas[0]``; ``sigmas`` is the decreasing grid ending in 0
(``EDM.sigmas``); ``callback`` (optional) receives ``{"i", "x", "sigma", "denoised"}`` after each step.
The loops run over a fixed grid with no data-dependent branches, so they trace into a static graph.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor

from caloforge.diffusion.consistency import consistency
from caloforge.diffusion.dpm_solver import dpmpp_2m, dpmpp_2m_logsnr
from caloforge.errors import UnknownNameError

__all__ = ["SAMPLERS", "Denoiser", "Sampler", "euler", "get_sampler", "heun", "stochastic"]

Denoiser = Callable[[Tensor, Tensor, Tensor], Tensor]
Callback = Callable[[dict[str, Any]], None]


class Sampler(Protocol):
    def __call__(
        self,
        denoiser: Denoiser,
        x_init: Tensor,
        sigmas: Tensor,
        cond: Tensor,
        generator: torch.Generator | None = None,
        callback: Callback | None = None,
    ) -> Tensor: ...


def _levels(sigmas: Tensor) -> list[float]:
    # Python floats: the grid is a constant of the sampler, not data, so branching on it stays static.
    return [float(s) for s in sigmas]


@torch.no_grad()
def euler(
    denoiser: Denoiser,
    x_init: Tensor,
    sigmas: Tensor,
    cond: Tensor,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """First-order Euler steps of the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma."""
    x, levels = x_init, _levels(sigmas)
    ones = x.new_ones(x.shape[0])
    for i, (s, s_next) in enumerate(itertools.pairwise(levels)):
        denoised = denoiser(x, s * ones, cond)
        x = x + (s_next - s) * (x - denoised) / s
        if callback is not None:
            callback({"i": i, "x": x, "sigma": s, "denoised": denoised})
    return x


@torch.no_grad()
def heun(
    denoiser: Denoiser,
    x_init: Tensor,
    sigmas: Tensor,
    cond: Tensor,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Deterministic 2nd-order Heun sampler (Karras et al. 2022, Algorithm 1); 2n - 1 denoiser calls."""
    x, levels = x_init, _levels(sigmas)
    ones = x.new_ones(x.shape[0])
    for i, (s, s_next) in enumerate(itertools.pairwise(levels)):
        denoised = denoiser(x, s * ones, cond)
        d = (x - denoised) / s
        x_next = x + (s_next - s) * d
        if s_next > 0:  # the last step to sigma = 0 stays Euler (Algorithm 1, line 9)
            d_next = (x_next - denoiser(x_next, s_next * ones, cond)) / s_next
            x_next = x + (s_next - s) * 0.5 * (d + d_next)
        x = x_next
        if callback is not None:
            callback({"i": i, "x": x, "sigma": s, "denoised": denoised})
    return x


@torch.no_grad()
def stochastic(
    denoiser: Denoiser,
    x_init: Tensor,
    sigmas: Tensor,
    cond: Tensor,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    s_churn: float = 10.0,
    s_tmin: float = 0.05,
    s_tmax: float = 50.0,
    s_noise: float = 1.003,
    noise: Tensor | None = None,
) -> Tensor:
    """Stochastic 2nd-order sampler (Karras et al. 2022, Algorithm 2): each step first adds noise to raise
    sigma by gamma = min(s_churn / n, sqrt(2) - 1) inside [s_tmin, s_tmax], then takes a Heun step.

    ``noise`` (N, n, *x.shape[1:]) standard normal, slice i for step i, replaces the draws from
    ``generator``: with it the sampler is a deterministic function of its inputs (and exports to ONNX).
    """
    x, levels = x_init, _levels(sigmas)
    ones = x.new_ones(x.shape[0])
    n = len(levels) - 1
    for i, (s, s_next) in enumerate(itertools.pairwise(levels)):
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= s <= s_tmax else 0.0
        s_hat = s * (1 + gamma)
        if gamma > 0:
            if noise is not None:
                fresh = noise[:, i]
            else:  # drawn where the generator lives, so one seed gives the same noise on every device
                where = generator.device if generator is not None else x.device
                fresh = torch.randn(x.shape, generator=generator, device=where, dtype=x.dtype).to(x.device)
            x = x + math.sqrt(s_hat**2 - s**2) * s_noise * fresh
        denoised = denoiser(x, s_hat * ones, cond)
        d = (x - denoised) / s_hat
        x_next = x + (s_next - s_hat) * d
        if s_next > 0:
            d_next = (x_next - denoiser(x_next, s_next * ones, cond)) / s_next
            x_next = x + (s_next - s_hat) * 0.5 * (d + d_next)
        x = x_next
        if callback is not None:
            callback({"i": i, "x": x, "sigma": s, "denoised": denoised})
    return x


# dpmpp_2m(_logsnr): few-step DPM-Solver++(2M), one denoiser call per step (caloforge.diffusion.dpm_solver);
# consistency: a distilled consistency function's 1..n-step sampler (caloforge.diffusion.consistency).
SAMPLERS: dict[str, Sampler] = {
    "heun": heun, "euler": euler, "stochastic": stochastic, "dpmpp_2m": dpmpp_2m,
    "dpmpp_2m_logsnr": dpmpp_2m_logsnr, "consistency": consistency,
}


def get_sampler(name: str) -> Sampler:
    """The sampler called ``name`` (a key of ``SAMPLERS``)."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise UnknownNameError("sampler", name, SAMPLERS) from None
