"""Backbone of the layer-energy stage: a residual MLP over a shower's layer vector.

The stage draws each shower's energy per layer (and E_tot / E_inc) before the DiT draws the voxels, as in
CaloDREAM's and CaloDiffusion's energy-first stages; ``caloforge.preprocess.LayerEnergies`` defines the
vector and rescales the DiT's shower to it. Like the DiT, the backbone knows nothing about noise: EDM
wraps it (``caloforge.training.build_layer_denoiser``) and the same samplers draw from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from caloforge.errors import InputError
from caloforge.models.dit import sinusoidal

__all__ = ["LayerMLP", "LayerModelConfig"]


@dataclass
class LayerModelConfig:
    """Size of the layer-energy stage (used when ``preprocess.layer_energies`` is on).

    Args:
        width: hidden width of the residual MLP.
        depth: residual blocks.
        loss_weight: weight of its EDM loss, added to the DiT's.
        noise_draws: noise levels drawn per shower for its loss each step, so the stage sees
            batch_size x noise_draws examples per step; it costs little beside the DiT.
    """

    width: int = 256
    depth: int = 4
    loss_weight: float = 1.0
    noise_draws: int = 1

    def check(self) -> None:
        """Raise ``InputError`` for settings no stage can be trained with (also after in-place changes)."""
        if self.noise_draws < 1:
            raise InputError(None, "model.layers.noise_draws", f"is {self.noise_draws}", "an integer >= 1")


class LayerMLP(nn.Module):
    """F(y_in, c_noise, cond): y_in (N, D) layer vectors, c_noise (N,), cond (N, C) -> (N, D).

    Input projection of [y_in, sinusoidal(c_noise), cond], ``depth`` pre-norm residual blocks
    (LayerNorm, SiLU, Linear 2x, SiLU, Linear), and a zero-initialised output layer.
    """

    def __init__(self, dim: int, cond_dim: int, config: LayerModelConfig, n_freq: int = 32) -> None:
        super().__init__()
        self.n_freq, width = n_freq, config.width
        self.inp = nn.Linear(dim + n_freq + cond_dim, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(width),
                nn.SiLU(),
                nn.Linear(width, 2 * width),
                nn.SiLU(),
                nn.Linear(2 * width, width),
            )
            for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, y: Tensor, c_noise: Tensor, cond: Tensor) -> Tensor:
        h = self.inp(torch.cat([y, sinusoidal(1000.0 * c_noise, self.n_freq), cond], dim=1))  # (N, W)
        for block in self.blocks:
            h = h + block(h)
        return self.out(torch.nn.functional.silu(self.norm(h)))
