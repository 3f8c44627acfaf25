"""The vq-gpt family's networks (``caloforge.models.vqvae``, ``caloforge.models.gpt``): FFT resampling,
cylindrical convolution, the quantiser (perplexity, EMA, dead-code restart, k-means), the VQ-VAE on
CaloChallenge grids and the GPT's key/value cache. Expected values are worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from caloforge.geometry import CylindricalGeometry
from caloforge.models.gpt import GPT, GPTConfig
from caloforge.models.vqvae import (
    VQVAE,
    CylConv,
    VectorQuantizer,
    VQConfig,
    fft_resample,
    fft_resample_matrix,
    from_grid,
    latent_sizes,
    perplexity,
    to_grid,
)


# ---- FFT resampling ---------------------------------------------------------------------------------------
def test_fft_resampling_round_trips_band_limited_signals_on_50_alpha_bins() -> None:
    n = 50
    alpha = torch.arange(n, dtype=torch.float64) * 2 * math.pi / n
    # frequencies up to 5 < Nyquist of 25 bins (12.5): down to 25 and back up is exact
    signal = 1.5 + torch.cos(alpha) - 0.5 * torch.sin(3 * alpha) + 0.2 * torch.cos(5 * alpha + 0.3)
    x = signal.float()[None]
    down = fft_resample(x, 25)
    np.testing.assert_allclose(down[0].numpy(), signal[::2].numpy(), atol=1e-5)  # same curve, every 2nd bin
    np.testing.assert_allclose(fft_resample(down, 50).numpy(), x.numpy(), atol=1e-5)
    # and 50 -> 13 -> 50 (no common divisor) for a signal below 13 bins' Nyquist (6.5)
    np.testing.assert_allclose(fft_resample(fft_resample(x, 13), 50).numpy(), x.numpy(), atol=1e-5)


def test_fft_resampling_up_then_down_is_the_identity_and_keeps_the_mean() -> None:
    x = torch.randn(3, 4, 25, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(fft_resample(fft_resample(x, 50), 25).numpy(), x.numpy(), atol=1e-5)
    # a constant keeps its value, and the mean over alpha is kept by any resampling
    np.testing.assert_allclose(fft_resample(torch.full((1, 50), 2.0), 13).numpy(), 2.0, atol=1e-6)
    np.testing.assert_allclose(fft_resample(x, 8).mean(-1).numpy(), x.mean(-1).numpy(), atol=1e-5)


def test_fft_resample_matrix_is_rfft_truncate_irfft() -> None:
    x = torch.randn(50, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    spectrum = torch.fft.rfft(x)[:13]  # 25 // 2 + 1 frequencies
    expected = torch.fft.irfft(spectrum, n=25) * 25 / 50
    got = fft_resample_matrix(50, 25).double() @ x
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-5)


# ---- grids and convolutions -------------------------------------------------------------------------------
def test_grid_view_follows_the_caloforge_voxel_order() -> None:
    layers, alphas, radials = 3, 5, 2
    flat = torch.arange(layers * alphas * radials, dtype=torch.float32)[None]
    grid = to_grid(flat, (layers, alphas, radials))  # (1, R, L, A)
    assert grid.shape == (1, radials, layers, alphas)
    assert grid[0, 1, 2, 4] == (2 * alphas + 4) * radials + 1  # voxel (layer 2, alpha 4, radial 1)
    assert torch.equal(from_grid(grid), flat)


def test_cylindrical_convolution_is_periodic_in_alpha() -> None:
    torch.manual_seed(0)
    conv = CylConv(2, 3)
    x = torch.randn(1, 2, 6, 8)
    # rolling the input by one alpha bin rolls the output by one bin: no edge in alpha
    np.testing.assert_allclose(conv(x.roll(1, dims=3)).detach().numpy(),
                               conv(x).roll(1, dims=3).detach().numpy(), atol=1e-6)
    # but not in z, which has edges (zero padding)
    assert not torch.allclose(conv(x.roll(1, dims=2)), conv(x).roll(1, dims=2), atol=1e-3)


# ---- the quantiser ----------------------------------------------------------------------------------------
def test_perplexity_counts_equally_used_codes() -> None:
    assert float(perplexity(torch.tensor([3, 3, 3, 3]), 8)) == pytest.approx(1.0)
    assert float(perplexity(torch.tensor([0, 1, 2, 3] * 5), 8)) == pytest.approx(4.0)
    # usage 1/2, 1/4, 1/4: entropy 1.5 ln 2, perplexity 2 ** 1.5
    assert float(perplexity(torch.tensor([0, 0, 1, 2]), 8)) == pytest.approx(2**1.5, rel=1e-5)


def test_codebook_ema_update_matches_the_hand_computed_step() -> None:
    vq = VectorQuantizer(2, 2, decay=0.9, dead_threshold=0.0, eps=0.0)
    vq.embedding.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0]]))
    vq.ema_sum.copy_(vq.embedding)
    vq.initialised.fill_(True)
    z = torch.tensor([[1.0, 0.0], [0.0, 3.0], [9.0, 9.0]])
    _, indices, commitment = vq(z, update=True)
    assert indices.tolist() == [0, 0, 1]
    # counts: 0.9 * 1 + 0.1 * [2, 1] = [1.1, 1.0]; sums: 0.9 * e + 0.1 * [(1, 3), (9, 9)]
    np.testing.assert_allclose(vq.ema_count.numpy(), [1.1, 1.0], atol=1e-6)
    np.testing.assert_allclose(vq.embedding.numpy(), [[0.1 / 1.1, 0.3 / 1.1], [9.9, 9.9]], atol=1e-5)
    # commitment: mean squared distance to the codes used (after the update)
    q = vq.embedding[indices]
    assert float(commitment) == pytest.approx(float(((z - q) ** 2).mean()), rel=1e-5)


def test_dead_codes_restart_at_batch_vectors_and_used_codes_stay() -> None:
    vq = VectorQuantizer(4, 2, decay=0.5, dead_threshold=0.8, eps=0.0)
    vq.embedding.copy_(torch.tensor([[0.0, 0.0], [50.0, 50.0], [60.0, 60.0], [70.0, 70.0]]))
    vq.ema_sum.copy_(vq.embedding)
    vq.initialised.fill_(True)
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    vq(z, update=True, generator=torch.Generator().manual_seed(1))
    # codes 1-3 got no vectors: count 0.5 < 0.8, so each now sits on a vector of the batch
    for code in vq.embedding[1:]:
        assert float((z - code).norm(dim=1).min()) < 1e-2
    assert float(vq.embedding[0].norm()) < 1.0 and vq.ema_count[0] > 0.8  # code 0 updated, not restarted
    # with the restarted codes, a batch spreads over more than one code
    _, indices, _ = vq(z)
    assert float(perplexity(indices, 4)) > 1.5


def test_kmeans_initialisation_finds_the_clusters() -> None:
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-5.0, 0.0], [5.0, 0.0]])
    z = torch.cat([c + 0.1 * torch.randn(100, 2, generator=generator) for c in centres])
    vq = VectorQuantizer(2, 2, kmeans_iters=10)
    vq.initialise(z, generator)
    found = vq.embedding[vq.embedding[:, 0].argsort()]
    np.testing.assert_allclose(found.numpy(), centres.numpy(), atol=0.1)
    assert bool(vq.initialised)


# ---- the VQ-VAE -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("grid", "down", "latent"), [
    ((45, 16, 9), (2, 1), (12, 8)),   # CaloChallenge dataset 2: 45 -> 23 -> 12 layers, 16 -> 8 alpha
    ((45, 50, 18), (2, 2), (12, 13)),  # dataset 3: 50 -> 25 -> 13 alpha by FFT resampling
])
def test_vqvae_latent_grid_and_decoded_fractions(grid, down, latent) -> None:  # type: ignore[no-untyped-def]
    n_layers, n_alpha, n_radial = grid
    geometry = CylindricalGeometry.regular("g", n_layers, n_alpha, tuple(range(n_radial + 1)), 3.4, "SiW")
    assert latent_sizes(grid, *down)[-1] == latent
    torch.manual_seed(0)
    vqvae = VQVAE(VQConfig(size="tiny", down_layers=down[0], down_alpha=down[1]), geometry, cond_dim=3)
    x = torch.rand(2, geometry.n_voxels)
    q, indices, _ = vqvae.quantise(x)
    assert q.shape == (2, latent[0] * latent[1], 4) and indices.shape == (2, latent[0] * latent[1])
    logits = vqvae.decode_indices(indices, torch.zeros(2, 3))
    assert logits.shape == (2, 1, geometry.n_voxels)
    np.testing.assert_allclose(torch.softmax(logits[:, 0], -1).sum(-1).detach().numpy(), 1.0, atol=1e-5)


# ---- the GPT ----------------------------------------------------------------------------------------------
def test_kv_cache_gives_the_logits_of_the_whole_sequence() -> None:
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(size="tiny", depth=2), cond_dim=3, segments=((5, 2), (7, 6))).eval()
    cond = torch.randn(4, 3)
    tokens = torch.cat([torch.randint(0, 5, (4, 2)), torch.randint(0, 7, (4, 6))], dim=1)
    full = gpt(cond, tokens)  # [(4, 2, 5), (4, 6, 7)]
    x, cache, stepped = gpt.input(0, cond=cond), None, []
    for position in range(gpt.length):
        logits, cache = gpt.step(x, position, cache)
        stepped.append(logits)
        if position + 1 < gpt.length:
            x = gpt.input(position + 1, token=tokens[:, position])
    for cached, whole in ((stepped[:2], full[0]), (stepped[2:], full[1])):
        np.testing.assert_allclose(torch.stack(cached, 1).detach().numpy(), whole.detach().numpy(), atol=1e-5)
    assert cache is not None and cache[0][0].shape == (4, 2, gpt.length, 8)  # (N, H, S, D / H)
    # causal: changing token 3 leaves the logits of positions <= 3 and changes those after
    changed = tokens.clone()
    changed[:, 3] = (changed[:, 3] + 1) % 7
    after = gpt(cond, changed)[1]  # positions 2 .. 7
    np.testing.assert_allclose(after[:, :2].detach().numpy(), full[1][:, :2].detach().numpy(), atol=1e-6)
    assert not torch.allclose(after[:, 2:], full[1][:, 2:], atol=1e-4)
