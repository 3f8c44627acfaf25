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

__all__ = ["FAMILY", "EdmDitConfig", "EdmModelConfig", "SampleConfig"]


@dataclass
class SampleConfig:
    """Default sampling for generation from this run (``--steps``/``--sampler`` override)."""

    n_steps: int = 24
    sampler: str = "heun"

    def __post_init__(self) -> None:
        if self.n_steps < 1:
            raise InputError(None, "model.sample.n_steps", f"is {self.n_steps}", "at least 1")
        if self.sampler not in SAMPLERS:
            raise UnknownNameError("sampler", self.sampler, SAMPLERS)


class EdmModelConfig(Protocol):
    """What the EDM sampler and module read of a ``model`` section (``edm-dit``'s, ``edm-unet``'s)."""

    layers: LayerModelConfig
    diffusion: EDMConfig
    sample: SampleConfig

    def check(self) -> None: ...


@dataclass
class EdmDitConfig:
    """The ``model`` section of an ``edm-dit`` run.

    Args:
        dit: the backbone (size preset, patches, per-voxel head).
        layers: the layer-energy stage (used when ``preprocess.layer_energies`` is on).
        diffusion: EDM noise distribution and sampling grid.
        sample: default sampler and steps.
    """

    dit: DiTConfig = field(default_factory=DiTConfig)
    layers: LayerModelConfig = field(default_factory=LayerModelConfig)
    diffusion: EDMConfig = field(default_factory=EDMConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ``InputError`` for settings no model can be built with (also after in-place changes)."""
        self.layers.check()
        self.dit.resolved()  # an unknown size preset fails here, not when the model is built


FAMILY = Family(
    name="edm-dit",
    summary="diffusion transformer (EDM) over voxel patches, with a layer-energy stage; the flagship",
    config=EdmDitConfig,
    build_module="caloforge.families.edm_dit.module:EdmDitModule",
    build_sampler="caloforge.families.edm_dit.sampler:EdmDitSampler",
    representation="voxels",
    sample_options=("n_steps", "sampler"),
    tiny={"dit": {"size": "tiny", "patch_size": [2, 2, 2]}, "layers": {"width": 16, "depth": 1},
          "sample": {"n_steps": 2}},
)

