"""Family ``edm-dit``: a diffusion transformer in EDM preconditioning, with an optional layer-energy stage.

The flagship: the DiT (``caloforge.models.dit``) denoises each shower in the preprocessed voxel space
(``caloforge.preprocess``), trained with the EDM loss of Karras et al. (``caloforge.diffusion.edm``) and
sampled with the ODE/SDE solvers of ``caloforge.diffusion.samplers``. With ``preprocess.layer_energies``
a small MLP diffusion model first draws each shower's layer energies and the DiT is conditioned on them
(docs/decisions.md, "Layer energies").

Layout: ``sampler.py`` (no Lightning: what generation and export run), ``module.py`` (the
LightningModule, imported only to train).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from caloforge.diffusion import SAMPLERS, EDMConfig
from caloforge.errors import InputError, UnknownNameError
from caloforge.families import Family
from caloforge.models import DiTConfig, LayerModelConfig

__all__ = ["FAMILY", "DistillConfig", "EdmDitConfig", "EdmModelConfig", "SampleConfig", "check_sampling"]


@dataclass
class SampleConfig:
    """Default sampling for generation from this run (``--steps``/``--sampler``/``--option`` override).

    ``fill_layers``: with the layer-energy stage, light one cell (the one the shape model came closest to
    lighting) in each layer the stage's draw gives energy but the shape model left empty, instead of
    sharing that layer's energy out over the others (``LayerEnergies.rescale`` with scores). Off by default so
    older runs keep generating the same showers.
    """

    n_steps: int = 24
    sampler: str = "heun"
    fill_layers: bool = False

    def __post_init__(self) -> None:
        if self.n_steps < 1:
            raise InputError(None, "model.sample.n_steps", f"is {self.n_steps}", "at least 1")
        if self.sampler not in SAMPLERS:
            raise UnknownNameError("sampler", self.sampler, SAMPLERS)


@dataclass
class DistillConfig:
    """Few-step distillation of a trained model of the same family (``caloforge train --teacher``).

    Args:
        method: ``none`` (an ordinary run) or ``consistency`` (consistency distillation,
            ``caloforge.diffusion.consistency``; the student starts from the teacher's weights and samples
            with the ``consistency`` sampler in 1 or a few steps).
        n_grid: levels of the teacher's EDM grid between which the loss takes the teacher's Heun step
            (the paper's N).
    """

    method: str = "none"
    n_grid: int = 18

    def __post_init__(self) -> None:
        if self.method not in ("none", "consistency"):
            raise InputError(None, "model.distill.method", f"is {self.method!r}", "none or consistency")
        if self.n_grid < 2:
            raise InputError(None, "model.distill.n_grid", f"is {self.n_grid}", "at least 2 levels")

    @property
    def distilled(self) -> bool:
        return self.method == "consistency"


class EdmModelConfig(Protocol):
    """What the EDM sampler and module read of a ``model`` section (``edm-dit``'s, ``edm-unet``'s)."""

    layers: LayerModelConfig
    diffusion: EDMConfig
    sample: SampleConfig
    distill: DistillConfig

    def check(self) -> None: ...


@dataclass
class EdmDitConfig:
    """The ``model`` section of an ``edm-dit`` run.

    Args:
        dit: the backbone (size preset, patches, per-voxel head).
        layers: the layer-energy stage (used when ``preprocess.layer_energies`` is on).
        diffusion: EDM noise distribution and sampling grid.
        sample: default sampler and steps.
        distill: few-step distillation of a teacher (``--teacher``).
    """

    dit: DiTConfig = field(default_factory=DiTConfig)
    layers: LayerModelConfig = field(default_factory=LayerModelConfig)
    diffusion: EDMConfig = field(default_factory=EDMConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ``InputError`` for settings no model can be built with (also after in-place changes)."""
        self.layers.check()
        self.dit.resolved()  # an unknown size preset fails here, not when the model is built
        check_sampling(self)


def check_sampling(config: EdmModelConfig) -> None:
    """A distilled model samples with the ``consistency`` sampler, and only a distilled one does."""
    if config.distill.distilled != (config.sample.sampler == "consistency"):
        raise InputError(None, "model.sample.sampler", f"is '{config.sample.sampler}' with model.distill."
                         f"method '{config.distill.method}'", "consistency for a distilled model "
                         "(model.distill.method: consistency), another sampler otherwise")


FAMILY = Family(
    name="edm-dit",
    summary="diffusion transformer (EDM) over voxel patches, with a layer-energy stage; the flagship",
    config=EdmDitConfig,
    build_module="caloforge.families.edm_dit.module:EdmDitModule",
    build_sampler="caloforge.families.edm_dit.sampler:EdmDitSampler",
    representation="voxels",
    sample_options=("n_steps", "sampler", "fill_layers"),
    takes_teacher=True,
    tiny={"dit": {"size": "tiny", "patch_size": [2, 2, 2]}, "layers": {"width": 16, "depth": 1},
          "sample": {"n_steps": 2}},
)

