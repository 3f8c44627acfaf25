"""The mdma-gan family's pieces: the point-cloud representation and its way back to cells, the mean-field
networks' symmetries and masks, the hit-count draw, and the sampler's ONNX graph (the whole pipeline from
the CLI is in test_family_conformance.py)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor
from toys import TOY_GEOMETRY, toy_showers

from caloforge.context import RunContext
from caloforge.data import ShowerSet
from caloforge.errors import InputError
from caloforge.families.mdma_gan import MdmaGanConfig
from caloforge.families.mdma_gan.counts import HitCountModel
from caloforge.families.mdma_gan.module import (
    log_response,
    marginal_distance,
    projection_directions,
    shower_summaries,
    sliced_wasserstein,
    sorted_rows,
)
from caloforge.families.mdma_gan.points import (
    LogitPositions,
    PointScaling,
    Voxeliser,
    grid_to_hits,
    pack,
    points_batch,
    spread_collisions,
)
from caloforge.families.mdma_gan.sampler import (
    MdmaGanSampler,
    generate_hits,
    hit_noise_spec,
    hit_noise_width,
    made_count,
)
from caloforge.geometry import CylindricalGeometry, LayerBinning
from caloforge.models.mean_field import (
    MeanFieldAttention,
    MeanFieldConfig,
    MeanFieldCritic,
    MeanFieldGenerator,
    set_products,
    summing_matrix,
)
from caloforge.sampler import normal_from_bits

TINY = MeanFieldConfig(size="tiny")
# per-layer binning with an empty layer and a single alpha bin: the tables of the voxeliser, not a grid
IRREGULAR = CylindricalGeometry(
    "toy-irregular",
    (LayerBinning((0.0, 1.0, 2.0), 1), LayerBinning((0.0, 0.5, 1.0, 2.0), 4), LayerBinning((0.0,), 1),
     LayerBinning((0.0, 2.0), 3)),
    (3.4,) * 4, "SiW",
)


@pytest.fixture(scope="module")
def context() -> RunContext:
    return RunContext.fit(toy_showers(64))


def _irregular_showers(n: int) -> ShowerSet:
    rng = np.random.default_rng(5)
    energy = np.exp(rng.uniform(math.log(1e3), math.log(1e5), n))
    showers = rng.gamma(2.0, 1.0, (n, IRREGULAR.n_voxels)) * energy[:, None] / 40
    showers[showers < 0.5] = 0.0
    return ShowerSet(showers.astype(np.float32), IRREGULAR, energy)


# ---- grid -> hits -> grid ---------------------------------------------------------------------------------
@pytest.mark.parametrize("irregular", [False, True])
def test_grid_to_hits_and_back_keeps_the_energy_of_every_cell(irregular: bool) -> None:
    showers = _irregular_showers(40) if irregular else toy_showers(40, seed=2)
    context = RunContext.fit(showers)
    scaling = PointScaling.of(context)
    hits, mask = grid_to_hits(showers.showers, showers.energy, showers.geometry, scaling,
                              np.random.default_rng(0))
    assert mask.sum() == (showers.showers > 0).sum()
    assert np.all(np.abs(hits[..., 0]) <= 1) and np.all(np.abs(hits[..., 3]) <= 1)
    cells = Voxeliser(showers.geometry, scaling)(*pack(torch.from_numpy(hits), torch.from_numpy(mask)),
                                                 torch.as_tensor(showers.energy, dtype=torch.float32))
    np.testing.assert_allclose(cells.numpy(), showers.showers, rtol=1e-4, atol=1e-6)


def test_hits_sit_inside_their_cells_and_the_draws_differ_between_calls(context: RunContext) -> None:
    showers = toy_showers(8, seed=3)
    scaling = PointScaling.of(context)
    a, mask = grid_to_hits(showers.showers, showers.energy, TOY_GEOMETRY, scaling, np.random.default_rng(1))
    b, _ = grid_to_hits(showers.showers, showers.energy, TOY_GEOMETRY, scaling, np.random.default_rng(2))
    assert not np.allclose(a[mask][:, :4], b[mask][:, :4])  # dequantised: positions move within cells
    np.testing.assert_allclose(a[mask][:, 4], b[mask][:, 4])  # energies do not
    np.testing.assert_allclose(np.hypot(a[mask][:, 1], a[mask][:, 2]), 1.0, rtol=1e-6)


def test_no_seam_at_plus_minus_pi(context: RunContext) -> None:
    voxeliser = Voxeliser(TOY_GEOMETRY, PointScaling.of(context))
    n_alpha, n_radial = TOY_GEOMETRY.n_alpha, TOY_GEOMETRY.n_radial
    alphas = torch.tensor([math.pi - 1e-4, -math.pi + 1e-4, math.pi + 1e-4, -math.pi - 1e-4, math.pi])
    hits = torch.zeros(1, len(alphas), 5)
    hits[0, :, 1], hits[0, :, 2] = torch.cos(alphas), torch.sin(alphas)
    hits[0, :, 0] = -0.9  # layer 0
    hits[0, :, 3] = -0.9  # radial bin 0
    alpha_bin = voxeliser.cells(hits)[0] // n_radial
    # just below +pi is the last bin; just above -pi, or past +pi (wrapped), the first
    assert alpha_bin.tolist()[:4] == [n_alpha - 1, 0, 0, n_alpha - 1]
    assert alpha_bin[4] in (0, n_alpha - 1)
    # and the features are continuous across the seam
    assert torch.allclose(hits[0, 0, 1:3], hits[0, 1, 1:3], atol=1e-3)


@pytest.mark.parametrize("irregular", [False, True])
def test_logit_positions_give_rings_equal_width_and_map_back_to_the_same_cells(irregular: bool) -> None:
    showers = _irregular_showers(30) if irregular else toy_showers(30, seed=4)
    geometry = showers.geometry
    scaling = PointScaling.of(RunContext.fit(showers))
    positions, voxeliser = LogitPositions(geometry, scaling), Voxeliser(geometry, scaling)
    hits, mask = grid_to_hits(showers.showers, showers.energy, geometry, scaling, np.random.default_rng(3))
    packed, _ = pack(torch.from_numpy(hits), torch.from_numpy(mask))
    x = positions.to_model(packed)
    torch.testing.assert_close(x[:, [1, 2, 4]], packed[:, [1, 2, 4]])  # only z and r change
    torch.testing.assert_close(positions.to_hits(x), packed, rtol=0, atol=1e-4)
    assert torch.equal(voxeliser.cells(positions.to_hits(x)), voxeliser.cells(packed))
    # the sampler's short cut: layer and ring read off the logits, the same cells without the radii
    assert torch.equal(voxeliser.cells(x, *positions.layer_ring(x)), voxeliser.cells(packed))
    # a hit half-way through ring k of a layer with n rings sits at logit((k + 1/2) / n) / 4, whatever the
    # ring's width in mm
    layer = 1 if irregular else 0
    binning = geometry.layers[layer]
    edges = np.asarray(binning.r_edges)
    probe = torch.zeros(binning.n_radial, 5)
    probe[:, 0] = (layer + 0.5) / geometry.n_layers * 2 - 1
    probe[:, 3] = torch.tensor(0.5 * (edges[:-1] + edges[1:]) / scaling.outer_radius_mm * 2 - 1)
    unit = (torch.arange(binning.n_radial) + 0.5) / binning.n_radial
    torch.testing.assert_close(positions.to_model(probe)[:, 3], torch.log(unit / (1 - unit)) / 4)
    # any network output is a position inside the readout: far tails land in the first / last layer and ring
    far = torch.tensor([[-30.0, 1, 0, -30, 0], [30, 1, 0, 30, 0]])
    cells = voxeliser.cells(positions.to_hits(far))
    layer_of, _, ring_of = (torch.as_tensor(i)[cells] for i in geometry.voxel_indices)
    assert layer_of.tolist() == [0, geometry.n_layers - 1]
    assert ring_of[0] == 0 and ring_of[1] == geometry.layers[-1].n_radial - 1


def test_positions_option_is_checked() -> None:
    with pytest.raises(InputError, match=r"model\.positions.*'cm'.*one of linear, logit"):
        MdmaGanConfig(positions="cm")


def test_points_batch_is_padded_sorted_and_a_function_of_the_batch(context: RunContext) -> None:
    showers = toy_showers(6, seed=4)
    hits, mask, cond, energy = points_batch(showers, context)
    n = (showers.showers > 0).sum(1)
    assert hits.shape == (6, n.max(), 5) and mask.dtype == torch.bool and cond.shape == (6, context.spec.dim)
    assert mask.sum(1).tolist() == n.tolist()
    assert (hits[~mask] == 0).all()
    e = hits[..., 4].masked_fill(~mask, -torch.inf)
    assert (e[:, :-1] >= e[:, 1:]).all()  # highest energy first
    torch.testing.assert_close(energy, torch.as_tensor(showers.energy, dtype=torch.float32))
    again = points_batch(showers, context)
    torch.testing.assert_close(hits, again[0])
    # a shower with no hit gives an all-padding row, not an error
    empty = ShowerSet(np.zeros((2, TOY_GEOMETRY.n_voxels), np.float32), TOY_GEOMETRY, np.array([1e3, 2e3]))
    hits, mask, _, _ = points_batch(empty, context)
    assert hits.shape == (2, 1, 5) and not mask.any()


# ---- the networks: symmetries and masks -------------------------------------------------------------------
def _networks(cond_dim: int = 3) -> tuple[MeanFieldGenerator, MeanFieldCritic]:
    torch.manual_seed(0)
    return MeanFieldGenerator(TINY, cond_dim, 5).eval(), MeanFieldCritic(TINY, cond_dim, 5).eval()


def _sets(counts: list[int], dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Packed random sets: (hits (T, dim), seg (T,), cond (N, 3))."""
    g = torch.Generator().manual_seed(seed)
    seg = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    return torch.randn(len(seg), dim, generator=g), seg, torch.randn(len(counts), 3, generator=g)


