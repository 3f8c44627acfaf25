"""The ``flow`` LightningModule: maximum likelihood for a teacher, density distillation for a student.

Batches are ``caloforge.datamodule.voxel_batch``'s: x (B, V) preprocessed showers, cond (B, C)[, y (B, 1 + L)
the standardised layer vector, present when ``preprocess.layer_energies`` is on, which flow I learns].
Empty cells of x are dequantised with fresh uniforms every step (``sampler.ZeroDequantizer``).

Teacher (MAF): loss = -(log p_I(y | c) + log p_II(x | c, y)) per shower, divided by the dimensions
modelled (nats per dimension, so learning rates carry over between readouts).

Student (IAF), per flow (CaloFlow II, Krause & Shih, arXiv 2110.11377, section 3):

* x side: the teacher maps a training shower x to its latent z through states h_0 = x, ..., h_K = z; the
  student maps that same z back through g_0 = z, ..., g_K; loss mean_j |g_j - h_(K-j)|^2 (the student's
  transform j mirrors the teacher's K - 1 - j, so every intermediate state is matched, and g_K ~ x);
* z side: the student maps fresh z' ~ N(0, 1) to x' in one pass, the frozen teacher maps x' back to z''
  (one pass: its fast direction), loss |z'' - z'|^2; gradients reach the student through the teacher.

Flow II's layer context (the previous layer) is the training shower's own in both (teacher forcing), so all
layers train at once. The teacher is the frozen ``ShowerSampler`` of ``--teacher`` and must be a ``flow``
teacher trained on the same data (same readout, preprocessing and conditions) with the same number of
transforms. Automatic optimisation; the weights generation uses are the moving average.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor

from caloforge.context import RunContext
from caloforge.errors import InputError
from caloforge.families.flow import FlowConfig
from caloforge.families.flow.sampler import FlowSampler, shape_condition
from caloforge.models.flows import AutoregressiveFlow
from caloforge.optim import build_optimizer
from caloforge.runconfig import RunConfig
from caloforge.sampler import ShowerSampler
from caloforge.training import FamilyModule

__all__ = ["FlowModule", "distillation_losses"]


def distillation_losses(
    student: AutoregressiveFlow, teacher: AutoregressiveFlow, x: Tensor, context: Tensor | None,
    generator: torch.Generator, z_side: bool = True,
) -> tuple[Tensor, Tensor]:
    """(x-side, z-side) losses (module doc) of an IAF ``student`` against a MAF ``teacher`` with the same
    number of transforms, on data rows x (N, D) with context (N, C). Without ``z_side`` the z-side loss is
    not computed (zero): it runs both flows once more and back through the teacher, about 60 % of a step."""
    with torch.no_grad():
        taught, _ = teacher.fast_chain(x, context)  # h_0 = x ... h_K = z
    learned, _ = student.fast_chain(taught[-1], context)  # g_0 = z ... g_K ~ x
    k = len(taught) - 1
    x_loss = torch.stack([((learned[j] - taught[k - j]) ** 2).mean() for j in range(1, k + 1)]).mean()
    if not z_side:
        return x_loss, torch.zeros_like(x_loss)
    z = torch.randn(x.shape, generator=generator, device=x.device)
    drawn = student.fast_chain(z, context)[0][-1]
    back, _ = teacher.to_latent(drawn, context)
    return x_loss, ((back - z) ** 2).mean()


class FlowModule(FamilyModule):
    """``flows`` (a ``FlowSampler``: the networks being trained) and ``ema``, their average, which generates;
    a student also holds ``teacher``, frozen (module doc)."""

    def __init__(self, config: RunConfig, context: RunContext, teacher: ShowerSampler | None = None) -> None:
        super().__init__(config, context)
        model: FlowConfig = config.model
        model.check()
        with self.seeded():  # initial weights from the run's seed
            self.flows = FlowSampler(model, context)
        self.ema = self.average(self.flows)
        self.teacher: FlowSampler | None = None
        if model.role == "student":
            self.teacher = _checked_teacher(teacher, self.flows).requires_grad_(False).eval()
        elif teacher is not None:
            raise InputError(None, "--teacher", "was given for a flow with model.role 'teacher'",
                             "model.role: student to distil a teacher (or no --teacher)")
        self.dims = self.flows.shape_flow.n_layers * self.flows.shape_flow.per_layer + (
            0 if self.flows.layer_flow is None else self.flows.layer_flow.features)

    # -- losses
    def _inputs(
        self, flows: FlowSampler, batch: tuple[Tensor, ...], generator: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        x, cond = batch[0], batch[1]
        y = batch[2] if flows.layer_flow is not None else None
        if flows.config.dequantize:
            w = torch.rand(x.shape, generator=generator, device=x.device)
            x = flows.dequantizer(x, cond, w)
        return x, cond, y

    def _losses(
        self, flows: FlowSampler, batch: tuple[Tensor, ...], generator: torch.Generator
    ) -> dict[str, Tensor]:
        x, cond, y = self._inputs(flows, batch, generator)
        model: FlowConfig = self.config.model
        if self.teacher is None:
            layer_part, shape_part = flows.log_prob_parts(x, cond, y)
            loss = -(layer_part + shape_part).mean() / self.dims
            return {"loss": loss, "nll_layers": -layer_part.mean(), "nll_shape": -shape_part.mean()}
        teacher, z_side = self.teacher, model.distill_z_weight > 0
        values, rows = flows.shape_flow.rows(x, shape_condition(cond, y))
        x_loss, z_loss = distillation_losses(flows.shape_flow.flow, teacher.shape_flow.flow, values, rows,
                                             generator, z_side)
        if flows.layer_flow is not None and teacher.layer_flow is not None and y is not None:
            x_layers, z_layers = distillation_losses(flows.layer_flow, teacher.layer_flow, y, cond, generator,
                                                     z_side)
            x_loss, z_loss = x_loss + x_layers, z_loss + z_layers
        loss = model.distill_x_weight * x_loss + model.distill_z_weight * z_loss
        return {"loss": loss, "distill_x": x_loss, "distill_z": z_loss}

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        losses = self._losses(self.flows, batch, self.noise_generator())
        for name, value in losses.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss", on_step=True, on_epoch=False)
        return losses["loss"]

    def validation_loss(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        """The training loss of the averaged flows, dequantisation (and a student's z') drawn from a
        generator seeded by the batch index, so every validation scores the same draws."""
        generator = torch.Generator(device=batch[0].device).manual_seed(batch_idx)
        return self._losses(cast(FlowSampler, self.ema.module), batch, generator)["loss"]

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        optimizer = build_optimizer(self.flows.parameters(), self.config.optim, self.config.train.precision)
        return {"optimizer": optimizer, "lr_scheduler": self.schedule(optimizer)}

    def sampler_state_dict(self) -> dict[str, Tensor]:
        """The averaged flows' weights (the sampler's names)."""
        return dict(self.ema.module.state_dict())

    def load_sampler_state_dict(self, state: dict[str, Tensor]) -> None:
        """Start the flows and their average from a sampler's weights (``--init-from``)."""
        self.flows.load_state_dict(state)
        self.ema.module.load_state_dict(state)


