"""Family ``mdma-gan``: showers as point clouds, a mean-field-attention GAN, voxelisation back to the readout.

After MDMA (the CaloChallenge entry with mean-field attention, arXiv 2410.21611's table): every cell with
energy becomes a hit (``points.py``: position dequantised inside its cell, alpha as cos/sin, log energy),
a generator of mean-field blocks (``caloforge.models.mean_field``) turns one normal latent per hit into hit
features, given the conditions (energy, angles, detector through the run's condition encoder) and the hit
count, and a permutation-invariant critic of the same blocks scores hit sets. The hit count is drawn
first, from a learned p(n | conditions) driven by one uniform number (``counts.py``).

Training (``module.py``): WGAN-GP (Gulrajani et al. 2017) with the gradient penalty on masked
interpolates, mean-field feature matching and a response term (E_tot / E_inc) in the generator's loss,
weight normalisation in the critic. Generation (``sampler.py``) is one ``ShowerSampler`` with a fixed
number of hit slots: count draw, generator, voxelisation (scatter-add), so it exports to ONNX whole.
Design notes and every config key: docs/families/mdma-gan.md.

Layout: ``points.py``, ``counts.py``, ``sampler.py`` (no Lightning), ``module.py`` (the LightningModule,
imported only to train).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from caloforge.errors import InputError
from caloforge.families import Family
from caloforge.models.mean_field import MeanFieldConfig

__all__ = ["FAMILY", "POSITIONS", "MdmaGanConfig"]

POSITIONS = ("linear", "logit")


@dataclass
class MdmaGanConfig:
    """The ``model`` section of an ``mdma-gan`` run.

    Args:
        net: generator and critic size (``caloforge.models.mean_field``: presets tiny, small, base).
        max_hits: hit slots of the sampler, the largest hit count it can draw (``null``: one per cell of
            the readout). Training showers with more hits keep their ``max_hits`` most energetic ones.
        positions: the networks' z and r: ``linear`` (the hit features: layers and mm mapped onto [-1, 1])
            or ``logit`` (cell units through a logit, ``points.LogitPositions``: rings equally wide, no
            output outside the readout). ``linear`` is the default so checkpoints saved before the option
            read as they were trained.
        count_bins: bins of the hit-count model over [0, max_hits].
        count_width: hidden width of the hit-count model's MLP.
        critic_steps: critic updates per generator update; each training step (batch) makes exactly one
            update, critic or generator in turn (``train.max_steps`` counts optimiser steps: two a batch,
            with the hit-count model's).
        gp_weight: weight of the gradient penalty (lambda of WGAN-GP).
        adversarial_weight: weight of the critic's score, -E[D(fake)], in the generator's loss (0: the
            generator learns from the non-adversarial terms alone, every batch, and the critic is not
            trained: feature matching then compares the features of the untrained critic).
        feature_matching: weight of the mean-field feature matching in the generator's loss.
        response_weight: weight of the response term, the squared difference of ln(E_tot / E_inc) between
            each generated shower and the real one whose conditions and hit count it was given.
        sliced_weight: weight of the sliced Wasserstein distance between the batch's pooled real and
            generated hits in the generator's loss (``module.sliced_wasserstein``; 0: off).
        sliced_projections: random directions of that distance per generator step.
        shower_latent: size of a normal latent per shower that the generator takes beside the conditions
            (0: none, as before 2026-12-04): what varies from shower to shower at fixed conditions (depth of
            the first interaction, spread), which one latent per hit averages away. The sampler then takes a
            third noise input, ``shower_noise``.
        shower_sliced_weight: weight of a sliced Wasserstein distance between the batch's real and generated
            showers in shower summaries (``module.shower_summaries``: ln E_tot / E_inc, energy-weighted mean
            and spread of depth and radius, mean depth and mean hit energy; 0: off): the shower-to-shower
            distribution that the pooled hits do not see, and the term that teaches ``shower_latent``.
        sliced_axes: add the feature axes (z, cos, sin, r, e) to the random directions, so each hit
            feature's own marginal is matched exactly at every step, not only through mixed projections.
        count_lr: the hit-count model's learning rate (its own optimiser, cosine-annealed as the run's;
            a 64-bin softmax of one energy learns slowly: at 5e-4 its NLL on Geant4 was still 2.5 nats after
            1500 steps, at 3e-3 1.6 after 6000).
        critic_lr: the critic's learning rate (``null``: 4 x ``optim.lr``; a faster critic, as in the
            two time-scale update rule of Heusel et al. 2017, kept the tiny toy runs from collapsing).
        betas: Adam's betas for both networks ((0, 0.9) as in WGAN-GP).
    """

    net: MeanFieldConfig = field(default_factory=MeanFieldConfig)
    max_hits: int | None = None
    positions: str = "linear"
    count_bins: int = 64
    count_width: int = 64
    critic_steps: int = 2
    gp_weight: float = 10.0
    adversarial_weight: float = 1.0
    feature_matching: float = 1.0
    response_weight: float = 1.0
    sliced_weight: float = 10.0
    sliced_projections: int = 32
    sliced_axes: bool = False
    shower_latent: int = 0
    shower_sliced_weight: float = 0.0
    count_lr: float = 3e-3
    critic_lr: float | None = None
    betas: tuple[float, float] = (0.0, 0.9)

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ``InputError`` for settings no model can be built with (also after in-place changes)."""
        self.net.resolved()
        if self.max_hits is not None and self.max_hits < 1:
            raise InputError(None, "model.max_hits", f"is {self.max_hits}", "an integer >= 1 (or null)")
        if self.positions not in POSITIONS:
            raise InputError(None, "model.positions", f"is {self.positions!r}",
                             f"one of {', '.join(POSITIONS)}")
        for name in ("count_bins", "count_width", "critic_steps", "sliced_projections"):
            if getattr(self, name) < 1:
                raise InputError(None, f"model.{name}", f"is {getattr(self, name)}", "an integer >= 1")
        if self.shower_latent < 0:
            raise InputError(None, "model.shower_latent", f"is {self.shower_latent}", "an integer >= 0")
        weights = ("gp_weight", "adversarial_weight", "feature_matching", "response_weight", "sliced_weight",
                   "shower_sliced_weight")
        for name in weights:
            if getattr(self, name) < 0:
                raise InputError(None, f"model.{name}", f"is {getattr(self, name)}", "a number >= 0")
        if self.count_lr <= 0:
            raise InputError(None, "model.count_lr", f"is {self.count_lr}", "a number > 0")
        if self.critic_lr is not None and self.critic_lr <= 0:
            raise InputError(None, "model.critic_lr", f"is {self.critic_lr}", "a number > 0 (or null)")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise InputError(None, "model.betas", f"is {list(self.betas)}", "two numbers in [0, 1)")

    def critic_lr_for(self, lr: float) -> float:
        """The critic's learning rate given the run's ``optim.lr``."""
        return 4.0 * lr if self.critic_lr is None else float(self.critic_lr)

    def hit_slots(self, n_voxels: int) -> int:
        """The sampler's hit slots for a readout of ``n_voxels`` cells."""
        return int(self.max_hits or n_voxels)


FAMILY = Family(
    name="mdma-gan",
    summary="point-cloud GAN with mean-field attention (MDMA), hits voxelised back to the readout",
    config=MdmaGanConfig,
    build_module="caloforge.families.mdma_gan.module:MdmaGanModule",
    build_sampler="caloforge.families.mdma_gan.sampler:MdmaGanSampler",
    representation="points",
    sample_options=("count_scale", "spread"),
    tiny={"net": {"size": "tiny"}, "count_bins": 8, "count_width": 8, "critic_steps": 1},
)
