"""The ``edm-dit`` LightningModule: the EDM losses of the DiT and of the layer-energy stage (when on)."""

from __future__ import annotations

import torch
from torch import Tensor

from caloforge.context import RunContext
from caloforge.families.edm_dit import EdmDitConfig
from caloforge.families.edm_dit.sampler import build_denoiser, build_layer_denoiser, shape_condition
from caloforge.optim import build_optimizer
from caloforge.runconfig import RunConfig
from caloforge.training import FamilyModule

__all__ = ["EdmDitModule"]


class EdmDitModule(FamilyModule):
    """Trains ``edm`` (and ``layer_edm``, whose loss times ``layers.loss_weight`` is added) with the EDM loss;
    ``ema`` and ``layer_ema`` are their moving averages, which the sampler uses.

    Batches are ``caloforge.training.voxel_dataset``'s: x0 (B, V), cond (B, C)[, layers (B, 1 + L)].
    """

    def __init__(self, config: RunConfig, context: RunContext) -> None:
        super().__init__(config, context)
        model: EdmDitConfig = config.model
        model.check()
        geometry, cond_dim = context.geometry, context.spec.dim
        has_layers = context.preprocessor.layer_mean is not None
        with torch.random.fork_rng():  # initial weights from the run's seed without touching global state
            torch.manual_seed(config.train.seed)
            self.edm = build_denoiser(model, geometry, cond_dim, has_layers)
            self.layer_edm = build_layer_denoiser(model, geometry.n_layers, cond_dim) if has_layers else None
        self.ema = self.average(self.edm)
        self.layer_ema = None if self.layer_edm is None else self.average(self.layer_edm)

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        x0, cond = batch[0], batch[1]
        layers = batch[2] if self.layer_edm is not None else None
        noise = self.noise_generator()
        loss = self.edm.loss(x0, shape_condition(cond, layers), generator=noise)
        if self.layer_edm is not None and layers is not None:
            draws = self.config.model.layers.noise_draws
            layer_loss = self.layer_edm.loss(layers.repeat(draws, 1), cond.repeat(draws, 1), generator=noise)
            self.log("train/layer_loss", layer_loss, on_step=True, on_epoch=False)
            loss = loss + self.config.model.layers.loss_weight * layer_loss
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)  # type: ignore[union-attr]
        return loss

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        stages = [self.edm] if self.layer_edm is None else [self.edm, self.layer_edm]
        optimizer = build_optimizer((p for stage in stages for p in stage.parameters()), self.config.optim)
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
