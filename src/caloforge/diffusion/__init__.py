"""The generative process: EDM preconditioning and loss around any backbone, and samplers."""

from caloforge.diffusion.edm import EDM, EDMConfig
from caloforge.diffusion.samplers import SAMPLERS, euler, get_sampler, heun, stochastic

__all__ = ["EDM", "SAMPLERS", "EDMConfig", "euler", "get_sampler", "heun", "stochastic"]
