"""The registry of model families (``../shared/DESIGN.md``, "The family contract").

A family is one module (or package) under ``families/`` that defines ``FAMILY``, a ``Family``, plus one
line in ``_REGISTRY`` below. Families are imported when first asked for, and a family names its module and
sampler classes as ``"package.module:Class"`` strings imported when first built, so a family's own
dependencies (and Lightning, which only the module needs) load only when that family is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from os import PathLike
from typing import TYPE_CHECKING, Any

from caloforge.errors import InputError, UnknownNameError

if TYPE_CHECKING:
    import lightning as L

    from caloforge.context import RunContext
    from caloforge.geometry import CylindricalGeometry
    from caloforge.runconfig import RunConfig
    from caloforge.sampler import ShowerSampler

__all__ = ["REPRESENTATIONS", "Family", "family_names", "get_family", "register"]

REPRESENTATIONS = ("voxels", "points")  # what a family trains on (caloforge.datamodule.REPRESENTATIONS)


@dataclass(frozen=True)
class Family:
    """A generative model family.

    Attributes:
        name: the registry name (``caloforge train --family NAME``).
        summary: one line for ``caloforge families``.
        config: the dataclass of the run config's ``model`` section.
        build_module: ``(run_config, context[, teacher]) -> LightningModule`` owning losses and optimisers
            (manual optimisation allowed), or its ``"package.module:Class"`` path; ``teacher`` (a trained
            ``ShowerSampler`` for distillation, or ``None``) is passed only when ``takes_teacher``. The
            module must offer ``sampler_state_dict()`` (the weights the sampler loads) and
            ``load_sampler_state_dict(state)`` (the inverse, for ``--init-from``). Build it with ``module``.
        build_sampler: ``(model_config, context, **options) -> ShowerSampler`` (``caloforge.sampler``), with
            no Lightning import, or its ``"package.module:Class"`` path; ``options`` are sampling settings
            named in ``sample_options``. Build it with ``sampler``.
        representation: the data the module trains on (``REPRESENTATIONS``).
        sample_options: the option names ``build_sampler`` takes (``n_steps``, ``sampler``, ...).
        takes_teacher: whether ``build_module`` uses a teacher (``caloforge train --teacher``).
        tiny: a ``model`` section small enough to train in seconds on a CPU on a toy geometry of
            4 layers x 4 alpha x 2 radial bins (the conformance suite's).
    """

    name: str
    summary: str
    config: type[Any]
    build_module: Callable[..., L.LightningModule] | str
    build_sampler: Callable[..., ShowerSampler] | str
    representation: str = "voxels"
    sample_options: tuple[str, ...] = ()
    takes_teacher: bool = False
    tiny: dict[str, Any] = field(default_factory=dict)

    @property
    def readout_free(self) -> bool:
        """Whether the weights know no readout cells (point clouds in physical coordinates, voxelised only
        at the end), so a model moves to another readout of its detector: ``caloforge generate --readout``
        and ``caloforge train --init-from`` across readouts."""
        return self.representation == "points"

    def check_readout(self, trained: CylindricalGeometry, wanted: CylindricalGeometry,
                      source: str | PathLike[str] | None, key: str) -> None:
        """Raise ``InputError`` (naming ``source`` and ``key``) unless a model of this family trained on
        readout ``trained`` can run on ``wanted``: the same readout, or, for a readout-free family, another
        readout of the same detector (``CylindricalGeometry.detector_difference``)."""
        if trained == wanted:
            return
        if not self.readout_free:
            raise InputError(source, key, f"is '{trained.name}'",
                             f"'{wanted.name}': family '{self.name}' learns its readout's cells, so it runs "
                             "on the readout it was trained on (readout-free families, e.g. mdma-gan, move)")
        difference = trained.detector_difference(wanted)
        if difference is not None:
            raise InputError(source, key, f"is '{trained.name}', and '{wanted.name}' is another detector "
                             f"({difference})", "another readout of the same layers, medium and radius")

    def module(
        self, run_config: RunConfig, context: RunContext, teacher: ShowerSampler | None = None
    ) -> L.LightningModule:
        """``build_module``'s LightningModule for a run; the teacher goes only to families that take one."""
        self.check_teacher(teacher is not None)
        build = _resolve(self.build_module)
        module: L.LightningModule = (build(run_config, context, teacher) if self.takes_teacher
                                     else build(run_config, context))
        return module

    def check_teacher(self, given: bool) -> None:
        """Raise ``InputError`` when a teacher is given to a family that does not distil."""
        if given and not self.takes_teacher:
            raise InputError(None, "--teacher", f"was given, but family '{self.name}' does not distil",
                             "a family that takes a teacher (see 'caloforge families')")

    def sampler(self, model_config: Any, context: RunContext, **options: Any) -> ShowerSampler:
        """``build_sampler`` after checking the option names; options set to ``None`` are left out."""
        given = {k: v for k, v in options.items() if v is not None}
        unknown = sorted(set(given) - set(self.sample_options))
        if unknown:
            takes = ", ".join(self.sample_options) or "none"
            raise InputError(None, unknown[0], f"is not a sampling option of family '{self.name}'",
                             f"one of its options: {takes}")
        sampler: ShowerSampler = _resolve(self.build_sampler)(model_config, context, **given)
        return sampler


def _resolve(target: Callable[..., Any] | str) -> Callable[..., Any]:
    """A builder: the callable itself, or the attribute a ``"package.module:attribute"`` path names."""
    if callable(target):
        return target
    module, _, attribute = target.partition(":")
    built: Callable[..., Any] = getattr(importlib.import_module(module), attribute)
    return built


# name -> module defining FAMILY. Adding a family: one module under families/ and one line here.
_REGISTRY: dict[str, str] = {
    "edm-dit": "caloforge.families.edm_dit",
    "vq-gpt": "caloforge.families.vq_gpt",
    "edm-unet": "caloforge.families.edm_unet",
    "mdma-gan": "caloforge.families.mdma_gan",
    "flow": "caloforge.families.flow",
}


def register(name: str, module: str) -> None:
    """Register family ``name`` defined as ``FAMILY`` in the importable ``module`` (e.g. a plug-in)."""
    _REGISTRY[name] = module


def family_names() -> list[str]:
    """The registered family names, in registration order."""
    return list(_REGISTRY)


def get_family(name: str) -> Family:
    """The family registered as ``name``; imports its module on first use."""
    if name not in _REGISTRY:
        raise UnknownNameError("model family", name, _REGISTRY)
    family = importlib.import_module(_REGISTRY[name]).FAMILY
    if not isinstance(family, Family) or family.name != name:
        raise TypeError(f"{_REGISTRY[name]}.FAMILY is not the Family '{name}'")
    if family.representation not in REPRESENTATIONS:
        raise TypeError(f"family '{name}': representation '{family.representation}' is not one of "
                        f"{REPRESENTATIONS}")
    return family