def _checked_teacher(teacher: ShowerSampler | None, student: FlowSampler) -> FlowSampler:
    """The teacher, once it is known to fit ``student`` (else ``InputError``)."""
    if teacher is None:
        raise InputError(None, "model.role", "is 'student', which distils a teacher",
                         "--teacher TEACHER.ckpt (a flow teacher trained on the same data)")
    if not isinstance(teacher, FlowSampler) or teacher.role != "teacher":
        what = f"a flow {teacher.role}" if isinstance(teacher, FlowSampler) else f"a {type(teacher).__name__}"
        raise InputError(None, "--teacher", f"is {what}", "a flow checkpoint with model.role 'teacher'")
    mine, theirs = student.context.to_dict(), teacher.context.to_dict()
    for part in ("geometry", "preprocess", "conditions"):
        if mine[part] != theirs[part]:
            raise InputError(None, "--teacher", f"was fitted with other {part} than this run",
                             "a teacher trained on the same data with the same preprocess settings")
    if teacher.config.resolved()[1].transforms != student.config.resolved()[1].transforms:
        raise InputError(None, "model.transforms", f"is {student.config.resolved()[1].transforms}",
                         f"{teacher.config.resolved()[1].transforms}, the teacher's (matched states)")
    if teacher.shape_flow.n_layers != student.shape_flow.n_layers:
        raise InputError(None, "model.shape", f"is '{student.config.shape}'",
                         f"the teacher's ('{teacher.config.shape}')")
    return teacher
