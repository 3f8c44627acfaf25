"""The ``edm-unet`` LightningModule: ``edm-dit``'s losses, stages and averages around the U-Net denoiser."""

from __future__ import annotations

from typing import Any

from caloforge.diffusion import EDM
from caloforge.families.edm_dit.module import EdmDitModule
from caloforge.families.edm_unet.sampler import build_unet_denoiser
from caloforge.geometry import CylindricalGeometry

__all__ = ["EdmUnetModule"]


class EdmUnetModule(EdmDitModule):
    """Trains the U-Net (with its GLaM maps on an irregular geometry: they are denoiser weights, so the
    diffusion loss trains them and the EMA averages them) and the layer-energy stage, as ``EdmDitModule``."""

    @staticmethod
    def make_denoiser(config: Any, geometry: CylindricalGeometry, cond_dim: int, layers: bool) -> EDM:
        """The U-Net in EDM preconditioning (``build_unet_denoiser``)."""
        return build_unet_denoiser(config, geometry, cond_dim, layers)