def test_generator_is_equivariant_and_critic_invariant_under_hit_permutations() -> None:
    generator, critic = _networks()
    z, seg, cond = _sets([7, 4, 1], 4, seed=1)
    perm = torch.randperm(len(seg), generator=torch.Generator().manual_seed(1))  # across sets, too
    with torch.no_grad():
        out = generator(z, seg, cond)
        torch.testing.assert_close(generator(z[perm], seg[perm], cond), out[perm])
        score, field = critic(out, seg, cond)
        score_p, field_p = critic(out[perm], seg[perm], cond)
    torch.testing.assert_close(score_p, score, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(field_p, field, rtol=1e-5, atol=1e-6)


def test_a_set_is_the_same_alone_or_packed_with_others_and_an_empty_set_is_finite() -> None:
    generator, critic = _networks()
    z, seg, cond = _sets([5, 2, 0, 9], 4, seed=2)
    z[seg == 3] *= 30.0  # another set with large activations must not move the others (the shared shift)
    with torch.no_grad():
        out = generator(z, seg, cond)
        score, _ = critic(out, seg, cond)
        for k in (0, 1, 3):
            alone = seg == k
            out_k = generator(z[alone], torch.zeros(int(alone.sum()), dtype=torch.int64), cond[k : k + 1])
            torch.testing.assert_close(out_k, out[alone], rtol=1e-5, atol=1e-5)
            score_k, _ = critic(out_k, torch.zeros_like(seg[alone]), cond[k : k + 1])
            torch.testing.assert_close(score_k, score[k : k + 1], rtol=1e-5, atol=1e-5)
    # the set with no hit (index 2) has a finite score: the null hit is always attended
    assert torch.isfinite(score).all()
    no_hits = critic(torch.zeros(0, 5), torch.zeros(0, dtype=torch.int64), cond[:2])[0]
    assert no_hits.shape == (2,) and torch.isfinite(no_hits).all()


def test_sums_as_products_with_the_summing_matrix_match_the_scatter_adds() -> None:
    # sampling's per-set sums (a sparse product, hits packed set after set) against training's scatter-adds
    counts = torch.tensor([5, 2, 0, 9])
    summing = summing_matrix(counts, torch.float64)
    values = torch.randn(16, 3, dtype=torch.float64)
    seg = torch.repeat_interleave(torch.arange(4), counts)
    expected = torch.stack([values[seg == k].sum(0) for k in range(4)])
    torch.testing.assert_close(summing @ values, expected)
    assert (summing @ values)[2].abs().max() == 0  # the set with no hit
    generator, _ = _networks()
    z, seg, cond = _sets(counts.tolist(), 4, seed=3)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning about PyTorch's sparse support reaches the user
        fast = generator(z, seg, cond, summing_matrix(counts))
        torch.testing.assert_close(fast, generator(z, seg, cond), rtol=1e-5, atol=1e-6)


def test_set_products_multiply_each_row_by_its_sets_matrix() -> None:
    # sampling's attention scores: rows in any set order, a set with no row
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(7, 3, generator=generator)
    seg = torch.tensor([2, 0, 0, 3, 2, 2, 0])
    weights = torch.randn(4, 3, 5, generator=generator)
    expected = torch.stack([x[t] @ weights[seg[t]] for t in range(7)])
    torch.testing.assert_close(set_products(x, seg, weights), expected)
    torch.testing.assert_close(set_products(x.T.contiguous().T, seg, weights), expected)  # strided rows
    assert set_products(torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64), weights).shape == (0, 5)


