"""Consistency distillation of an EDM teacher (Song, Dhariwal, Chen & Sutskever, arXiv 2303.01469): a student
f(x; sigma) that maps any point of a probability-flow ODE trajectory to the trajectory's end, so one call
(or a few) draws a sample.

* ``ConsistencyEDM``: the student, any backbone in the boundary-respecting preconditioning of the paper
  (sec. 3 and appendix C, with sigma_data = s_d):
  c_skip = s_d^2 / ((sigma - sigma_min)^2 + s_d^2), c_out = s_d (sigma - sigma_min) / sqrt(sigma^2 + s_d^2),
  so f(x; sigma_min) = x exactly; c_in and c_noise are EDM's, so a teacher's backbone weights start it.
* ``consistency_distillation_loss``: Algorithm 2 with the teacher's Heun step between adjacent levels of
  the EDM grid of ``n_grid`` levels, the target evaluated without gradient (iCT, arXiv 2310.14189, drops
  the target EMA) and weighted by 1 / (sigma_{n+1} - sigma_n) (iCT's lambda).
* ``consistency``: the multistep sampler (Algorithm 1) in ``caloforge.diffusion.samplers``' signature, and
  ``consistency_sigmas``, its grid.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from caloforge.diffusion.edm import EDM

__all__ = ["ConsistencyEDM", "consistency", "consistency_distillation_loss", "consistency_sigmas"]


class ConsistencyEDM(EDM):
    """A consistency function f(x; sigma | cond) around a backbone (module doc); same weights as ``EDM``.

    Shapes: x (N, V) in model space, sigma (N,), cond (N, C).
    """

    def forward(self, x: Tensor, sigma: Tensor, cond: Tensor) -> Tensor:
        sd, s_min = self.config.sigma_data, self.config.sigma_min
        s = sigma.to(x.dtype)[:, None]  # (N, 1)
        c_skip = sd**2 / ((s - s_min) ** 2 + sd**2)
        c_out = sd * (s - s_min) / torch.sqrt(s**2 + sd**2)
        c_in = 1 / torch.sqrt(s**2 + sd**2)
        c_noise = torch.log(sigma) / 4  # (N,)
        return c_skip * x + c_out * self.backbone(c_in * x, c_noise, cond)


def consistency_sigmas(edm: EDM, n_steps: int) -> Tensor:
    """The multistep sampler's levels (n_steps + 1,): the first n_steps of the EDM grid of n_steps + 1 levels
    (sigma_max first; sigma_min left out, where f is the identity), then 0."""
    grid = edm.sigmas(n_steps + 1)  # (n_steps + 2,): n_steps + 1 levels, then 0
    return torch.cat([grid[:n_steps], grid.new_zeros(1)])


def consistency_distillation_loss(
    student: ConsistencyEDM,
    teacher: EDM,
    x0: Tensor,
    cond: Tensor,
    n_grid: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Consistency-distillation loss (module doc), averaged over showers and voxels.

    x0 (N, V) clean data in model space, cond (N, C); the grid is ``teacher.sigmas(n_grid)`` (n_grid levels
    from sigma_max down to sigma_min). For each shower a level n + 1 is drawn uniformly, x_{n+1} = x0 +
    sigma_{n+1} z, the teacher takes one Heun step to sigma_n, and the student at (x_{n+1}, sigma_{n+1}) is
    pulled towards the student at the teacher's point (no gradient).
    """
    grid = teacher.sigmas(n_grid)[:-1].to(x0.device)  # (n_grid,) decreasing, sigma_min last
    n = x0.shape[0]
    upper = torch.randint(0, n_grid - 1, (n,), device=x0.device, generator=generator)  # index of sigma_{n+1}
    s_hi, s_lo = grid[upper], grid[upper + 1]  # sigma_{n+1} > sigma_n, (N,)
    noise = torch.randn(x0.shape, device=x0.device, generator=generator, dtype=x0.dtype)
    x_hi = x0 + s_hi[:, None] * noise
    with torch.no_grad():
        d_hi = (x_hi - teacher(x_hi, s_hi, cond)) / s_hi[:, None]
        x_euler = x_hi + (s_lo - s_hi)[:, None] * d_hi
        d_lo = (x_euler - teacher(x_euler, s_lo, cond)) / s_lo[:, None]
        x_lo = x_hi + (s_lo - s_hi)[:, None] * 0.5 * (d_hi + d_lo)  # Heun
        target = student(x_lo, s_lo, cond)
    weight = 1.0 / (s_hi - s_lo)  # (N,)
    return (weight[:, None] * (student(x_hi, s_hi, cond) - target) ** 2).mean()


@torch.no_grad()
def consistency(
    denoiser: Any,
    x_init: Tensor,
    sigmas: Tensor,
    cond: Tensor,
    generator: torch.Generator | None = None,
    callback: Any = None,
    noise: Tensor | None = None,
) -> Tensor:
    """Multistep consistency sampling (Algorithm 1): f at sigma_0 = sigma_max, then for each further level
    sigma_i re-noise the estimate to sigma_i and apply f again. ``noise`` (N, n, *x.shape[1:]) standard
    normal, slice i for step i (step 0 uses none), replaces the draws from ``generator`` (ONNX export).
    The grid (``consistency_sigmas``) ends in 0, which is not visited."""
    levels = [float(s) for s in sigmas]
    s_min = float(getattr(getattr(denoiser, "config", None), "sigma_min", 0.002))
    ones = x_init.new_ones(x_init.shape[0])
    x = denoiser(x_init, levels[0] * ones, cond)
    for i, s in enumerate(levels[1:-1], start=1):
        if noise is not None:
            fresh = noise[:, i]
        else:
            where = generator.device if generator is not None else x.device
            fresh = torch.randn(x.shape, generator=generator, device=where, dtype=x.dtype).to(x.device)
        x = denoiser(x + (s**2 - s_min**2) ** 0.5 * fresh, s * ones, cond)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": s, "denoised": x})
    return x
