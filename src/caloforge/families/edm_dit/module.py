"""The ``edm-dit`` LightningModule: the EDM losses of the DiT and of the layer-energy stage (when on), or,
for a student (``model.distill.method: consistency`` with ``--teacher``), their consistency-distillation
losses against the teacher (``caloforge.diffusion.consistency``)."""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor

from caloforge.context import RunContext
from caloforge.diffusion import EDM, ConsistencyEDM, consistency_distillation_loss
from caloforge.errors import InputError
from caloforge.families.edm_dit import EdmModelConfig
from caloforge.families.edm_dit.sampler import (
    EdmDitSampler,
    as_distilled,
    build_denoiser,
    build_layer_denoiser,
    shape_condition,
)
from caloforge.geometry import CylindricalGeometry
from caloforge.optim import build_optimizer
from caloforge.runconfig import RunConfig
from caloforge.sampler import ShowerSampler
from caloforge.training import FamilyModule

__all__ = ["EdmDitModule"]


class EdmDitModule(FamilyModule):
    """Trains ``edm`` (and ``layer_edm``, whose loss times ``layers.loss_weight`` is added) with the EDM loss;
    ``ema`` and ``layer_ema`` are their moving averages, which the sampler uses.

    Batches are ``caloforge.datamodule.voxel_batch``'s: x0 (B, V), cond (B, C)[, layers (B, 1 + L)].
    ``make_denoiser`` is the backbone's builder, overridden by families with another backbone (as
    ``EdmDitSampler.make_denoiser``). A student holds its frozen ``teacher`` (the teacher run's sampler)
    and starts from the teacher's weights.
    """

    @staticmethod
    def make_denoiser(config: Any, geometry: CylindricalGeometry, cond_dim: int, layers: bool) -> EDM:
        """The DiT in EDM preconditioning (``build_denoiser``)."""
        return build_denoiser(config, geometry, cond_dim, layers)

    def __init__(self, config: RunConfig, context: RunContext, teacher: ShowerSampler | None = None) -> None:
        super().__init__(config, context)
        model: EdmModelConfig = config.model
        model.check()
        geometry, cond_dim = context.geometry, context.spec.dim
        has_layers = context.preprocessor.has_layer_energies
        with self.seeded():  # initial weights from the run's seed
            self.edm = as_distilled(self.make_denoiser(model, geometry, cond_dim, has_layers), model)
            self.layer_edm = (as_distilled(build_layer_denoiser(model, geometry.n_layers, cond_dim), model)
                              if has_layers else None)
        self.teacher: EdmDitSampler | None = None
        if model.distill.distilled != (teacher is not None):
            raise InputError(None, "--teacher", "is given" if teacher is not None else "is missing",
                             "a teacher exactly when model.distill.method is consistency")
        if teacher is not None:
            self.teacher = _checked_teacher(teacher, self, context).requires_grad_(False).eval()
            self.edm.load_state_dict(self.teacher.denoiser.state_dict())
            if self.layer_edm is not None and self.teacher.layer_denoiser is not None:
                self.layer_edm.load_state_dict(self.teacher.layer_denoiser.state_dict())
        self.ema = self.average(self.edm)
        self.layer_ema = None if self.layer_edm is None else self.average(self.layer_edm)

    def _losses(
        self, batch: tuple[Tensor, ...], noise: torch.Generator, averaged: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """(total loss, layer-stage loss or None) of the networks (of their averages with ``averaged``)."""
        x0, cond = batch[0], batch[1]
        edm, layer_edm = self.edm, self.layer_edm
        if averaged:
            edm = cast(EDM, self.ema.module)
            layer_edm = None if self.layer_ema is None else cast(EDM, self.layer_ema.module)
        layers = batch[2] if layer_edm is not None else None
        if self.teacher is not None:
            return self._distillation_losses(edm, layer_edm, x0, cond, layers, noise)
        loss = edm.loss(x0, shape_condition(cond, layers), generator=noise)
        if layer_edm is None or layers is None:
            return loss, None
        draws = self.config.model.layers.noise_draws
        layer_loss = layer_edm.loss(layers.repeat(draws, 1), cond.repeat(draws, 1), generator=noise)
        return loss + self.config.model.layers.loss_weight * layer_loss, layer_loss

    def _distillation_losses(
        self, edm: EDM, layer_edm: EDM | None, x0: Tensor, cond: Tensor, layers: Tensor | None,
        noise: torch.Generator,
    ) -> tuple[Tensor, Tensor | None]:
        """Consistency-distillation losses of the shower stage (conditioned on the data's layer vector, as
        in training) and of the layer stage against the teacher's."""
        assert self.teacher is not None
        n_grid = self.config.model.distill.n_grid
        loss = consistency_distillation_loss(cast(ConsistencyEDM, edm), self.teacher.denoiser, x0,
                                             shape_condition(cond, layers), n_grid, noise)
        if layer_edm is None or layers is None or self.teacher.layer_denoiser is None:
            return loss, None
        layer_loss = consistency_distillation_loss(cast(ConsistencyEDM, layer_edm),
                                                   self.teacher.layer_denoiser, layers, cond, n_grid, noise)
        return loss + self.config.model.layers.loss_weight * layer_loss, layer_loss

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        loss, layer_loss = self._losses(batch, self.noise_generator())
        if layer_loss is not None:
            self.log("train/layer_loss", layer_loss, on_step=True, on_epoch=False)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)  # type: ignore[union-attr]
        return loss

    def validation_loss(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        """The EDM loss of the averaged networks (the ones that generate) with noise levels and noise drawn
        from a generator seeded by the batch index, so every validation scores the same draws."""
        noise = torch.Generator(device=batch[0].device).manual_seed(batch_idx)
        return self._losses(batch, noise, averaged=True)[0]

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        stages = [self.edm] if self.layer_edm is None else [self.edm, self.layer_edm]
        optimizer = build_optimizer((p for stage in stages for p in stage.parameters()), self.config.optim,
                                    self.config.train.precision)
        return {"optimizer": optimizer, "lr_scheduler": self.schedule(optimizer)}

    def sampler_state_dict(self) -> dict[str, Tensor]:
        """The averaged weights under the sampler's names (``denoiser.``, ``layer_denoiser.``)."""
        state = {f"denoiser.{k}": v for k, v in self.ema.module.state_dict().items()}
        if self.layer_ema is not None:
            state.update({f"layer_denoiser.{k}": v for k, v in self.layer_ema.module.state_dict().items()})
        return state

    def load_sampler_state_dict(self, state: dict[str, Tensor]) -> None:
        """Start the networks and their averages from a sampler's weights (``--init-from``)."""
        pairs = [("denoiser.", self.edm, self.ema)]
        if self.layer_edm is not None and self.layer_ema is not None:
            pairs.append(("layer_denoiser.", self.layer_edm, self.layer_ema))
        elif any(k.startswith("layer_denoiser.") for k in state):
            raise RuntimeError("the source has a layer-energy stage and this run does not")
        for prefix, network, average in pairs:
            part = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            network.load_state_dict(part)
            average.module.load_state_dict(part)


def _checked_teacher(teacher: ShowerSampler, student: EdmDitModule, context: RunContext) -> EdmDitSampler:
    """The teacher, if it can teach this student: a sampler of the same kind whose networks have the
    student's shapes and whose preprocessing is the student's (trained on the same showers)."""
    if not isinstance(teacher, EdmDitSampler) or teacher.config.distill.distilled:
        raise InputError(None, "--teacher", f"is a {type(teacher).__name__}",
                         f"an undistilled model of the student's family ({type(student).__name__})")
    mine = {k: v.shape for k, v in student.edm.state_dict().items()}
    if {k: v.shape for k, v in teacher.denoiser.state_dict().items()} != mine or (
        (student.layer_edm is None) != (teacher.layer_denoiser is None)
    ):
        raise InputError(None, "--teacher", "has networks of other shapes than the student's",
                         "a teacher whose model section (backbone, layer stage) is the student's")
    ours = dict(context.preprocessor.module().named_buffers())  # the fitted per-voxel mean and std
    theirs = dict(teacher.transform.named_buffers())
    if ours.keys() != theirs.keys() or any(
        ours[k].shape != theirs[k].shape or not torch.allclose(ours[k], theirs[k]) for k in ours
    ):
        raise InputError(None, "--teacher", "was trained on other showers (its fitted preprocessing differs)",
                         "the teacher's own training showers for the student")
    return teacher