def test_attention_is_a_softmax_over_each_sets_hits_and_the_null_hit() -> None:
    # the module folds the key and value biases into per-set terms; against the plain definition
    torch.manual_seed(4)
    attention = MeanFieldAttention(8, 2).double()
    with torch.no_grad():
        for p in attention.parameters():
            p.add_(torch.randn_like(p))  # biases and the null hit far from their initial zeros
    seg = torch.tensor([0, 0, 0, 2, 2])  # set 1 has no hit
    h, mf = torch.randn(5, 8, dtype=torch.float64), torch.randn(3, 8, dtype=torch.float64)
    q, k, v = attention.query(mf), attention.key(h), attention.value(h)
    expected = []
    for n in range(3):
        keys = torch.cat([attention.null_key.reshape(1, 8), k[seg == n]]).view(-1, 2, 4)
        values = torch.cat([attention.null_value.reshape(1, 8), v[seg == n]]).view(-1, 2, 4)
        weights = torch.softmax((keys * q[n].view(2, 4)).sum(-1) / 2.0, dim=0)  # (1 + hits, heads)
        expected.append((weights[..., None] * values).sum(0).flatten())
    with torch.no_grad():
        torch.testing.assert_close(attention(mf, h, seg), attention.out(torch.stack(expected)))


def test_the_critic_is_weight_normalised() -> None:
    _, critic = _networks()
    names = [name for name, _ in critic.named_parameters()]
    assert any(name.endswith("parametrizations.weight.original0") for name in names)
    assert not any(name.endswith(".weight") for name in names)


