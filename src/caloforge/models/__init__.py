"""Backbones: networks that map (noisy showers, noise feature, condition vector) to showers' shape.

A backbone never knows about noise schedules; the generative process in ``caloforge.diffusion`` wraps it.
"""

from caloforge.models.dit import DIT_SIZES, DiT, DiTConfig, DiTSize
from caloforge.models.layer_mlp import LayerMLP, LayerModelConfig

__all__ = ["DIT_SIZES", "DiT", "DiTConfig", "DiTSize", "LayerMLP", "LayerModelConfig"]
