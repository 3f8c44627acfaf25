"""Family ``flow``: CaloFlow-style normalizing flows with exact likelihood and teacher-student distillation.

Two flows (Krause & Shih, CaloFlow, arXiv 2106.05285 and 2110.11377):

* flow I draws the shower's standardised layer-energy vector y (1 + L,) given the conditions (the run's
  ``preprocess.layer_energies`` vector; without it there is no flow I);
* flow II draws the preprocessed shower x (V,) given the conditions and y, layer by layer (each layer
  conditioned on the previous one, as L2LFlows) on regular readouts, or all voxels at once.

``role: teacher`` (the default) trains masked autoregressive flows (MAF: exact density in one pass per
transform, slow sampling) by maximum likelihood; ``role: student`` trains inverse autoregressive flows (IAF:
one-pass sampling) from a teacher checkpoint (``caloforge train --family flow --teacher TEACHER.ckpt``) by
probability-density distillation with matched latents. Both are ``ShowerSampler``s with normal noise, so
generation and ONNX export are the generic ones. ``FlowSampler.log_prob`` and ``likelihood.
shower_log_likelihoods`` give exact log-likelihoods of showers (a quality score).

Layout: ``sampler.py``, ``likelihood.py`` (no Lightning), ``module.py`` (the LightningModule, imported only to
train); the flows themselves are ``caloforge.models.flows``. Design notes: docs/families/flow.md.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from caloforge.errors import InputError, UnknownNameError
from caloforge.families import Family
from caloforge.models.flows import FLOW_SIZES, FlowNetConfig

__all__ = ["FAMILY", "ROLES", "SHAPES", "FlowConfig"]

ROLES = ("teacher", "student")
SHAPES = ("auto", "layers", "whole")


@dataclass
class FlowConfig:
    """The ``model`` section of a ``flow`` run.

    Args:
        role: ``teacher`` (MAF, maximum likelihood; needs no teacher) or ``student`` (IAF distilled from
            ``--teacher``, a ``flow`` teacher checkpoint trained on the same data).
        size: named size preset (``caloforge.models.flows.FLOW_SIZES``: tiny, small, base).
        transforms, hidden, depth: override the preset for both flows (``None``: the preset's); a student
            must have its teacher's ``transforms`` (transform j of the student mirrors K - 1 - j of it).
        layer_hidden: hidden units of flow I (``None``: the preset's).
        splines: how many transforms of each flow, counted from the data end, are rational-quadratic
            splines rather than affine (0, the default: all affine). A spline gives a voxel its two modes,
            empty or hit, which an affine flow smears into faint hits; use it with ``preprocess.standardize:
            global`` so the values lie inside the splines' interval. A student may differ from its teacher
            here. bins, bound: the splines' bins on [-bound, bound] (standardised units).
        shape: flow II over ``layers`` (one layer at a time, conditioned on the previous layer; regular
            readouts only), over the ``whole`` shower, or ``auto`` (layers when the readout is regular and
            has more than one layer).
        dequantize: spread each empty cell uniformly below the readout threshold in training, so the flow
            never fits a point mass (CaloFlow adds uniform noise for the same reason); generated cells
            there read zero as before.
        distill_x_weight, distill_z_weight: student losses: matched states of teacher data -> latent ->
            student (the "x" side) and student sample -> teacher latent (the "z" side). A zero weight skips
            that side's computation (the z side is about 60 % of a distillation step).
    """

    role: str = "teacher"
    size: str = "small"
    transforms: int | None = None
    hidden: int | None = None
    depth: int | None = None
    layer_hidden: int | None = None
    splines: int = 0
    bins: int = 8
    bound: float = 6.0
    shape: str = "auto"
    dequantize: bool = True
    distill_x_weight: float = 1.0
    distill_z_weight: float = 1.0

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ``InputError`` for settings no model can be built with (also after in-place changes)."""
        if self.role not in ROLES:
            raise InputError(None, "model.role", f"is '{self.role}'", " or ".join(ROLES))
        if self.shape not in SHAPES:
            raise InputError(None, "model.shape", f"is '{self.shape}'", ", ".join(SHAPES))
        if self.size not in FLOW_SIZES:
            raise UnknownNameError("flow size", self.size, FLOW_SIZES)
        for name in ("distill_x_weight", "distill_z_weight"):
            if getattr(self, name) < 0:
                raise InputError(None, f"model.{name}", f"is {getattr(self, name)}", "a number >= 0")
        for net in self.resolved():
            net.check()

    def resolved(self) -> tuple[FlowNetConfig, FlowNetConfig]:
        """(flow I, flow II) sizes: the preset with this section's overrides."""
        layer, shape = FLOW_SIZES[self.size]
        common = {k: v for k, v in (("transforms", self.transforms), ("depth", self.depth)) if v is not None}
        splines = {"splines": self.splines, "bins": self.bins}
        layer_hidden = {} if self.layer_hidden is None else {"hidden": self.layer_hidden}
        shape_hidden = {} if self.hidden is None else {"hidden": self.hidden}
        return (replace(layer, **common, **splines, **layer_hidden, bound=self.bound),
                replace(shape, **common, **splines, **shape_hidden, bound=self.bound))


FAMILY = Family(
    name="flow",
    summary="normalizing flows (CaloFlow): MAF teacher with exact likelihood, IAF student distilled from it",
    config=FlowConfig,
    build_module="caloforge.families.flow.module:FlowModule",
    build_sampler="caloforge.families.flow.sampler:FlowSampler",
    representation="voxels",
    sample_options=(),
    takes_teacher=True,
    tiny={"size": "tiny"},
)