# ---- the generator's loss terms --------------------------------------------------------------------------
def test_sliced_wasserstein_ignores_the_order_of_hits_and_measures_a_shift(context: RunContext) -> None:
    real, _, _ = _sets([6, 3], 5, seed=4)
    directions = torch.eye(5)[[0, 3]]
    shuffled = real[torch.randperm(len(real), generator=torch.Generator().manual_seed(0))]
    assert sliced_wasserstein(real, shuffled, directions).item() < 1e-12
    shifted = real + torch.tensor([0.3, 0, 0, 0, 0])
    # projected on axis 0 every hit moved by 0.3, on axis 3 by nothing: mean of (0.09, 0)
    torch.testing.assert_close(sliced_wasserstein(real, shifted, directions), torch.tensor(0.045))
    # ln(E_tot / E_inc) of packed sets: a set of two hits of 1/4 each has ln(1/2)
    scaling = PointScaling.of(context)
    quarter = (math.log(0.25) - scaling.log_mid) / scaling.log_half
    hits = torch.zeros(3, 5)
    hits[:, 4] = quarter
    response = log_response(hits, torch.tensor([0, 0, 1]), torch.zeros(2, 1), scaling)
    torch.testing.assert_close(response, torch.tensor([math.log(0.5), math.log(0.25)]))


def test_sorted_rows_match_torch_sort_in_values_and_gradients() -> None:
    x = torch.randn(6, 300, generator=torch.Generator().manual_seed(2), requires_grad=True)
    weights = torch.linspace(-1, 2, 300)  # a loss that reads the order
    (sorted_rows(x) * weights).sum().backward()
    ours = x.grad.clone()
    x.grad = None
    (torch.sort(x, dim=1).values * weights).sum().backward()
    torch.testing.assert_close(ours, x.grad)
    torch.testing.assert_close(sorted_rows(x.detach()), torch.sort(x.detach(), dim=1).values)


def test_projection_directions_are_unit_vectors_after_the_axes_when_asked() -> None:
    plain = projection_directions(6, 5, False, torch.Generator().manual_seed(1), torch.device("cpu"))
    with_axes = projection_directions(6, 5, True, torch.Generator().manual_seed(1), torch.device("cpu"))
    assert plain.shape == (6, 5) and with_axes.shape == (11, 5)
    torch.testing.assert_close(plain.norm(dim=1), torch.ones(6))
    torch.testing.assert_close(with_axes[:5], torch.eye(5))
    torch.testing.assert_close(with_axes[5:], plain)  # the same random draws either way


