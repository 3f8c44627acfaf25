"""EDM: the noise schedule, preconditioning and training loss of Karras et al., arXiv 2206.00364.

``EDM`` wraps any backbone ``F(x_in, c_noise, cond)`` into the denoiser (eq. 7, Table 1)

    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma), cond)
    c_skip = s_d^2 / (sigma^2 + s_d^2),  c_out = sigma s_d / sqrt(sigma^2 + s_d^2),
    c_in = 1 / sqrt(sigma^2 + s_d^2),    c_noise = ln(sigma) / 4,

trains it with the loss (eq. 8) weighted by lambda(sigma) = (sigma^2 + s_d^2) / (sigma s_d)^2 with
ln(sigma) ~ N(P_mean, P_std^2), and owns the sampling grid (eq. 5):
sigma_i = (sigma_max^(1/rho) + i / (n - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, then 0.
The data it sees are standardised (``caloforge.preprocess``), so s_d = 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["EDM", "EDMConfig"]


@dataclass
class EDMConfig:
    """EDM hyper-parameters (Karras et al. 2022, Table 1; defaults are the paper's)."""

    sigma_data: float = 1.0
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0


class EDM(nn.Module):
    """Preconditioned denoiser around a backbone; ``forward(x, sigma, cond)`` is D(x; sigma).

    Shapes: x (N, V) in model space, sigma (N,), cond (N, C).
    """

    def __init__(self, backbone: nn.Module, config: EDMConfig | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = config or EDMConfig()

    def forward(self, x: Tensor, sigma: Tensor, cond: Tensor) -> Tensor:
        sd = self.config.sigma_data
        s = sigma.to(x.dtype)[:, None]  # (N, 1)
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / torch.sqrt(s**2 + sd**2)
        c_in = 1 / torch.sqrt(s**2 + sd**2)
        c_noise = torch.log(sigma) / 4  # (N,)
        return c_skip * x + c_out * self.backbone(c_in * x, c_noise, cond)

    def loss(self, x0: Tensor, cond: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Weighted denoising loss (eq. 8), averaged over showers and voxels; x0 (N, V) clean data."""
        cfg = self.config
        n = x0.shape[0]
        log_sigma = cfg.p_mean + cfg.p_std * torch.randn(n, device=x0.device, generator=generator)
        sigma = log_sigma.exp()
        noise = torch.randn(x0.shape, device=x0.device, generator=generator, dtype=x0.dtype)
        denoised = self(x0 + sigma[:, None] * noise, sigma, cond)
        weight = (sigma**2 + cfg.sigma_data**2) / (sigma * cfg.sigma_data) ** 2  # lambda(sigma), (N,)
        return (weight[:, None] * (denoised - x0) ** 2).mean()

    def sigmas(self, n_steps: int) -> Tensor:
        """The sampling grid (n_steps + 1,): n_steps noise levels from sigma_max down to sigma_min, then 0."""
        if n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {n_steps}")
        cfg = self.config
        ramp = (
            torch.linspace(0, 1, n_steps, dtype=torch.float64)
            if n_steps > 1
            else torch.zeros(1, dtype=torch.float64)
        )
        lo, hi = cfg.sigma_min ** (1 / cfg.rho), cfg.sigma_max ** (1 / cfg.rho)
        sigmas = (hi + ramp * (lo - hi)) ** cfg.rho
        return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)]).float()

    def prior(
        self,
        shape: tuple[int, ...],
        n_steps: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """The sampler's starting point: standard normal noise scaled by the grid's first sigma."""
        return torch.randn(shape, generator=generator, device=device) * self.sigmas(n_steps)[0]
