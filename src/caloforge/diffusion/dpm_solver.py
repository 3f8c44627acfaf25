"""Few-step sampling: DPM-Solver++(2M), a multistep solver of the probability-flow ODE.

Lu et al., "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models",
arXiv 2211.01095, Algorithm 2, written for EDM's parametrisation (alpha_t = 1, sigma_t = sigma, so
lambda = -ln sigma). With data predictions D_i = D(x_i; sigma_i) and h_i = ln(sigma_i / sigma_{i+1}):

    x_{i+1} = (sigma_{i+1} / sigma_i) x_i - expm1(-h_i) D'_i,
    D'_0 = D_0,   D'_i = (1 + 1 / (2 r_i)) D_i - D_{i-1} / (2 r_i),   r_i = h_{i-1} / h_i,

and the last step to sigma = 0 returns D. The second-order correction re-uses the previous step's
prediction, so n steps cost n denoiser calls (Heun needs 2n - 1): at 4-8 calls it keeps most of the
accuracy of a Heun run with about three times the calls (``bench/fewstep_fidelity.py``).

``dpmpp_2m_logsnr`` runs the same solver on a grid uniform in log sigma (= uniform in log-SNR, the
spacing Lu et al. use for DPM-Solver) between the given grid's sigma_max and sigma_min, with as many
steps. EDM's grid (rho = 7) crowds the steps at small sigma, which suits Heun with many steps; with 4-8
steps the even log spacing follows the probability-flow ODE much more closely (measured: per-voxel error
of 8 steps 3.5x smaller than on the rho = 7 grid, on par with Heun at 31 calls).
Same signature as every sampler in ``caloforge.diffusion.samplers``; no random numbers, no
data-dependent branches, so they trace into static ONNX graphs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["dpmpp_2m", "dpmpp_2m_logsnr", "logsnr_grid"]


@torch.no_grad()
def dpmpp_2m(
    denoiser: Callable[[Tensor, Tensor, Tensor], Tensor],
    x_init: Tensor,
    sigmas: Tensor,
    cond: Tensor,
    generator: torch.Generator | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> Tensor:
    """DPM-Solver++(2M) (module doc): x_init (N, V) noise at sigmas[0], sigmas decreasing to 0 -> (N, V)."""
    # The grid is a constant of the sampler (Python floats), so the branches below are static.
    levels = [float(s) for s in sigmas]
    x = x_init
    ones = x.new_ones(x.shape[0])
    previous: Tensor | None = None  # D_{i-1}
    h_previous = 0.0
    for i in range(len(levels) - 1):
        s, s_next = levels[i], levels[i + 1]
        denoised = denoiser(x, s * ones, cond)
        if s_next == 0:
            x = denoised  # the ODE's end point is the data prediction itself
        else:
            h = math.log(s / s_next)
            if previous is None:
                d = denoised  # first step: DPM-Solver++(1), i.e. DDIM
            else:
                r = h_previous / h
                d = (1 + 1 / (2 * r)) * denoised - previous / (2 * r)
            x = (s_next / s) * x - math.expm1(-h) * d
            previous, h_previous = denoised, h
        if callback is not None:
            callback({"i": i, "x": x, "sigma": s, "denoised": denoised})
    return x


def logsnr_grid(sigmas: Tensor) -> Tensor:
    """A grid with the same length, first and last nonzero level as ``sigmas``, evenly spaced in ln sigma,
    then 0: sigma_i = sigma_max (sigma_min / sigma_max)^(i / (n - 1))."""
    levels = [float(s) for s in sigmas if float(s) > 0]
    n = len(levels)
    if n == 1:
        spaced = torch.tensor(levels, dtype=torch.float64)
    else:
        spaced = torch.exp(torch.linspace(math.log(levels[0]), math.log(levels[-1]), n, dtype=torch.float64))
    return torch.cat([spaced, torch.zeros(len(sigmas) - n, dtype=torch.float64)]).to(sigmas.dtype)


@torch.no_grad()
def dpmpp_2m_logsnr(
    denoiser: Callable[[Tensor, Tensor, Tensor], Tensor],
    x_init: Tensor,
    sigmas: Tensor,
    cond: Tensor,
    generator: torch.Generator | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> Tensor:
    """DPM-Solver++(2M) on ``logsnr_grid(sigmas)`` (module doc); x_init (N, V) at sigmas[0] -> (N, V)."""
    return dpmpp_2m(denoiser, x_init, logsnr_grid(sigmas), cond, generator, callback)
