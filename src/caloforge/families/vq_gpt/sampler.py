"""The ``vq-gpt`` sampler: conditions + uniform noise -> showers in MeV (no Lightning; ``caloforge.sampler``).

Noise spec, in order (each (N, *shape), uniform on [0, 1)):

* ``token_u`` (S,): one number per token of the prior (``ratio.digits`` tokens of E_tot / E_inc, then
  the L' x A' codes), each turned into a token by the inverse CDF of the filtered next-token distribution;
* ``ratio_u`` (): the place of E_tot / E_inc inside its digitised level;
* with ``vq.decoder: hurdle`` also ``cell_u`` (V,) uniform, whether each cell is hit, and ``cell_z`` (V,)
  standard normal, its log-deposit (``showers.draw_fractions``).

forward: condition vector -> the GPT's loop over S positions with a key/value cache (a Python loop over a
constant range, so tracing unrolls it) -> R and the codes -> the decoder's cell fractions (its softmax, or a
draw from its per-cell distributions) -> showers = fractions x R x E_inc, cells below the readout threshold
zeroed and the rest rescaled to keep E_tot.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from caloforge.conditioning import ConditionEncoder
from caloforge.context import RunContext
from caloforge.families.vq_gpt import VqGptConfig, check_sampling
from caloforge.families.vq_gpt.showers import compose, decoded_fractions
from caloforge.families.vq_gpt.tokens import RatioTokens, draw
from caloforge.geometry import CylindricalGeometry
from caloforge.models.gpt import GPT, KVCache
from caloforge.models.vqvae import VQVAE
from caloforge.sampler import NoiseSpec, ShowerSampler

__all__ = ["VqGptSampler", "build_gpt", "build_vqvae", "generate_tokens", "ratio_tokens"]


def build_vqvae(config: VqGptConfig, geometry: CylindricalGeometry, cond_dim: int) -> VQVAE:
    """The stage-1 VQ-VAE, freshly initialised."""
    return VQVAE(config.vq, geometry, cond_dim)


def build_gpt(config: VqGptConfig, vqvae: VQVAE, cond_dim: int) -> GPT:
    """The stage-2 prior over [R digits, codes], freshly initialised."""
    segments = ((config.ratio.base, config.ratio.digits), (vqvae.n_codes, vqvae.n_latent))
    return GPT(config.gpt, cond_dim, segments)


def ratio_tokens(config: VqGptConfig, context: RunContext) -> RatioTokens:
    """E_tot / E_inc <-> tokens, centred on the training set's mean R (the run's context)."""
    return RatioTokens(context.ranges.mean_energy_ratio, config.ratio.span, config.ratio.base,
                       config.ratio.digits)


def generate_tokens(
    gpt: GPT, cond: Tensor, u: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
) -> Tensor:
    """The autoregressive loop with a key/value cache: cond (N, C), u (N, S) uniform -> tokens (N, S) int64.

    The loop runs over the constant ``gpt.length`` (no branching on tensor values), so an ONNX trace
    unrolls it into S steps of one position each.
    """
    x = gpt.input(0, cond=cond)  # (N, 1, D)
    cache: KVCache | None = None
    tokens = []
    for position in range(gpt.length):
        logits, cache = gpt.step(x, position, cache)  # (N, vocab)
        token = draw(logits, u[:, position], temperature, top_k, top_p)  # (N,)
        tokens.append(token)
        if position + 1 < gpt.length:
            x = gpt.input(position + 1, token=token)
    return torch.stack(tokens, dim=1)


class VqGptSampler(ShowerSampler):
    """Prior, then decoder (module doc for the noise).

    Attributes:
        vqvae: the stage-1 VQ-VAE (the decoder and codebook generate; the encoder serves
            ``diagnostics.reconstruct``).
        gpt: the stage-2 prior (weights: the training's average).
        encoder: the run's condition encoder (not weights).
        ratio: R <-> tokens; threshold_mev: the readout threshold of the run's preprocessing.
        cell_noise: the noise of the decoder's cell draws, the last entries of ``noise`` (none for a
            softmax decoder).
    """

    def __init__(
        self, config: VqGptConfig, context: RunContext, temperature: float | None = None,
        top_k: int | None = None, top_p: float | None = None,
    ) -> None:
        super().__init__()
        config.check()
        spec = context.spec
        self.encoder: ConditionEncoder = spec.encoder()
        self.vqvae = build_vqvae(config, context.geometry, spec.dim)
        self.gpt = build_gpt(config, self.vqvae, spec.dim)
        self.ratio = ratio_tokens(config, context)
        self.threshold_mev = float(context.preprocessor.threshold_mev)
        self.digits = config.ratio.digits
        self.temperature = float(config.sample.temperature if temperature is None else temperature)
        self.top_k = int(config.sample.top_k if top_k is None else top_k)
        self.top_p = float(config.sample.top_p if top_p is None else top_p)
        check_sampling(self.temperature, self.top_k, self.top_p)
        self.options = {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p}
        cells = (context.geometry.n_voxels,)
        self.cell_noise: tuple[NoiseSpec, ...] = (
            (NoiseSpec("cell_u", cells, "uniform"), NoiseSpec("cell_z", cells, "normal"))
            if config.vq.decoder == "hurdle" else ()
        )
        self.noise = (NoiseSpec("token_u", (self.gpt.length,), "uniform"),
                      NoiseSpec("ratio_u", (), "uniform"), *self.cell_noise)
        self.config = config

    def decode(
        self, tokens: Tensor, cond: Tensor, energy: Tensor, ratio_u: Tensor, *cell_noise: Tensor
    ) -> Tensor:
        """tokens (N, S) = [R digits, codes], cond (N, C), energy (N,) MeV, ratio_u (N,) uniform and, for a
        hurdle decoder, cell_u (N, V) uniform and cell_z (N, V) normal -> showers (N, V) MeV."""
        ratio = self.ratio.decode(tokens[:, : self.digits], ratio_u)  # (N,)
        out = self.vqvae.decode_indices(tokens[:, self.digits :], cond)  # (N, K, V)
        return compose(decoded_fractions(out, *cell_noise), ratio, energy, self.threshold_mev)

    def forward(self, energy: Tensor, theta: Tensor, phi: Tensor, detector: Tensor, *noise: Tensor) -> Tensor:
        token_u, ratio_u, *cell_noise = noise
        cond = self.encoder(energy, theta, phi, detector)  # (N, C)
        tokens = generate_tokens(self.gpt, cond, token_u, self.temperature, self.top_k, self.top_p)
        return self.decode(tokens, cond, energy, ratio_u, *cell_noise)  # (N, V) MeV

    def metadata(self) -> dict[str, Any]:
        """The token layout, for readers of the exported graph."""
        return {"vq_gpt": {"ratio_digits": self.digits, "n_codes": self.vqvae.n_codes,
                           "latent_shape": list(self.vqvae.latent_shape), "sequence_length": self.gpt.length}}
