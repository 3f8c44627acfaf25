"""Showers in MeV <-> what the VQ-VAE sees, as small pure torch functions (ONNX-traceable where used in
the sampler). Calo-VQ's normalisation: each shower is divided by E_inc and by its own R = E_tot / E_inc,
so the VQ-VAE learns only the shape (cell fractions summing to one) and R is modelled on its own (as
tokens of the prior, ``caloforge.families.vq_gpt.tokens``); the encoder reads the fractions log1p-scaled.

The decoder's answer is turned into fractions in one of two ways (``VQConfig.decoder``):

* ``softmax``: one logit per cell; the fractions are their softmax, each cell's mean share of the shower.
* ``hurdle``: per cell a hit logit a, and mu, log sigma of y = ln(f x V) given a hit. Training maximises
  the likelihood of the shower's cells (``hurdle_nll``); generation draws each cell (``draw_fractions``):
  hit with probability sigmoid(a), deposit exp(y) with y ~ N(mu, sigma), the drawn cells then scaled to
  sum to one. The cells of a shower are independent given its codes, so the codes carry the shape and the
  draw the cell-to-cell fluctuations, and a shower lights as many cells as Geant4's do on average.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "compose", "decoded_fractions", "draw_fractions", "encoder_input", "fractions_and_ratio", "hurdle_nll",
]

#: bounds of ln sigma of a hit cell's log-deposit (a narrower sigma is a spike, a wider no cell)
LOG_SIGMA_RANGE = (-4.0, 2.0)


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
    threshold). fractions (N, V) (>= 0, rows summing to one), ratio (N,), energy (N,) MeV."""
    total = ratio * energy  # (N,) MeV
    showers = fractions * total[:, None]
    showers = torch.where(showers < threshold_mev, torch.zeros_like(showers), showers)
    kept = showers.sum(dim=1)
    scale = torch.where(kept > 0, total / kept.clamp(min=1e-30), torch.ones_like(kept))
    return showers * scale[:, None]


def hurdle_nll(out: Tensor, fractions: Tensor) -> tuple[Tensor, Tensor]:
    """Negative log-likelihood of true fractions (N, V) under decoder outputs (N, 3, V) = (hit logit, mu,
    ln sigma), as (hit cross-entropy, deposit NLL), each in nats per cell averaged over all N x V cells:
    a cell is hit when its fraction is > 0 (the readout threshold was applied to the data); the deposit
    term is the Gaussian NLL of y = ln(f x V) for hit cells (without its constant ln sqrt(2 pi))."""
    logit, mu, log_sigma = out.unbind(dim=1)
    hit = fractions > 0
    bce = F.binary_cross_entropy_with_logits(logit, hit.float())
    log_sigma = log_sigma.clamp(*LOG_SIGMA_RANGE)
    y = torch.log(fractions.clamp(min=1e-30) * fractions.shape[1])
    nll = 0.5 * ((y - mu) * torch.exp(-log_sigma)) ** 2 + log_sigma
    return bce, torch.where(hit, nll, torch.zeros_like(nll)).mean()


def draw_fractions(out: Tensor, hit_u: Tensor, deposit_z: Tensor) -> Tensor:
    """Decoder outputs (N, 3, V) (``hurdle_nll``), uniform hit_u (N, V) and standard normal deposit_z
    (N, V) -> drawn fractions (N, V), >= 0, each row summing to one (a shower with no cell drawn gets
    zeros, as ``compose`` keeps them). Plain elementwise torch (ONNX-traceable)."""
    logit, mu, log_sigma = out.unbind(dim=1)
    hit = hit_u < torch.sigmoid(logit)
    y = mu + torch.exp(log_sigma.clamp(*LOG_SIGMA_RANGE)) * deposit_z
    deposits = torch.where(hit, torch.exp(y.clamp(max=30.0)), torch.zeros_like(y))
    return deposits / deposits.sum(dim=1, keepdim=True).clamp(min=1e-30)


def decoded_fractions(out: Tensor, *cell_noise: Tensor) -> Tensor:
    """Decoder outputs (N, K, V) -> cell fractions (N, V) summing to one: the softmax of K = 1 logits, or
    with K = 3 a draw (``draw_fractions``) driven by ``cell_noise`` = (hit_u, deposit_z), each (N, V)."""
    if out.shape[1] == 1:
        return torch.softmax(out[:, 0], dim=-1)
    return draw_fractions(out, *cell_noise)
