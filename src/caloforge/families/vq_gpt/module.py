"""The ``vq-gpt`` LightningModule: stage 1 (the VQ-VAE) then stage 2 (the GPT prior) in one run.

Manual optimisation with one optimiser and one learning-rate schedule per stage, exactly one optimiser step
per batch (so ``global_step`` counts batches). The stage is a saved buffer: it turns from 1 to 2 once,
when the run's progress (the larger of global_step / max_steps and the time budget spent, as the shared
schedule uses) reaches ``stage1_fraction``, and never back, so a resumed run continues in the stage it
stopped in even if the budget was changed. At the switch the VQ-VAE is frozen; stage 2 encodes each batch
with it (no gradients) and trains the prior on [R digits, codes].

Each stage's schedule runs warm-up and cosine decay over its own share of the run. Only the prior is
weight-averaged (after every stage-2 batch); the VQ-VAE's codebook is already an average (EMA), and the
prior is trained on the codes of the raw encoder, whose weights the sampler therefore uses too.

Batches are ``caloforge.training.voxel_dataset``'s: x0 (B, V) preprocessed showers, cond (B, C). This
family normalises showers its own way (Calo-VQ), so it inverts the run's preprocessing to get MeV back,
with E_inc read from the condition vector's first entry (docs/families/vq-gpt.md, "Hooks").
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from caloforge.context import RunContext
from caloforge.families.vq_gpt import VqGptConfig
from caloforge.families.vq_gpt.sampler import build_gpt, build_vqvae, ratio_tokens
from caloforge.families.vq_gpt.showers import encoder_input, fractions_and_ratio, hurdle_nll
from caloforge.models.vqvae import perplexity
from caloforge.optim import build_optimizer, build_scheduler
from caloforge.runconfig import RunConfig
from caloforge.training import FamilyModule

__all__ = ["VqGptModule", "stage1_losses"]


def stage1_losses(
    logits: Tensor, fractions: Tensor, x: Tensor, scale: float
) -> tuple[Tensor, Tensor]:
    """Reconstruction losses of decoded logits (N, V) against true fractions (N, V) summing to one and the
    encoder input x = log1p(f x scale) (N, V): (squared error in that log1p space, KL(f || softmax))."""
    log_f = torch.log_softmax(logits, dim=-1)
    mse = F.mse_loss(torch.log1p(log_f.exp() * scale), x)
    kl = (torch.xlogy(fractions, fractions) - fractions * log_f).sum(dim=-1).mean()
    return mse, kl


class VqGptModule(FamilyModule):
    """``vqvae`` (stage 1), ``gpt`` (stage 2) and ``gpt_ema``, its average, which the sampler uses; the
    buffer ``stage`` (1 or 2) is saved with them (module doc)."""

    stage: Tensor

    def __init__(self, config: RunConfig, context: RunContext) -> None:
        super().__init__(config, context)
        self.automatic_optimization = False
        model: VqGptConfig = config.model
        model.check()
        cond_dim = context.spec.dim
        with self.seeded():  # initial weights from the run's seed
            self.vqvae = build_vqvae(model, context.geometry, cond_dim)
            self.gpt = build_gpt(model, self.vqvae, cond_dim)
        self.gpt_ema = self.average(self.gpt)
        self.transform = context.preprocessor.module()
        self.ratio = ratio_tokens(model, context)
        self.scale = float(model.vq.input_scale or context.geometry.n_voxels)
        lo, hi = context.spec.log_energy_range
        self.log_energy_mid, self.log_energy_half = 0.5 * (lo + hi), 0.5 * (hi - lo)
        self.register_buffer("stage", torch.tensor(1, dtype=torch.int64))
        self._frozen = False

    # -- progress and stages
    def progress(self) -> float:
        """How far the run is: the larger of global_step / max_steps and the time budget spent."""
        return max(self.global_step / max(self.config.train.max_steps, 1), self.time_fraction())

    def _stage_progress(self, stage: int) -> float:
        f = self.config.model.stage1_fraction
        p = self.progress()
        return min(p / f, 1.0) if stage == 1 else min(max((p - f) / (1 - f), 0.0), 1.0)

    def _switch_now(self) -> bool:
        """Whether stage 1 ends before this batch; under DDP rank 0 decides for all (the time budget
        spent differs a little between ranks, and the ranks must step the same optimiser)."""
        switch = self.progress() >= self.config.model.stage1_fraction
        if self._trainer is not None and self.trainer.world_size > 1:
            switch = bool(self.trainer.strategy.broadcast(switch, src=0))
        return switch

    def _freeze_stage1(self) -> None:
        self.stage.fill_(2)
        self.vqvae.requires_grad_(False).eval()
        self._frozen = True

    # -- data
    def showers_of(self, x0: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        """Preprocessed showers x0 (B, V) and condition vectors (B, C) -> (showers (B, V) MeV,
        E_inc (B,) MeV). E_inc is read back from the condition's first entry, ln E mapped to [-1, 1]."""
        energy = torch.exp(self.log_energy_mid + self.log_energy_half * cond[:, 0])
        return self.transform.inverse(x0, energy), energy

    # -- training
    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        x0, cond = batch[0], batch[1]
        showers, energy = self.showers_of(x0, cond)
        fractions, ratio = fractions_and_ratio(showers, energy)
        if int(self.stage) == 1 and self._switch_now():
            self._freeze_stage1()
        if int(self.stage) == 1:
            loss = self._stage1(fractions, cond)
        else:
            if not self._frozen:  # resumed in stage 2
                self._freeze_stage1()
            loss = self._stage2(fractions, ratio, cond)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        self.log("train/stage", float(self.stage), on_step=True, on_epoch=False)
        return loss

    def _optimise(self, index: int, loss: Tensor) -> None:
        optimizer: Any = self.optimizers()[index]  # type: ignore[index]
        scheduler = self.lr_schedulers()[index]  # type: ignore[index]
        optimizer.zero_grad()
        self.manual_backward(loss)
        self.clip(optimizer)
        optimizer.step()
        scheduler.step()
        self.log("train/lr", optimizer.param_groups[0]["lr"], on_step=True, on_epoch=False)

    def _stage1_loss(self, fractions: Tensor, cond: Tensor, update: bool) -> tuple[Tensor, dict[str, Tensor]]:
        """The VQ-VAE's loss and its parts (``update``: move the codebook, training only)."""
        x = encoder_input(fractions, self.scale)  # (B, V)
        generator = self.noise_generator() if update else None
        q, indices, commitment = self.vqvae.quantise(x, update=update, generator=generator)
        out = self.vqvae.decode(q, cond)  # (B, K, V)
        vq = self.config.model.vq
        used = torch.bincount(indices.flatten(), minlength=self.vqvae.n_codes) > 0
        parts = {"train/commitment": commitment, "train/perplexity": perplexity(indices, self.vqvae.n_codes),
                 "train/codes_used": used.sum().float()}
        if vq.decoder == "hurdle":
            bce, nll = hurdle_nll(out, fractions)
            parts.update({"train/hit_bce": bce, "train/deposit_nll": nll})
            return bce + nll + vq.commitment * commitment, parts
        mse, kl = stage1_losses(out[:, 0], fractions, x, self.scale)
        parts.update({"train/recon": mse, "train/kl": kl})
        return mse + vq.ce_weight * kl + vq.commitment * commitment, parts

    def _prior_loss(self, gpt: nn.Module, fractions: Tensor, ratio: Tensor, cond: Tensor) -> Tensor:
        """Mean cross-entropy (nats per token) of ``gpt`` on the [R digits, codes] of the showers."""
        with torch.no_grad():
            _, codes, _ = self.vqvae.quantise(encoder_input(fractions, self.scale))  # (B, T)
            tokens = torch.cat([self.ratio.encode(ratio), codes], dim=1)  # (B, S)
        logits = gpt(cond, tokens)
        targets = tokens.split([n for _, n in self.gpt.segments], dim=1)
        # mean over all S tokens: each segment weighs by its length
        total = torch.zeros((), device=tokens.device)
        for lg, tg in zip(logits, targets, strict=True):
            total = total + F.cross_entropy(lg.reshape(-1, lg.shape[-1]), tg.reshape(-1), reduction="sum")
        return total / tokens.numel()

    def _stage1(self, fractions: Tensor, cond: Tensor) -> Tensor:
        loss, parts = self._stage1_loss(fractions, cond, update=True)
        self._optimise(0, loss)
        self.log_dict(parts, on_step=True, on_epoch=False)
        return loss

    def _stage2(self, fractions: Tensor, ratio: Tensor, cond: Tensor) -> Tensor:
        loss = self._prior_loss(self.gpt, fractions, ratio, cond)
        self._optimise(1, loss)
        self.log("train/gpt_loss", loss, on_step=True, on_epoch=False)
        return loss

    def validation_loss(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor | None:
        """The current stage's loss on a held-out batch: the VQ-VAE's (no codebook update) in stage 1, the
        averaged prior's cross-entropy in stage 2. Deterministic (no noise)."""
        showers, energy = self.showers_of(batch[0], batch[1])
        fractions, ratio = fractions_and_ratio(showers, energy)
        if int(self.stage) == 1:
            return self._stage1_loss(fractions, batch[1], update=False)[0]
        return self._prior_loss(self.gpt_ema.module, fractions, ratio, batch[1])

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if int(self.stage) == 2:  # the prior does not change in stage 1: average only its training
            self.update_averages()

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        optim = self.config.optim
        model: VqGptConfig = self.config.model
        vq_opt = build_optimizer(self.vqvae.parameters(), optim, self.config.train.precision)
        gpt_optim = optim if model.gpt_lr is None else replace(optim, lr=model.gpt_lr)
        gpt_opt = build_optimizer(self.gpt.parameters(), gpt_optim, self.config.train.precision)
        schedulers = [
            build_scheduler(vq_opt, optim, lambda step: self._stage_progress(1)),
            build_scheduler(gpt_opt, gpt_optim, lambda step: self._stage_progress(2)),
        ]
        return [vq_opt, gpt_opt], schedulers

    # -- the checkpoint entry
    def sampler_state_dict(self) -> dict[str, Tensor]:
        """The sampler's weights: the VQ-VAE as trained (``vqvae.``) and the averaged prior (``gpt.``)."""
        state = {f"vqvae.{k}": v for k, v in self.vqvae.state_dict().items()}
        state.update({f"gpt.{k}": v for k, v in self.gpt_ema.module.state_dict().items()})
        return state

    def load_sampler_state_dict(self, state: dict[str, Tensor]) -> None:
        """Start both stages (and the prior's average) from a sampler's weights (``--init-from``); the run
        still trains stage 1 first, fine-tuning the loaded VQ-VAE (its codebook is not re-initialised)."""
        vqvae = {k.removeprefix("vqvae."): v for k, v in state.items() if k.startswith("vqvae.")}
        gpt = {k.removeprefix("gpt."): v for k, v in state.items() if k.startswith("gpt.")}
        self.vqvae.load_state_dict(vqvae)
        self.gpt.load_state_dict(gpt)
        self.gpt_ema.module.load_state_dict(gpt)