def test_shower_summaries_are_per_shower_order_free_and_follow_depth_and_energy(context: RunContext) -> None:
    scaling = PointScaling.of(context)
    hits, seg, cond = _sets([6, 3, 4], 5, seed=8)
    hits[:, 4] = (torch.log(torch.rand(len(seg), generator=torch.Generator().manual_seed(3)) * 0.05)
                  - scaling.log_mid) / scaling.log_half  # hits of under 5 % of E_inc each: none capped at 1
    summaries = shower_summaries(hits, seg, cond, scaling)
    assert summaries.shape == (3, 7) and torch.isfinite(summaries).all()
    perm = torch.randperm(len(seg), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(shower_summaries(hits[perm], seg[perm], cond, scaling), summaries)
    deeper = hits.clone()
    deeper[seg == 1, 0] += 0.5  # shower 1 half a unit deeper: its mean depths move, nothing else does
    moved = shower_summaries(deeper, seg, cond, scaling) - summaries
    torch.testing.assert_close(moved[1, [1, 5]], torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(moved[[0, 2]], torch.zeros(2, 7))
    torch.testing.assert_close(moved[1, [0, 2, 3, 4, 6]], torch.zeros(5), atol=1e-5, rtol=0)
    # twice the energy in every hit of shower 0: ln(E_tot / E_inc) up by ln 2
    brighter = hits.clone()
    brighter[seg == 0, 4] += math.log(2.0) / scaling.log_half
    change = shower_summaries(brighter, seg, cond, scaling)[:, 0] - summaries[:, 0]
    torch.testing.assert_close(change, torch.tensor([math.log(2.0), 0.0, 0.0]), atol=1e-5, rtol=0)


def test_marginal_distance_is_zero_for_the_same_showers_and_grows_with_a_shift(context: RunContext) -> None:
    scaling = PointScaling.of(context)
    real, seg, cond = _sets([6, 3, 4], 5, seed=6)
    assert marginal_distance(real, seg, real, seg, cond, scaling, 32).item() == pytest.approx(0.0, abs=1e-7)
    shifted = real + torch.tensor([0.0, 0.0, 0.0, 0.7, 0.0])  # every hit 0.7 further out: 1 of 7 terms
    far = marginal_distance(real, seg, shifted, seg, cond, scaling, 32).item()
    assert far == pytest.approx(0.7 / 7, rel=1e-5)
    none = torch.zeros(0, 5), torch.zeros(0, dtype=torch.int64)
    empty = marginal_distance(real, seg, *none, cond, scaling, 32)
    assert empty.item() == math.inf  # a model that draws no hit is never the best


def test_mdma_validation_loss_repeats_for_a_batch_and_differs_between_batches(context: RunContext) -> None:
    from caloforge.families.mdma_gan.module import MdmaGanModule
    from caloforge.runconfig import RunConfig

    config = RunConfig(family="mdma-gan", model=MdmaGanConfig(net=TINY, count_bins=8, count_width=8))
    module = MdmaGanModule(config, context)
    batch = points_batch(toy_showers(16, seed=7), context)
    first, again, other = (module.validation_loss(batch, i) for i in (0, 0, 1))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert 0 < float(first) < math.inf


def test_without_the_adversarial_term_every_batch_updates_the_generator(context: RunContext) -> None:
    from caloforge.families.mdma_gan.module import MdmaGanModule
    from caloforge.runconfig import RunConfig

    def schedule(**model: float) -> list[bool]:
        config = RunConfig(family="mdma-gan", model=MdmaGanConfig(net=TINY, count_bins=8, count_width=8,
                                                                  critic_steps=2, **model))
        return [MdmaGanModule(config, context)._is_critic_step(step) for step in range(6)]

    assert schedule() == [True, True, False, True, True, False]
    assert schedule(adversarial_weight=0.0) == [False] * 6


@pytest.mark.parametrize(("feature_matching", "calls"), [(0.0, 0), (0.1, 2)])
def test_the_generator_loss_runs_the_critic_only_when_a_term_reads_it(context: RunContext,
                                                                     feature_matching: float,
                                                                     calls: int) -> None:
    from caloforge.families.mdma_gan.module import MdmaGanModule
    from caloforge.runconfig import RunConfig

    model = MdmaGanConfig(net=TINY, count_bins=8, count_width=8, adversarial_weight=0.0,
                          feature_matching=feature_matching, sliced_axes=True, shower_latent=2,
                          shower_sliced_weight=1.0)
    module = MdmaGanModule(RunConfig(family="mdma-gan", model=model), context)
    seen: list[int] = []
    module.critic.register_forward_hook(lambda *_: seen.append(1))
    hits, seg, cond, cond_n, _ = module._inputs(points_batch(toy_showers(8, seed=2), context))
    loss = module._generator_loss(hits, seg, cond, cond_n, torch.Generator().manual_seed(0))
    loss.backward()
    assert len(seen) == calls
    assert torch.isfinite(loss) and loss.item() > 0
    assert all(p.grad is not None for p in module.generator.parameters())


def test_an_update_with_a_non_finite_gradient_is_skipped(context: RunContext) -> None:
    from caloforge.families.mdma_gan.module import MdmaGanModule
    from caloforge.runconfig import RunConfig

    config = RunConfig(family="mdma-gan", model=MdmaGanConfig(net=TINY, count_bins=8, count_width=8))
    module = MdmaGanModule(config, context)
    module.manual_backward = lambda loss: loss.backward()  # type: ignore[method-assign]  # no Trainer here
    module.clip = lambda optimizer: None  # type: ignore[method-assign]
    module.log = lambda *args, **kwargs: None  # type: ignore[method-assign]
    optimizer = torch.optim.SGD(module.counts.parameters(), lr=0.1)
    before = [p.detach().clone() for p in module.counts.parameters()]
    cond = torch.zeros(4, context.spec.dim)
    module._update(optimizer, module.counts.loss(cond, torch.full((4,), 3.0)) * float("nan"))
    assert module.skipped_updates == 1
    assert all(torch.equal(p, q) for p, q in zip(module.counts.parameters(), before, strict=True))
    module._update(optimizer, module.counts.loss(cond, torch.full((4,), 3.0)))
    assert module.skipped_updates == 1
    assert not all(torch.equal(p, q) for p, q in zip(module.counts.parameters(), before, strict=True))


# ---- the hit count --------------------------------------------------------------------------------------
def test_hit_count_draw_is_reproducible_monotone_and_follows_the_model() -> None:
    torch.manual_seed(0)
    counts = HitCountModel(cond_dim=2, max_hits=99, bins=10, width=8)  # bins of 10 counts
    cond = torch.zeros(200, 2)
    u = torch.linspace(0, 0.999, 200)
    n = counts.draw(cond, u)
    torch.testing.assert_close(counts.draw(cond, u), n)
    assert (n[1:] >= n[:-1]).all() and n.min() >= 0 and n.max() <= 99 and n.eq(n.round()).all()
    with torch.no_grad():  # all mass on bin 3: every draw lands in [30, 40)
        counts.net[-1].weight.zero_()
        counts.net[-1].bias.copy_(torch.where(torch.arange(10) == 3, 50.0, -50.0))
    n = counts.draw(cond, u)
    assert n.min() == 30 and n.max() == 39
    # training lowers the NLL of observed counts
    counts = HitCountModel(cond_dim=2, max_hits=99, bins=10, width=8)
    observed, cond = torch.full((64,), 72.0), torch.randn(64, 2)
    optimizer = torch.optim.Adam(counts.parameters(), lr=0.05)
    before = counts.loss(cond, observed).item()
    for _ in range(20):
        optimizer.zero_grad()
        counts.loss(cond, observed).backward()
        optimizer.step()
    assert counts.loss(cond, observed).item() < 0.2 * before


# ---- the sampler ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("positions", "shower_latent", "spread"),
                         [("linear", 0, None), ("logit", 0, None), ("logit", 3, None), ("logit", 0, 2)])
def test_sampler_draws_showers_in_mev_and_exports_to_onnx(context: RunContext, tmp_path: Path,
                                                         positions: str, shower_latent: int,
                                                         spread: int | None) -> None:
    import onnx
    import onnxruntime as ort

    from caloforge.export.graphs import write_onnx

    config = MdmaGanConfig(net=TINY, count_bins=8, count_width=8, positions=positions,
                           shower_latent=shower_latent)
    torch.manual_seed(0)
    sampler = MdmaGanSampler(config, context, spread=spread).eval()
    shower_noise = [("shower_noise", (shower_latent,), "normal")] if shower_latent else []
    assert [(s.name, s.shape, s.distribution) for s in sampler.noise] == [
        ("count_u", (), "uniform"), ("hit_noise", (TOY_GEOMETRY.n_voxels, 1), "bits"), *shower_noise]
    g = torch.Generator().manual_seed(3)
    n = 3
    angles = (torch.zeros(n), torch.zeros(n))
    conditions = (torch.tensor([2e3, 1e4, 5e4]), *angles, torch.zeros(n, dtype=torch.int64))
    inputs = (*conditions, *(spec.draw(n, g) for spec in sampler.noise))
    with torch.no_grad():
        showers = sampler(*inputs)
    assert showers.shape == (n, TOY_GEOMETRY.n_voxels)
    assert (showers >= 0).all() and torch.isfinite(showers).all()
    assert (showers > 0).sum() >= 3  # parity on real numbers, not on zeros
    if shower_latent:  # the same hits' latents and counts, another shower latent: other showers
        with torch.no_grad():
            other = sampler(*inputs[:-1], torch.randn(n, shower_latent, generator=g))
        assert not torch.allclose(other, showers)
    names = ["energy", "theta", "phi", "detector", "count_u", "hit_noise", *(s[0] for s in shower_noise)]
    path = write_onnx(sampler, inputs, tmp_path / "m.onnx", names, ["showers"], True, {})
    # per-set and per-cell sums are whole-row ScatterND adds (mean_field.scatter_rows), which onnxruntime
    # runs 30x faster than the per-element ScatterElements that scatter_add exports to (spread's ranks are
    # put back in order by a plain ScatterElements, no sum)
    ops = [(node.op_type, [a.s for a in node.attribute if a.name == "reduction"])
           for node in onnx.load(str(path)).graph.node if node.op_type.startswith("Scatter")]
    assert ops and all(op in (("ScatterND", [b"add"]), ("ScatterElements", [])) for op in ops), ops
    assert ("ScatterElements", []) not in ops or spread, ops
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, n):
        wanted = {i.name for i in session.get_inputs()}  # conditions the spec does not use are pruned
        feed = {name: x[:batch].numpy() for name, x in zip(names, inputs, strict=True) if name in wanted}
        (out,) = session.run(None, feed)
        np.testing.assert_allclose(out, showers[:batch].numpy(), rtol=1e-4, atol=1e-4)


