"""Reconstruction-only showers: encoder -> quantiser -> decoder, no prior (Calo-VQ compares these with
generated showers to tell what the autoencoder limits from what the prior does). No Lightning.

``reconstruct`` works on a ``VqGptSampler`` (e.g. ``load_generator(ckpt).sampler``) and tensors;
``reconstruct_showers`` on a ``ShowerGenerator`` and a ``ShowerSet``, returning a ``ShowerSet`` a
benchmark scores like generated showers. Each shower keeps its own E_tot / E_inc exactly (the prior's
digitised R is not involved), so any difference from the input is the autoencoder's. A hurdle decoder's
cells are drawn as in generation, from ``generator`` (torch's global generator when ``None``). A calibrated
checkpoint's reconstructions pass through its cell calibration too, as its generated showers do, so the two
stay comparable.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from caloforge.calibration import CalibratedSampler
from caloforge.data import ShowerSet
from caloforge.families.vq_gpt.sampler import VqGptSampler
from caloforge.families.vq_gpt.showers import compose, decoded_fractions, encoder_input, fractions_and_ratio

__all__ = ["reconstruct", "reconstruct_showers"]


@torch.no_grad()
def reconstruct(
    sampler: VqGptSampler, showers: Tensor, energy: Tensor, theta: Tensor, phi: Tensor, detector: Tensor,
    generator: torch.Generator | None = None,
) -> Tensor:
    """showers (N, V) MeV, energy (N,) MeV, theta/phi (N,) radians, detector (N,) int64 -> the VQ-VAE's
    reconstruction (N, V) MeV, with each input's E_tot kept and the readout threshold applied."""
    vqvae = sampler.vqvae
    scale = float(sampler.config.vq.input_scale or showers.shape[1])
    fractions, ratio = fractions_and_ratio(showers, energy)
    q, _, _ = vqvae.quantise(encoder_input(fractions, scale))
    cond = sampler.encoder(energy, theta, phi, detector)
    out = vqvae.decode(q, cond)  # (N, K, V)
    draws = generator if generator is not None else torch.default_generator
    cell_noise = [spec.draw(len(showers), draws).to(showers.device) for spec in sampler.cell_noise]
    return compose(decoded_fractions(out, *cell_noise), ratio, energy, sampler.threshold_mev)


@torch.no_grad()
def reconstruct_showers(
    generator: Any, showers: ShowerSet, batch_size: int = 1000, seed: int = 0
) -> ShowerSet:
    """The reconstruction of every shower of ``showers`` by ``generator``'s VQ-VAE (a ``ShowerGenerator``
    of a ``vq-gpt`` checkpoint, calibrated or not: module doc), as a ``ShowerSet`` with the same
    conditions, in batches; a hurdle decoder's cells are drawn from a generator seeded with ``seed``."""
    draws = torch.Generator().manual_seed(seed)
    sampler = generator.sampler.base()
    if not isinstance(sampler, VqGptSampler):
        raise TypeError(f"reconstruction needs a vq-gpt sampler, not {type(sampler).__name__}")
    calibration = generator.sampler.calibration if isinstance(generator.sampler, CalibratedSampler) else None
    device = generator.device
    parts = []
    for start in range(0, len(showers), batch_size):
        part = slice(start, start + batch_size)

        def column(values: np.ndarray, dtype: torch.dtype, part: slice = part) -> Tensor:
            return torch.as_tensor(np.asarray(values[part]), dtype=dtype, device=device)

        energy = column(showers.energy, torch.float32)
        rebuilt = reconstruct(
            sampler, column(showers.showers, torch.float32), energy,
            column(showers.condition("theta"), torch.float32),
            column(showers.condition("phi"), torch.float32),
            column(showers.condition("detector"), torch.int64), draws,
        )
        if calibration is not None:
            rebuilt = calibration(rebuilt, energy)
        parts.append(rebuilt.cpu().numpy())
    out = np.concatenate(parts) if parts else np.zeros((0, showers.geometry.n_voxels), np.float32)
    return ShowerSet(out, showers.geometry, showers.energy, showers.theta, showers.phi, showers.detector,
                     source="vq-gpt reconstruction")
