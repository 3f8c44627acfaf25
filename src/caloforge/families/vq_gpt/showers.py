"""Showers in MeV <-> what the VQ-VAE sees, as small pure torch functions (ONNX-traceable where used in
the sampler). Calo-VQ's normalisation: each shower is divided by E_inc and by its own R = E_tot / E_inc,
so the VQ-VAE learns only the shape (cell fractions summing to one) and R is modelled on its own (as
tokens of the prior, ``caloforge.families.vq_gpt.tokens``); the encoder reads the fractions log1p-scaled.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["compose", "encoder_input", "fractions_and_ratio"]


def fractions_and_ratio(showers: Tensor, energy: Tensor) -> tuple[Tensor, Tensor]:
    """showers (N, V) MeV, energy (N,) MeV -> cell fractions f = E_cell / E_tot (N, V) summing to one, and
    R = E_tot / E_inc (N,). An empty shower gets the uniform fractions (and R = 0)."""
    total = showers.sum(dim=1)  # (N,) MeV
    uniform = torch.full_like(showers, 1.0 / showers.shape[1])
    fractions = torch.where(total[:, None] > 0, showers / total.clamp(min=1e-30)[:, None], uniform)
    return fractions, total / energy


def encoder_input(fractions: Tensor, scale: float) -> Tensor:
    """log1p(f x scale) (N, V): with scale = V a shower spread evenly reads log 2 everywhere, an empty
    cell 0 and the core a few units, a range a network handles without a fitted standardisation."""
    return torch.log1p(fractions * scale)


def compose(fractions: Tensor, ratio: Tensor, energy: Tensor, threshold_mev: float) -> Tensor:
    """Showers (N, V) MeV = f x R x E_inc with cells below ``threshold_mev`` set to zero and the survivors
    scaled once so the shower keeps E_tot = R x E_inc (that factor is >= 1, so none falls below the
    threshold). fractions (N, V) (a softmax: all > 0), ratio (N,), energy (N,) MeV."""
    total = ratio * energy  # (N,) MeV
    showers = fractions * total[:, None]
    showers = torch.where(showers < threshold_mev, torch.zeros_like(showers), showers)
    kept = showers.sum(dim=1)
    scale = torch.where(kept > 0, total / kept.clamp(min=1e-30), torch.ones_like(kept))
    return showers * scale[:, None]
