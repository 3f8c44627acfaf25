"""The generative process: EDM preconditioning and loss around any backbone, and samplers."""

from caloforge.diffusion.consistency import ConsistencyEDM, consistency_distillation_loss, consistency_sigmas
from caloforge.diffusion.edm import EDM, EDMConfig
from caloforge.diffusion.samplers import SAMPLERS, euler, get_sampler, heun, stochastic

__all__ = ["EDM", "SAMPLERS", "ConsistencyEDM", "EDMConfig", "consistency_distillation_loss",
           "consistency_sigmas", "euler", "get_sampler", "heun", "stochastic"]