def test_hit_latents_are_independent_standard_normals_read_off_the_slots_bits() -> None:
    from scipy import stats

    assert [hit_noise_width(latent) for latent in (3, 4, 5, 8)] == [1, 1, 2, 2]  # four numbers a word
    bits = hit_noise_spec(1, 8).draw(100_000, torch.Generator().manual_seed(0))[:, 0]  # (n, 2)
    z = normal_from_bits(bits).double()
    assert z.shape == (100_000, 8) and torch.isfinite(z).all() and z.abs().max() < 4.2
    for k in range(8):
        assert stats.kstest(z[:, k].numpy(), "norm").pvalue > 1e-3
    correlation = torch.corrcoef(z.T) - torch.eye(8, dtype=z.dtype)
    assert correlation.abs().max() < 0.015
    assert (z[:, :4] ** 2).sum(1).mean().item() == pytest.approx(4.0, rel=0.02)  # chi-square, 4 dof


def _plain_and_with(context: RunContext, n: int, **option: Any) -> tuple[MdmaGanSampler, MdmaGanSampler,
                                                                        tuple[Tensor, ...], list[Tensor]]:
    """Two samplers with the same weights, the second with a sampling ``option``; n showers' conditions
    (20 GeV) and noise."""
    config = MdmaGanConfig(net=TINY, count_bins=8, count_width=8, positions="logit")
    torch.manual_seed(0)
    plain = MdmaGanSampler(config, context).eval()
    other = MdmaGanSampler(config, context, **option).eval()
    other.load_state_dict(plain.state_dict())
    assert (plain.options, other.options) == ({}, option)
    g = torch.Generator().manual_seed(5)
    conditions = (torch.full((n,), 2e4), torch.zeros(n), torch.zeros(n), torch.zeros(n, dtype=torch.int64))
    return plain, other, conditions, [spec.draw(n, g) for spec in plain.noise]


