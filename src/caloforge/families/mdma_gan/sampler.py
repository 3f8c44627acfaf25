"""The ``mdma-gan`` sampler: conditions + noise -> showers in MeV (no Lightning; ``caloforge.sampler``).

Noise spec, in order (each (N, *shape)):

* ``count_u`` () uniform: the hit count, drawn first by the inverse CDF of p(n | conditions)
  (``counts.HitCountModel.draw``);
* ``hit_noise`` (M, ceil(latent / 4)) bits: one normal latent per hit slot, read off the slot's 15-bit
  fields (``sampler.normal_from_bits``: four in each 64-bit number) for the drawn slots only; slots at or
  beyond the drawn count are padding and change nothing. Bits, because a shower uses about a third of its
  slots: a numpy or torch generator draws 64 random bits in about the time of one float32 uniform number,
  and a normal one takes 2-6 times longer (the onnxruntime path spent 0.15 ms a shower drawing normal
  slots; the width-16 model's 100 x 2048 x 8 uniform numbers took 4.7 ms to draw at batch 100, its
  100 x 2048 x 2 numbers of bits 1.3), and only the drawn slots' latents are made, by a table lookup
  (Box-Muller on the uniform numbers took longer than the draw);
* ``shower_noise`` (S,) normal, only with ``model.shower_latent`` S > 0: one latent per shower, which the
  generator takes beside the conditions.

forward: condition vector -> n (N,) -> the slots below each shower's n, packed ((T, 2) indices, T = sum n)
-> their latents (T, latent), normal -> generator(latents, shower of each, [cond, n]) -> hit features
(T, 5) (from the networks' coordinates with ``model.positions: logit``) -> ``points.Voxeliser`` (energies
summed per cell) -> cells below the readout threshold zeroed -> showers (N, V) MeV. The noise has fixed shapes
(M = ``MdmaGanConfig.hit_slots``) but only the T drawn hits are computed, so a batch costs its showers' own
hit counts, not M each; the graph's hit axis is dynamic (ONNX NonZero), with no branching on values.

Sampling option ``count_scale`` s in [1, 4] (default 1): the generator, still conditioned on the drawn count
n, makes round(s n) hits (more draws from the same shower's hit distribution: the hits interact only
through the softmax-weighted mean field, which more draws hardly move), and every cell's energy is scaled
by n / round(s n) so the shower keeps the energy of n hits. With a readout threshold moved down
(``lower_threshold``) the extra hits are candidates from which a calibration fitted with
``candidate_threshold`` and ``match_hit_count`` keeps each (layer, ring)'s count of Geant4's cells: a way
to light the cells that colliding hits leave dark.

Sampling option ``spread`` k in [0, 8] (default 0): k rounds of ``points.spread_collisions`` before the
energies are summed. The model learnt Geant4's cells as hits, one hit a cell, but draws its hits
independently, so some share a cell: on Geant4's dataset-2 electrons the 60-minute model lit 396 cells of
10 GeV showers where Geant4 lit 497 (1242 against 1647 at 100 GeV). A hit that shares a cell moves to the
nearest free alpha bin of its layer and ring (4 rounds: 465 and 1515 cells); the energy of every layer and
ring stays, the core, whose neighbours are all lit, keeps its sums.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from caloforge.conditioning import ConditionEncoder
from caloforge.context import RunContext
from caloforge.errors import InputError
from caloforge.families.mdma_gan import MdmaGanConfig
from caloforge.families.mdma_gan.counts import HitCountModel
from caloforge.families.mdma_gan.points import N_FEATURES, LogitPositions, PointScaling, Voxeliser
from caloforge.geometry import CylindricalGeometry
from caloforge.models.mean_field import MeanFieldGenerator, summing_matrix
from caloforge.sampler import BITS_FIELDS, NoiseSpec, ShowerSampler, normal_from_bits, zero_below

__all__ = ["MAX_SPREAD_ROUNDS", "MdmaGanSampler", "build_counts", "build_generator", "build_positions",
           "generate_hits", "generator_condition", "hit_condition", "hit_noise_spec", "hit_noise_width",
           "made_count"]


MAX_SPREAD_ROUNDS = 8  # the sampling option ``spread``: rounds of ``points.spread_collisions``


def hit_condition(cond: Tensor, n_hits: Tensor, max_hits: int) -> Tensor:
    """The networks' condition: cond (N, C), then the hit count (N,) mapped from [0, max_hits] onto
    [-1, 1] -> (N, C + 1)."""
    return torch.cat([cond, (2.0 * n_hits.to(cond.dtype) / max_hits - 1.0)[:, None]], dim=1)


def generator_condition(cond_n: Tensor, shower_noise: Tensor | None) -> Tensor:
    """The generator's condition: ``hit_condition``'s (N, C + 1), then the shower latent (N, S) when the model
    has one (``model.shower_latent``; ``None``: it has none)."""
    return cond_n if shower_noise is None else torch.cat([cond_n, shower_noise], dim=1)


def build_generator(config: MdmaGanConfig, cond_dim: int) -> MeanFieldGenerator:
    """The generator, freshly initialised (``cond_dim``: the run's condition vector, without the count; the
    generator's condition is ``hit_condition``'s, then the shower latent)."""
    return MeanFieldGenerator(config.net, cond_dim + 1 + config.shower_latent, N_FEATURES)


def build_counts(config: MdmaGanConfig, cond_dim: int, max_hits: int) -> HitCountModel:
    """The hit-count model, freshly initialised."""
    return HitCountModel(cond_dim, max_hits, config.count_bins, config.count_width)


def build_positions(config: MdmaGanConfig, context: RunContext) -> LogitPositions | None:
    """The map between hit features and the networks' coordinates (``model.positions``; ``None``: they are
    the same), on the trained readout ``context.geometry`` (its rings place r, also when voxelising onto
    another readout)."""
    return LogitPositions(context.geometry, PointScaling.of(context)) if config.positions == "logit" else None


def generate_hits(generator: MeanFieldGenerator, counts: HitCountModel, cond: Tensor, count_u: Tensor,
                  hit_noise: Tensor, shower_noise: Tensor | None = None,
                  count_scale: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """Draw each shower's hit count, then its hits: cond (N, C), count_u (N,) uniform, hit_noise
    (N, M, ``hit_noise_width``) bits (M = the count model's ``max_hits``; ``normal_from_bits``),
    shower_noise (N, S) normal or ``None`` (no shower latent) -> (hits (T, 5) packed, seg (T,) the shower of
    each, counts (N,)). Shower i's hits take the latents of its first n_i slots, so a shower does not depend
    on the others in its batch. Only the T = sum n_i drawn hits are computed. ``count_scale`` s != 1: the
    generator, conditioned on the drawn count n_i, makes ``made_count`` hits, more draws from the same shower
    (``MdmaGanSampler``); the counts returned are still the drawn n_i."""
    max_hits = counts.max_hits
    n_hits = counts.draw(cond, count_u)  # (N,)
    n_made = made_count(n_hits, count_scale, max_hits)
    slots = torch.arange(max_hits, dtype=cond.dtype, device=cond.device)
    drawn = (slots[None] < n_made[:, None]).nonzero()  # (T, 2): shower, slot
    seg = drawn[:, 0]  # (T,)
    bits = hit_noise.flatten(0, 1).index_select(0, seg * max_hits + drawn[:, 1])  # (T, W)
    latents = normal_from_bits(bits)  # (T, 4 W)
    if latents.shape[1] != generator.latent:
        latents = latents[:, : generator.latent]  # (T, latent)
    cond_n = generator_condition(hit_condition(cond, n_hits, max_hits), shower_noise)
    # the hits are packed shower after shower: in eager sampling the generator's per-shower sums are products
    # with a sparse matrix (``summing_matrix``); training and the exported graph keep their scatter-adds
    sampling = not (torch.is_grad_enabled() or torch.onnx.is_in_onnx_export())
    summing = summing_matrix(n_made.long(), cond.dtype) if sampling else None
    return generator(latents, seg, cond_n, summing), seg, n_hits


def hit_noise_width(latent: int) -> int:
    """Numbers of bits noise a hit slot takes for a normal latent of ``latent``: four normal numbers each
    (``normal_from_bits``)."""
    return -(-latent // BITS_FIELDS)


def hit_noise_spec(max_hits: int, latent: int) -> NoiseSpec:
    """The ``hit_noise`` input: bits for ``max_hits`` slots of a normal latent of ``latent`` (module doc)."""
    return NoiseSpec("hit_noise", (max_hits, hit_noise_width(latent)), "bits")


def made_count(n_hits: Tensor, count_scale: float, max_hits: int) -> Tensor:
    """The hits made for drawn counts n_hits (N,) at ``count_scale`` s: round(s n), at most ``max_hits``."""
    return n_hits if count_scale == 1.0 else torch.round(n_hits * count_scale).clamp(max=max_hits)


class MdmaGanSampler(ShowerSampler):
    """Count draw, generator, voxelisation (module doc for the noise).

    Attributes:
        generator: the mean-field generator (weights: the training's average).
        counts: p(n_hits | conditions) (weights: the training's average).
        encoder, voxeliser: built from the run's context (not weights); the voxeliser holds the
            ``spread`` rounds.
        threshold_mev: cells below it (MeV) read zero, as in the training data.
    """

    def __init__(self, config: MdmaGanConfig, context: RunContext, count_scale: float | None = None,
                 spread: int | None = None) -> None:
        super().__init__()
        config.check()
        self.count_scale = 1.0 if count_scale is None else float(count_scale)
        if not 1.0 <= self.count_scale <= 4.0:
            raise InputError(None, "count_scale", f"is {count_scale}",
                             "a number in [1, 4] (1: the drawn count)")
        spec = context.spec
        self.max_hits = config.hit_slots(context.geometry.n_voxels)
        self.latent = config.net.resolved().latent
        self.scaling = PointScaling.of(context)
        self.encoder: ConditionEncoder = spec.encoder()
        self.generator = build_generator(config, spec.dim)
        self.counts = build_counts(config, spec.dim, self.max_hits)
        if spread is not None and (int(spread) != spread or not 0 <= spread <= MAX_SPREAD_ROUNDS):
            raise InputError(None, "spread", f"is {spread}", f"a whole number of rounds in "
                             f"[0, {MAX_SPREAD_ROUNDS}] (0: hits may share a cell)")
        self.voxeliser = Voxeliser(context.geometry, self.scaling, int(spread or 0))
        self.positions = build_positions(config, context)
        self.own_readout = True  # voxelising onto the trained readout (not ``voxelise_onto`` another)
        self.readout_threshold_mev = float(context.preprocessor.threshold_mev)
        self.threshold_mev = self.readout_threshold_mev
        self.noise = (NoiseSpec("count_u", (), "uniform"),
                      hit_noise_spec(self.max_hits, self.latent))
        if config.shower_latent:
            self.noise += (NoiseSpec("shower_noise", (config.shower_latent,), "normal"),)
        self.options: dict[str, Any] = {} if count_scale is None else {"count_scale": self.count_scale}
        if spread is not None:
            self.options["spread"] = self.voxeliser.spread

    def forward(self, energy: Tensor, theta: Tensor, phi: Tensor, detector: Tensor, *noise: Tensor) -> Tensor:
        count_u, hit_noise = noise[:2]
        shower_noise = noise[2] if len(noise) > 2 else None
        cond = self.encoder(energy, theta, phi, detector)  # (N, C)
        hits, seg, n_hits = generate_hits(self.generator, self.counts, cond, count_u, hit_noise, shower_noise,
                                          self.count_scale)  # (T, 5), (T,), (N,)
        if self.positions is not None and self.own_readout:  # cells read off the networks' coordinates
            showers = self.voxeliser(hits, seg, energy, *self.positions.layer_ring(hits))  # (N, V) MeV
        else:
            if self.positions is not None:
                hits = self.positions.to_hits(hits)
            showers = self.voxeliser(hits, seg, energy)
        if self.count_scale != 1.0:  # each hit's share of the drawn count's energy
            n_made = made_count(n_hits, self.count_scale, self.max_hits)
            showers = showers * (n_hits / n_made.clamp(min=1.0))[:, None]
        return zero_below(showers, self.threshold_mev)

    def lower_threshold(self, mev: float) -> None:
        """Cells down to ``mev`` come out (``ShowerSampler.lower_threshold``): the readout threshold is the
        sampler's last step, so it just moves down; a cell in [mev, threshold) holds the faint hits the
        generator placed there."""
        self.check_lower_threshold(mev, self.readout_threshold_mev)
        self.threshold_mev = float(mev)

    def voxelise_onto(self, geometry: CylindricalGeometry) -> MdmaGanSampler:
        """Voxelise onto ``geometry`` (another readout of the detector, same layers and radius): the hits,
        their count model and the energy scale stay the trained ones, only the cells change."""
        device = next(self.parameters()).device
        self.voxeliser = Voxeliser(geometry, self.scaling, self.voxeliser.spread).to(device)
        self.own_readout = False
        return self

    def metadata(self) -> dict[str, Any]:
        """The point-cloud layout, for readers of the exported graph."""
        return {"mdma_gan": {"hit_slots": self.max_hits, "latent": self.latent,
                             "count_bins": self.counts.bins}}
