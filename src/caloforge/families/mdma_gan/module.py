"""The ``mdma-gan`` LightningModule: WGAN-GP on point clouds, by manual optimisation.

Each training step (batch) makes exactly one update of the GAN: batches whose index (counted by the fit
loop) modulo ``critic_steps + 1`` is below ``critic_steps`` update the critic, the others the generator, as
WGAN-GP's loop draws a fresh real batch for every critic update. (Lightning's ``global_step``, which
``train.max_steps`` and checkpoints count, advances by two a batch: the GAN's update and the hit-count
model's. Until 2026-12-04 the alternation read ``global_step``; with ``critic_steps: 1`` that was always
even, and the generator was never updated.) The hit-count model, a plain
maximum-likelihood fit independent of the GAN, has its own optimiser and learns on every batch (inside the
generator's optimiser its gradients were clipped together with the generator's, hundreds of times larger,
and it did not learn).
The three learning-rate schedules (``FamilyModule.schedule``: warm-up, cosine) are stepped after every
batch, so all follow the run's progress, whichever network was updated.

* critic: E[D(fake)] - E[D(real)] + gp_weight E[(|grad D(x_hat)| - 1)^2] (Gulrajani et al. 2017, eq. 3),
  x_hat = eps x real + (1 - eps) x fake per shower. Fakes are generated with the real batch's hit counts
  (the same packed layout), so real, fake and interpolates line up hit by hit, and the gradient norm is
  taken per shower.
* generator: -E[D(fake)] + feature_matching |mean mf(real) - mean mf(fake)|^2 (the critic's final mean
  field, Salimans et al. 2016) + response_weight E[(ln R_fake - ln R_real)^2], R = E_tot / E_inc of each
  shower and of the real one whose conditions and count it was given, + sliced_weight x the sliced
  Wasserstein distance of the batch's pooled hits (``sliced_wasserstein``).

Batches are ``points.points_batch``'s: hits (B, M_b, 5), mask (B, M_b), cond (B, C), E_inc (B,) MeV;
hits beyond the model's slots (the lowest-energy ones: the batch is sorted) are dropped, the rest packed
(``points.pack``: (T, 5) and the shower of each hit) for the networks, in their coordinates
(``points.LogitPositions`` with ``model.positions: logit``).
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from caloforge.context import RunContext
from caloforge.families.mdma_gan import MdmaGanConfig
from caloforge.families.mdma_gan.counts import HitCountModel
from caloforge.families.mdma_gan.points import N_FEATURES, PointScaling, hit_energies, pack
from caloforge.families.mdma_gan.sampler import (
    build_counts,
    build_generator,
    build_positions,
    generate_hits,
    generator_condition,
    hit_condition,
    hit_noise_spec,
)
from caloforge.models.mean_field import MeanFieldCritic, MeanFieldGenerator, per_set_sum
from caloforge.optim import build_optimizer
from caloforge.runconfig import RunConfig
from caloforge.training import FamilyModule

__all__ = ["MdmaGanModule", "gradient_penalty", "log_response", "marginal_distance",
           "projection_directions", "shower_summaries", "sliced_wasserstein", "sorted_rows"]


def log_response(hits: Tensor, seg: Tensor, cond: Tensor, scaling: PointScaling) -> Tensor:
    """ln(E_tot / E_inc) (B,) of packed hit sets (T, 5) with seg (T,) (cond (B, C): the batch)."""
    return torch.log(per_set_sum(hit_energies(hits, scaling), seg, cond) + 1e-12)


def sliced_wasserstein(real: Tensor, fake: Tensor, directions: Tensor) -> Tensor:
    """Squared sliced 2-Wasserstein distance (Deshpande et al. 2018) between the real and generated hits of a
    batch, all showers' hits pooled: real, fake (T, F) packed (the fakes take the real batch's hit counts),
    directions (K, F) unit vectors. Each projection's T values are sorted and matched in order, the exact
    1-D optimal transport; the mean over T and K of the squared differences is returned. Batches are
    bucketed by hit count, hence by energy, so the pooled hits are those of similar showers: a steady,
    non-adversarial pull on the hit marginals (position, energy and their joint projections) that a young
    critic cannot give yet."""
    r = directions @ real.T  # (K, T): each projection a contiguous row
    f = directions @ fake.T
    return (sorted_rows(r) - sorted_rows(f)).pow(2).mean()


def sorted_rows(x: Tensor) -> Tensor:
    """Each row of x (K, T) sorted ascending, differentiable (the values are gathered by the sorting order).
    On a CPU numpy sorts: for 64 rows of 20,000 hits its vectorised argsort took 16 ms (its sort 4) where
    torch.sort took 45 (72 along the columns of the transposed layout), and sorting was half of a training
    step of the dataset-2 config."""
    if x.device.type != "cpu":
        return torch.sort(x, dim=1).values
    rows = x.detach().numpy()
    if not x.requires_grad:
        return torch.from_numpy(np.sort(rows, axis=1))
    return x.gather(1, torch.from_numpy(np.argsort(rows, axis=1)))


def projection_directions(n_random: int, dim: int, axes: bool, generator: torch.Generator,
                          device: torch.device) -> Tensor:
    """Directions for ``sliced_wasserstein``: ``n_random`` random unit vectors in ``dim`` dimensions, after
    the ``dim`` coordinate axes when ``axes`` -> (n_random (+ dim), dim)."""
    random = torch.randn(n_random, dim, generator=generator, device=device)
    random = random / random.norm(dim=1, keepdim=True)
    return torch.cat([torch.eye(dim, device=device), random]) if axes else random


def shower_summaries(hits: Tensor, seg: Tensor, cond: Tensor, scaling: PointScaling) -> Tensor:
    """Per-shower summaries (B, 7) of packed hit sets (T, 5) in the networks' coordinates, seg (T,), cond
    (B, C): ln(E_tot / E_inc); the energy-weighted mean and spread of z and of r (the shower's depth and
    width); the mean z of its hits; the mean hit energy feature. Differentiable in the hits."""
    w = hit_energies(hits, scaling)  # (T,) E / E_inc
    total = per_set_sum(w, seg, cond) + 1e-12  # (B,)
    z, r = hits[:, 0], hits[:, 3]
    moments = per_set_sum(torch.stack([w * z, w * z * z, w * r, w * r * r], 1), seg, cond) / total[:, None]
    count = per_set_sum(torch.ones_like(z), seg, cond).clamp(min=1.0)  # (B,)
    plain = per_set_sum(torch.stack([z, hits[:, 4]], 1), seg, cond) / count[:, None]  # (B, 2)
    spread = (moments[:, [1, 3]] - moments[:, [0, 2]].pow(2)).clamp(min=1e-8).sqrt()  # (B, 2)
    return torch.cat([torch.log(total)[:, None], moments[:, [0, 2]], spread, plain], dim=1)


def _w1(a: Tensor, b: Tensor, n_quantiles: int = 64) -> Tensor:
    """1-D Wasserstein-1 distance of two samples (any sizes) from ``n_quantiles`` quantiles of each; inf
    when either is empty."""
    if a.numel() == 0 or b.numel() == 0:
        return torch.tensor(float("inf"), device=a.device)
    q = (torch.arange(n_quantiles, device=a.device, dtype=a.dtype) + 0.5) / n_quantiles
    return (torch.quantile(a, q) - torch.quantile(b, q)).abs().mean()


def marginal_distance(real: Tensor, real_seg: Tensor, fake: Tensor, fake_seg: Tensor, cond: Tensor,
                      scaling: PointScaling, max_hits: int) -> Tensor:
    """The cheap distance that selects checkpoints (MDMA's authors picked theirs by one): the mean of 1-D
    Wasserstein-1 distances between real and generated showers of the same conditions, over each pooled hit
    feature (z, cos, sin, r, e: 5), ln(E_tot / E_inc) and the hit count / max_hits (per shower: 2).
    real (T, 5) with real_seg (T,), fake (T', 5) with fake_seg (T',), cond (B, C): packed sets of B
    showers."""
    def counts(seg: Tensor) -> Tensor:
        return per_set_sum(torch.ones_like(seg, dtype=cond.dtype), seg, cond) / max_hits

    terms = [_w1(real[:, k], fake[:, k]) for k in range(real.shape[1])]
    terms.append(_w1(log_response(real, real_seg, cond, scaling), log_response(fake, fake_seg, cond,
                                                                               scaling)))
    terms.append(_w1(counts(real_seg), counts(fake_seg)))
    return torch.stack(terms).mean()


def gradient_penalty(critic: MeanFieldCritic, real: Tensor, fake: Tensor, seg: Tensor, cond: Tensor,
                     generator: torch.Generator) -> Tensor:
    """E[(|grad_x D(x_hat)| - 1)^2] over interpolates x_hat (T, F) of real and fake packed hit sets, one
    mixing weight and one gradient norm per shower."""
    eps = torch.rand(cond.shape[0], generator=generator, device=real.device)[seg, None]  # (T, 1)
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    score, _ = critic(x_hat, seg, cond)
    (grad,) = torch.autograd.grad(score.sum(), x_hat, create_graph=True)
    norm = torch.sqrt(per_set_sum(grad.pow(2).sum(1), seg, cond) + 1e-12)  # (B,)
    return ((norm - 1) ** 2).mean()


class MdmaGanModule(FamilyModule):
    """``generator``, ``counts`` and ``critic``; ``generator_ema`` and ``counts_ema``, their averages
    (updated after generator steps only), are what the sampler uses (module doc)."""

    def __init__(self, config: RunConfig, context: RunContext) -> None:
        super().__init__(config, context)
        self.automatic_optimization = False
        model: MdmaGanConfig = config.model
        model.check()
        cond_dim = context.spec.dim
        self.max_hits = model.hit_slots(context.geometry.n_voxels)
        self.latent = model.net.resolved().latent
        with self.seeded():  # initial weights from the run's seed
            self.generator = build_generator(model, cond_dim)
            self.counts = build_counts(model, cond_dim, self.max_hits)
            self.critic = MeanFieldCritic(model.net, cond_dim + 1, N_FEATURES)
        self.generator_ema = self.average(self.generator)
        self.counts_ema = self.average(self.counts)
        self.scaling = PointScaling.of(context)
        self.positions = build_positions(model, context)
        self.skipped_updates = 0  # optimiser steps skipped for non-finite gradients (``_update``)

    # -- data
    def _inputs(self, batch: tuple[Tensor, ...]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(hits packed (T, 5), seg (T,), cond (B, C), cond with the count (B, C + 1), counts (B,)), each
        shower's hits cut to the model's slots (its largest: the batch is sorted)."""
        hits, mask, cond = batch[0][:, : self.max_hits], batch[1][:, : self.max_hits], batch[2]
        n_hits = mask.sum(1)
        packed, seg = pack(hits, mask)
        if self.positions is not None:
            packed = self.positions.to_model(packed)
        return packed, seg, cond, hit_condition(cond, n_hits, self.max_hits), n_hits

    def _fake(self, seg: Tensor, cond_n: Tensor, noise: torch.Generator) -> Tensor:
        """Generated packed hits (T, 5) for the showers ``seg`` (T,) points into, conditions (B, C + 1)
        (with a fresh shower latent, ``model.shower_latent``, appended for the generator)."""
        z = torch.randn(seg.shape[0], self.latent, generator=noise, device=seg.device)
        shower_latent = self.config.model.shower_latent
        shower = (torch.randn(cond_n.shape[0], shower_latent, generator=noise, device=seg.device)
                  if shower_latent else None)
        return self.generator(z, seg, generator_condition(cond_n, shower))

    # -- training
    def _batch_index(self) -> int:
        """The index of the batch being trained on, counted over the whole run (restored on resume) by the
        fit loop. Not ``global_step``: that counts optimiser steps, two a batch here (the GAN's update and the
        hit-count model's), and none for an update skipped as non-finite."""
        return int(self.trainer.fit_loop.epoch_loop.batch_progress.total.ready) - 1

    def _is_critic_step(self, step: int) -> bool:
        """Whether batch ``step`` updates the critic (never when the generator's loss ignores its score)."""
        model: MdmaGanConfig = self.config.model
        if model.adversarial_weight == 0:
            return False
        return step % (model.critic_steps + 1) < model.critic_steps

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        hits, seg, cond, cond_n, n_hits = self._inputs(batch)
        noise = self.noise_generator()
        gen_opt, critic_opt, counts_opt = self.optimizers()  # type: ignore[attr-defined]
        if self._is_critic_step(self._batch_index()):
            with torch.no_grad():
                fake = self._fake(seg, cond_n, noise)
            real_score, _ = self.critic(hits, seg, cond_n)
            fake_score, _ = self.critic(fake, seg, cond_n)
            penalty = gradient_penalty(self.critic, hits, fake, seg, cond_n, noise)
            distance = real_score.mean() - fake_score.mean()  # the Wasserstein estimate
            loss = -distance + self.config.model.gp_weight * penalty
            self._update(critic_opt, loss)
            self.log_dict({"train/wasserstein": distance, "train/gradient_penalty": penalty},
                          on_step=True, on_epoch=False)
        else:
            loss = self._generator_loss(hits, seg, cond, cond_n, noise)
            self._update(gen_opt, loss)
        count_nll = self.counts.loss(cond, n_hits)  # its own optimiser, every batch (module doc)
        self._update(counts_opt, count_nll)
        self.log("train/count_nll", count_nll, on_step=True, on_epoch=False)
        self._step_schedules()
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def _generator_loss(self, hits: Tensor, seg: Tensor, cond: Tensor, cond_n: Tensor,
                        noise: torch.Generator) -> Tensor:
        model: MdmaGanConfig = self.config.model
        fake = self._fake(seg, cond_n, noise)
        if model.adversarial_weight == 0 and model.feature_matching == 0:  # the critic's terms are off
            fake_score = matching = torch.zeros((), device=hits.device)
        else:
            fake_score, fake_field = self.critic(fake, seg, cond_n)
            with torch.no_grad():
                _, real_field = self.critic(hits, seg, cond_n)
            matching = (fake_field.mean(0) - real_field.mean(0)).pow(2).mean()
        response = (log_response(fake, seg, cond, self.scaling)
                    - log_response(hits, seg, cond, self.scaling)).pow(2)
        directions = projection_directions(model.sliced_projections, N_FEATURES, model.sliced_axes, noise,
                                           hits.device)
        sliced = sliced_wasserstein(hits, fake, directions)
        loss = (-model.adversarial_weight * fake_score.mean() + model.feature_matching * matching
                + model.response_weight * response.mean() + model.sliced_weight * sliced)
        self.log_dict({"train/feature_matching": matching, "train/response": response.mean(),
                       "train/sliced_wasserstein": sliced}, on_step=True, on_epoch=False)
        if model.shower_sliced_weight:
            # shower summaries standardised by the real batch's spread, so every summary counts alike
            real_s = shower_summaries(hits, seg, cond, self.scaling)
            fake_s = shower_summaries(fake, seg, cond, self.scaling)
            scale = real_s.std(0).detach().clamp(min=1e-3)
            shower_directions = projection_directions(model.sliced_projections, real_s.shape[1], True, noise,
                                                      hits.device)
            shower_sliced = sliced_wasserstein(real_s / scale, fake_s / scale, shower_directions)
            self.log("train/shower_sliced_wasserstein", shower_sliced, on_step=True, on_epoch=False)
            loss = loss + model.shower_sliced_weight * shower_sliced
        return loss

    def validation_loss(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        """``marginal_distance`` between the held-out showers and showers the averaged networks (the
        sampler's) generate for their conditions, with noise seeded by ``batch_idx``."""
        hits, seg, cond, _, _ = self._inputs(batch)
        g = torch.Generator(device=hits.device).manual_seed(batch_idx)
        count_u = torch.rand(cond.shape[0], generator=g, device=hits.device)
        hit_noise = hit_noise_spec(self.max_hits, self.latent).draw(cond.shape[0], g)  # the sampler's
        shower_latent = self.config.model.shower_latent
        shower_noise = (torch.randn(cond.shape[0], shower_latent, generator=g, device=hits.device)
                        if shower_latent else None)
        generator, counts = self.generator_ema.module, self.counts_ema.module
        assert isinstance(generator, MeanFieldGenerator) and isinstance(counts, HitCountModel)
        fake, fake_seg, _ = generate_hits(generator, counts, cond, count_u, hit_noise, shower_noise)
        return marginal_distance(hits, seg, fake, fake_seg, cond, self.scaling, self.max_hits)

    def _update(self, optimizer: Any, loss: Tensor) -> None:
        """One step of ``optimizer`` on ``loss``, skipped when a gradient is not finite: a GAN's critic can
        blow up in one batch, and one NaN step poisons every weight for good (a Geant4 run at learning rate
        5e-4 did so after 950 steps). The check runs after backward, on gradients DDP has already averaged,
        so every rank skips alike."""
        optimizer.zero_grad()
        self.manual_backward(loss)
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not all(torch.isfinite(g).all() for g in grads):
            optimizer.zero_grad()
            self.skipped_updates += 1
            self.log("train/skipped_updates", float(self.skipped_updates), on_step=True, on_epoch=False)
            return
        self.clip(optimizer)
        optimizer.step()

    def _step_schedules(self) -> None:
        with warnings.catch_warnings():
            # Both schedules step every batch (module doc); at the first batch one network has not been
            # updated yet, which torch reports as a schedule stepped before its optimiser.
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
            for scheduler in self.lr_schedulers():  # type: ignore[union-attr]
                scheduler.step()
        self.log("train/lr", self.optimizers()[0].param_groups[0]["lr"],  # type: ignore[index]
                 on_step=True, on_epoch=False)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # The averages follow the generator's updates only.
        if not self._is_critic_step(self._batch_index()):
            self.update_averages()

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        optim, model = self.config.optim, self.config.model
        precision = self.config.train.precision
        generator = build_optimizer(self.generator.parameters(), optim, precision)
        critic_optim = replace(optim, lr=model.critic_lr_for(optim.lr))
        critic = build_optimizer(self.critic.parameters(), critic_optim, precision)
        for optimizer in (generator, critic):
            for group in optimizer.param_groups:
                group["betas"] = tuple(model.betas)
        counts = build_optimizer(self.counts.parameters(), replace(optim, lr=model.count_lr), precision)
        optimizers = [generator, critic, counts]
        return optimizers, [self.schedule(optimizer)["scheduler"] for optimizer in optimizers]

    # -- the checkpoint entry
    def sampler_state_dict(self) -> dict[str, Tensor]:
        """The sampler's weights: the averaged generator (``generator.``) and count model (``counts.``)."""
        state = {f"generator.{k}": v for k, v in self.generator_ema.module.state_dict().items()}
        state.update({f"counts.{k}": v for k, v in self.counts_ema.module.state_dict().items()})
        return state

    def load_sampler_state_dict(self, state: dict[str, Tensor]) -> None:
        """Start the generator and count model (and their averages) from a sampler's weights
        (``--init-from``); the critic starts fresh."""
        for name, network, average in (("generator", self.generator, self.generator_ema),
                                       ("counts", self.counts, self.counts_ema)):
            part = {k.removeprefix(f"{name}."): v for k, v in state.items() if k.startswith(f"{name}.")}
            network.load_state_dict(part)
            average.module.load_state_dict(part)