def test_count_scale_draws_more_hits_of_the_same_showers_and_keeps_their_energy(context: RunContext) -> None:
    plain, scaled, conditions, noise = _plain_and_with(context, 400, count_scale=2.0)
    with torch.no_grad():
        cond = plain.encoder(*conditions)
        _, seg, counts = generate_hits(scaled.generator, scaled.counts, cond, *noise, None, 2.0)
        made = made_count(counts, 2.0, scaled.max_hits)
        assert torch.equal(torch.bincount(seg, minlength=len(counts)), made.long())
        assert torch.equal(made, torch.clamp(2 * counts, max=scaled.max_hits))
        for sampler in (plain, scaled):
            sampler.lower_threshold(1e-9)  # every hit's cell comes out
        a, b = plain(*conditions, *noise), scaled(*conditions, *noise)
    assert (b > 0).sum() > (a > 0).sum()  # more hits light more cells ...
    ratio = b.sum(1).mean() / a.sum(1).mean()
    assert abs(ratio - 1) < 0.15, ratio  # ... each with its share of the drawn count's energy


def _spread(cells: list[tuple[int, int]], places: list[float], rounds: int = 1) -> list[tuple[int, int]]:
    """spread_collisions on one shower of one layer with 4 alpha bins x 2 rings: hits given as (alpha bin,
    ring) and their places in their alpha bins -> their (alpha bin, ring) after."""
    alpha = torch.tensor([float(a) for a, _ in cells])
    index = torch.tensor([a * 2 + r for a, r in cells])
    t = len(cells)
    flat = spread_collisions(index, torch.zeros(t, dtype=torch.int64), 8, alpha, torch.tensor(places),
                             torch.full((t,), 4.0), torch.full((t,), 2), torch.zeros(8), rounds)
    return [(int(i) // 2, int(i) % 2) for i in flat]


def test_spread_moves_hits_that_share_a_cell_to_free_alpha_neighbours() -> None:
    # the first hit of a cell stays; the next moves to the alpha neighbour on its side of its bin, wrapping
    assert _spread([(0, 0), (0, 0), (2, 1), (2, 1), (3, 0)], [0.3, 0.7, 0.5, 0.2, 0.5]) == [
        (0, 0), (1, 0), (2, 1), (1, 1), (3, 0)]
    assert _spread([(0, 1), (0, 1)], [0.5, 0.1]) == [(0, 1), (3, 1)]  # -1 wraps to the last bin
    # a third hit tries the other side; a hit whose neighbour is taken stays ...
    assert _spread([(1, 0), (1, 0), (1, 0), (2, 0)], [0.5, 0.9, 0.9, 0.5]) == [(1, 0), (1, 0), (0, 0), (2, 0)]
    # ... until a later round tries its other side
    assert _spread([(1, 0), (1, 0), (2, 0)], [0.5, 0.9, 0.5], rounds=2) == [(1, 0), (0, 0), (2, 0)]
    # hits of different showers never collide
    flat = spread_collisions(torch.tensor([3, 3]), torch.tensor([0, 1]), 8, torch.tensor([1.0, 1.0]),
                             torch.tensor([0.9, 0.9]), torch.full((2,), 4.0), torch.full((2,), 2),
                             torch.zeros(16), 1)
    assert flat.tolist() == [3, 11]


def test_spread_lights_more_cells_with_the_same_energy(context: RunContext) -> None:
    plain, spread, conditions, noise = _plain_and_with(context, 50, spread=3)
    with torch.no_grad():
        for sampler in (plain, spread):
            sampler.lower_threshold(1e-9)  # every hit's cell comes out
        a, b = plain(*conditions, *noise), spread(*conditions, *noise)
    assert (b > 0).sum() > (a > 0).sum()
    torch.testing.assert_close(b.sum(1), a.sum(1))
    # per layer and ring too: hits move in alpha only
    layer, _, ring = TOY_GEOMETRY.voxel_indices
    key = torch.as_tensor(layer * 100 + ring)
    for shower in range(3):
        for k in key.unique():
            torch.testing.assert_close(b[shower, key == k].sum(), a[shower, key == k].sum())


def test_sampling_options_and_the_lower_threshold_are_checked(context: RunContext) -> None:
    config = MdmaGanConfig(net=TINY, count_bins=8, count_width=8)
    with pytest.raises(InputError, match=r"count_scale.*is 0\.5.*a number in \[1, 4\]"):
        MdmaGanSampler(config, context, count_scale=0.5)
    for rounds in (-1, 1.5, 9):
        with pytest.raises(InputError, match=r"spread.*a whole number of rounds in \[0, 8\]"):
            MdmaGanSampler(config, context, spread=rounds)  # type: ignore[arg-type]
    sampler = MdmaGanSampler(config, context)
    with pytest.raises(InputError, match=r"threshold.*is 1000\.0 MeV.*readout threshold"):
        sampler.lower_threshold(1e3)


# ---- training ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("critic_steps", [1, 2])
def test_critic_and_generator_updates_alternate_by_batch(tmp_path: Path, critic_steps: int) -> None:
    # Lightning's global_step advances by two a batch here (the GAN's update and the hit-count model's):
    # an alternation read from it once gave critic_steps 1 no generator update at all
    from caloforge.families.mdma_gan import FAMILY
    from caloforge.runconfig import run_config_from_dict
    from caloforge.training import train

    batches = 2 * (critic_steps + 1)
    config = run_config_from_dict({
        "family": "mdma-gan", "model": {**FAMILY.tiny, "critic_steps": critic_steps},
        "optim": {"warmup_steps": 1},
        "train": {"batch_size": 16, "max_steps": 2 * batches, "checkpoint_every": 100, "log_every": 1},
    })
    run = tmp_path / "run"
    train(toy_showers(64), run, config, progress=False)
    lines = (run / "logs" / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")

    def updates(column: str) -> int:  # a row repeats the last value of a metric not logged at its step
        index = header.index(column)
        return len({row.split(",")[index] for row in lines[1:]} - {""})

    assert len(lines) - 1 == batches
    assert updates("train/wasserstein") == 2 * critic_steps  # critic updates
    assert updates("train/sliced_wasserstein") == 2  # generator updates
