"""Family ``edm-unet``: a cylindrical 3D U-Net in EDM preconditioning (CaloDiffusion's backbone), with GLaM
for irregular readouts and the same optional layer-energy stage as ``edm-dit``.

Everything but the backbone is ``edm-dit``'s: the EDM loss and preconditioning
(``caloforge.diffusion.edm``), the solvers and few-step samplers (``caloforge.diffusion``; sample
options ``n_steps`` and ``sampler``), the layer-energy stage and its rescaling, the noise spec and the
extra ``denoiser`` graph. The sampler and module subclass ``edm-dit``'s and replace only the denoiser's
builder. The backbone is ``caloforge.models.unet.UNet``; on a geometry whose layers differ (CaloChallenge
dataset 1) it runs on GLaM's regular grid (``caloforge.models.glam``), the maps being part of the
denoiser, so of the sampler, its weights and its ONNX graph (docs/families/edm-unet.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from caloforge.diffusion import EDMConfig
from caloforge.families import Family
from caloforge.families.edm_dit import DistillConfig, SampleConfig, check_sampling
from caloforge.models import LayerModelConfig
from caloforge.models.glam import GLaMConfig
from caloforge.models.unet import UNetConfig

__all__ = ["FAMILY", "EdmUnetConfig"]


@dataclass
class EdmUnetConfig:
    """The ``model`` section of an ``edm-unet`` run.

    Args:
        unet: the backbone (size preset and overrides, down-sampling of the layer axis, geometric
            channels, dropout).
        glam: the geometry latent mapping (used only when the geometry's layers differ).
        layers: the layer-energy stage (used when ``preprocess.layer_energies`` is on).
        diffusion: EDM noise distribution and sampling grid.
        sample: default sampler and steps.
        distill: few-step distillation of a teacher (``--teacher``).
    """

    unet: UNetConfig = field(default_factory=UNetConfig)
    glam: GLaMConfig = field(default_factory=GLaMConfig)
    layers: LayerModelConfig = field(default_factory=LayerModelConfig)
    diffusion: EDMConfig = field(default_factory=EDMConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ``InputError`` for settings no model can be built with (also after in-place changes)."""
        self.layers.check()
        self.unet.resolved()  # an unknown size preset fails here, not when the model is built
        check_sampling(self)


FAMILY = Family(
    name="edm-unet",
    summary="cylindrical 3D U-Net (EDM, CaloDiffusion-style) with GLaM for irregular readouts",
    config=EdmUnetConfig,
    build_module="caloforge.families.edm_unet.module:EdmUnetModule",
    build_sampler="caloforge.families.edm_unet.sampler:EdmUnetSampler",
    representation="voxels",
    sample_options=("n_steps", "sampler", "fill_layers"),
    takes_teacher=True,
    tiny={"unet": {"size": "tiny"}, "layers": {"width": 16, "depth": 1}, "sample": {"n_steps": 2}},
)
