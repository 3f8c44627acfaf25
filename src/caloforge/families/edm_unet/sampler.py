"""The ``edm-unet`` sampler: ``edm-dit``'s (same noise spec, solvers, layer-energy stage, denoiser graph)
with the U-Net, behind GLaM on an irregular geometry, as the denoiser's backbone. No Lightning."""

from __future__ import annotations

from typing import Any

from torch import nn

from caloforge.diffusion import EDM
from caloforge.families.edm_dit.sampler import EdmDitSampler
from caloforge.families.edm_unet import EdmUnetConfig
from caloforge.geometry import CylindricalGeometry
from caloforge.models.glam import GLaM, GLaMBackbone
from caloforge.models.unet import UNet

__all__ = ["EdmUnetSampler", "build_unet_denoiser"]


def build_unet_denoiser(
    config: EdmUnetConfig, geometry: CylindricalGeometry, cond_dim: int, layers: bool
) -> EDM:
    """The U-Net in EDM preconditioning, freshly initialised; on an irregular geometry behind GLaM.

    With the layer-energy stage (``layers``) the U-Net is conditioned on the stage's standardised vector
    too (as the DiT): condition = the ``cond_dim`` vector followed by the 1 + L layer values.
    """
    cond = cond_dim + (1 + geometry.n_layers if layers else 0)
    backbone: nn.Module
    if geometry.is_regular:
        backbone = UNet(config.unet, geometry, cond)
    else:
        glam = GLaM(geometry, config.glam)
        backbone = GLaMBackbone(glam, UNet(config.unet, glam.latent, cond))
    return EDM(backbone, config.diffusion)


class EdmUnetSampler(EdmDitSampler):
    """``EdmDitSampler`` with the U-Net denoiser (``build_unet_denoiser``); see ``caloforge.families.edm_dit``
    for the noise spec (``noise`` (V,), ``layer_noise``, ``u``, the stochastic solver's step noise)."""

    @staticmethod
    def make_denoiser(config: Any, geometry: CylindricalGeometry, cond_dim: int, layers: bool) -> EDM:
        """The U-Net in EDM preconditioning (``build_unet_denoiser``)."""
        return build_unet_denoiser(config, geometry, cond_dim, layers)
