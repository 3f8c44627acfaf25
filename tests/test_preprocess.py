"""Preprocessing: exact round trip, zeros back as zeros, the documented formula, serialisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from caloforge.data import ShowerSet
from caloforge.errors import InputError
from caloforge.geometry import CylindricalGeometry
from caloforge.preprocess import (
    EnergyRatio,
    LayerEnergies,
    PreprocessConfig,
    ShowerPreprocessor,
    fit_energy_ratio,
    layer_matrix,
)

GEOMETRY = CylindricalGeometry.regular("toy", 3, 4, (0.0, 1.0, 2.0), 3.4, "SiW")


def toy_showers(n: int = 200, seed: int = 0) -> ShowerSet:
    rng = np.random.default_rng(seed)
    energy = np.exp(rng.uniform(math.log(1e3), math.log(1e6), n))
    showers = rng.gamma(0.7, 1.0, (n, GEOMETRY.n_voxels)) * energy[:, None] / 50
    showers[rng.random(showers.shape) < 0.4] = 0.0  # 40 % empty cells
    showers[(showers > 0) & (showers < 0.02)] = 0.02  # a readout threshold of 20 keV
    return ShowerSet(showers.astype(np.float32), GEOMETRY, energy)


@pytest.mark.parametrize("standardize", ["voxel", "global"])
def test_round_trip_is_exact_and_zeros_stay_zero(standardize: str) -> None:
    showers = toy_showers()
    pre = ShowerPreprocessor.fit(showers, PreprocessConfig(standardize=standardize))
    z = pre.transform(showers)
    back = pre.inverse(z, showers.energy)
    zero = showers.showers == 0
    assert np.array_equal(back == 0, zero)
    np.testing.assert_allclose(back[~zero], showers.showers[~zero], rtol=2e-5)


def test_defaults_follow_the_documented_formula() -> None:
    showers = toy_showers()
    pre = ShowerPreprocessor.fit(showers)
    # smallest nonzero deposit 0.02 MeV: threshold just below it, eps half of it
    assert pre.threshold_mev == pytest.approx(0.02 * 0.999)
    assert pre.eps_mev == pytest.approx(0.01)
    u = np.log((showers.showers.astype(np.float64) + pre.eps_mev) / showers.energy[:, None])
    np.testing.assert_allclose(pre.mean, u.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(pre.std, u.std(axis=0), rtol=1e-6)
    z = pre.transform(showers)
    np.testing.assert_allclose(z, (u - u.mean(axis=0)) / u.std(axis=0), rtol=1e-4, atol=1e-4)
    # standardised: each voxel has mean 0 and std 1 over the training set
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(z.std(axis=0), 1.0, atol=1e-4)


def test_inverse_cuts_below_threshold_and_clamps_overflow() -> None:
    showers = toy_showers()
    pre = ShowerPreprocessor.fit(showers, PreprocessConfig(standardize="global"))
    energy = np.array([1000.0, 1000.0, 1000.0], dtype=np.float32)
    # exactly ln((E + eps) / E_inc) for E = 0.015 (below the 0.01998 cut) and E = 5 (above)
    u = np.log((np.array([0.015, 5.0, 0.0]) + pre.eps_mev) / 1000.0)
    z = ((u - pre.mean[0]) / pre.std[0])[None, :].repeat(3, axis=0)
    z[2, 2] = 1e6  # absurd model output: must stay finite
    back = pre.inverse(z, energy)
    assert back[0, 0] == 0.0
    assert back[0, 1] == pytest.approx(5.0, rel=1e-4)
    assert np.isfinite(back).all()
    assert back[2, 2] <= 1000.0 * math.exp(pre.log_max) + 1e-3


def test_serialisation_round_trip_and_torch_module_agree() -> None:
    showers = toy_showers()
    pre = ShowerPreprocessor.fit(showers)
    again = ShowerPreprocessor.from_dict(pre.to_dict())
    np.testing.assert_array_equal(again.transform(showers), pre.transform(showers))
    module = pre.module()
    z = module(torch.from_numpy(showers.showers), torch.from_numpy(showers.energy).float())
    np.testing.assert_allclose(z.numpy(), pre.transform(showers))


def test_all_zero_showers_are_refused() -> None:
    empty = ShowerSet(np.zeros((4, GEOMETRY.n_voxels), np.float32), GEOMETRY, np.full(4, 1e3))
    with pytest.raises(InputError, match="all zero"):
        ShowerPreprocessor.fit(empty)


def test_energy_ratio_model_reproduces_the_conditional_distribution() -> None:
    rng = np.random.default_rng(1)
    energy = np.exp(rng.uniform(math.log(1e3), math.log(1e6), 20_000))
    # r = E_tot / E_inc: mean rising with ln E, width falling with it (worked-out truth below)
    mean = 0.02 + 0.001 * np.log(energy / 1e3)
    width = 0.002 / np.sqrt(np.log(energy))
    ratio = mean + width * rng.standard_normal(energy.size)
    table, lo, hi = fit_energy_ratio(ratio, energy, n_bins=24, n_quantiles=129)
    assert table.shape == (24, 129) and lo == pytest.approx(np.log(energy).min())
    model = EnergyRatio(torch.from_numpy(table), lo, hi, threshold_mev=0.01)
    gen = torch.Generator().manual_seed(0)
    for e in (2e3, 3e4, 5e5):
        r = model(torch.full((20_000,), e), torch.rand(20_000, generator=gen)).numpy()
        assert r.mean() == pytest.approx(0.02 + 0.001 * math.log(e / 1e3), rel=0.01)
        assert r.std() == pytest.approx(0.002 / math.sqrt(math.log(e)), rel=0.1)
    # u = 0.5 is the median of the bin; the extremes stay inside the data
    r = model(torch.tensor([3e4, 3e4]), torch.tensor([0.0, 1.0])).numpy()
    assert ratio.min() <= r[0] < r[1] <= ratio.max()


def test_energy_ratio_rescale_sets_the_total_and_is_saved() -> None:
    showers = toy_showers()
    pre = ShowerPreprocessor.fit(showers, PreprocessConfig(energy_ratio=True, ratio_bins=4))
    model = pre.energy_ratio()
    assert model is not None and model.table.shape[0] == 1  # 200 showers: one bin of >= 200
    x = torch.from_numpy(showers.showers)
    energy = torch.from_numpy(showers.energy).float()
    u = torch.rand(len(showers), generator=torch.Generator().manual_seed(2))
    scaled = model.rescale(x, energy, u)
    target = model(energy, u) * energy
    kept = (scaled > 0).sum() / (x > 0).sum()
    assert kept > 0.95  # only cells pushed below the threshold vanish
    np.testing.assert_allclose(scaled.sum(dim=1).numpy(), target.numpy(), rtol=1e-5)
    assert float(scaled[scaled > 0].min()) >= model.threshold_mev
    again = ShowerPreprocessor.from_dict(pre.to_dict())
    assert again.energy_ratio() is not None
    torch.testing.assert_close(again.energy_ratio()(energy, u), model(energy, u))
    assert ShowerPreprocessor.fit(showers).energy_ratio() is None  # off by default


def irregular_geometry() -> CylindricalGeometry:
    from caloforge.geometry import LayerBinning

    layers = (LayerBinning((0.0, 5.0), 1), LayerBinning((0.0, 1.0, 2.0), 4), LayerBinning((0.0, 3.0), 2))
    return CylindricalGeometry("uneven", layers, (3.4, 3.4, 3.4), "SiW")


def test_layer_matrix_follows_the_layer_offsets() -> None:
    geometry = irregular_geometry()  # 1, 8 and 2 voxels per layer
    matrix = layer_matrix(geometry)
    assert matrix.shape == (11, 3)
    np.testing.assert_array_equal(matrix.sum(axis=0), [1, 8, 2])
    np.testing.assert_array_equal(matrix.argmax(axis=1), [0] + [1] * 8 + [2] * 2)


def test_layer_vector_round_trip_gives_ratio_and_fractions() -> None:
    showers = toy_showers()
    showers.showers[:5, 8:16] = 0.0  # layer 1 empty in five showers
    pre = ShowerPreprocessor.fit(showers, PreprocessConfig(layer_energies=True))
    stage = pre.layer_energies(GEOMETRY)
    assert stage is not None and stage.dim == 1 + GEOMETRY.n_layers
    z = torch.from_numpy(pre.layer_targets(showers))
    assert z.shape == (len(showers), 4)
    np.testing.assert_allclose(z.mean(dim=0).numpy(), 0.0, atol=1e-4)  # standardised
    ratio, fraction = stage.inverse(z)
    layers = showers.showers.reshape(len(showers), 3, 8).sum(axis=2).astype(np.float64)
    total = layers.sum(axis=1)
    np.testing.assert_allclose(ratio.numpy(), total / showers.energy, rtol=1e-4)
    np.testing.assert_allclose(fraction.numpy(), layers / total[:, None], rtol=1e-3, atol=1e-7)
    assert (fraction[:5, 1] == 0).all()  # an empty layer comes back empty
    again = ShowerPreprocessor.from_dict(pre.to_dict()).layer_energies(GEOMETRY)
    assert again is not None
    torch.testing.assert_close(again.inverse(z)[1], fraction)
    assert ShowerPreprocessor.fit(showers).layer_energies(GEOMETRY) is None  # off by default


def test_offsets_are_the_configured_fractions_of_the_smallest_deposit_and_layer() -> None:
    showers = toy_showers()
    showers.showers[:5, 8:16] = 0.0  # layer 1 empty in five showers, so its training span reaches delta
    layers = showers.showers.reshape(len(showers), 3, 8).sum(axis=2).astype(np.float64)
    fractions = layers / layers.sum(axis=1, keepdims=True)
    smallest = fractions[fractions > 0].min()
    config = PreprocessConfig(layer_energies=True, eps_fraction=0.25, layer_delta_fraction=0.1)
    pre = ShowerPreprocessor.fit(showers, config)
    assert pre.eps_mev == pytest.approx(0.25 * 0.02)
    assert pre.layer_delta == pytest.approx(0.1 * smallest)
    stage = pre.layer_energies(GEOMETRY)
    assert stage is not None and stage.threshold == pytest.approx(0.999 * smallest)
    # the smallest layer fraction survives the round trip; one just below the threshold reads empty
    z = stage(torch.from_numpy(showers.showers), torch.from_numpy(showers.energy).float())
    back = stage.inverse(z)[1].numpy()
    assert back[fractions == smallest] == pytest.approx(smallest, rel=1e-3)
    y = torch.log(torch.tensor([[0.99 * smallest + pre.layer_delta]]))
    z_low = z[:1].clone()
    z_low[0, 2] = ((y - stage.mean[2]) / stage.std[2])[0, 0]
    assert stage.inverse(z_low)[1][0, 1] == 0
    # a preprocessor saved before the fraction was configurable: delta was half the smallest fraction
    old = pre.to_dict()
    del old["config"]["layer_delta_fraction"]
    legacy = ShowerPreprocessor.from_dict(old).layer_energies(GEOMETRY)
    assert legacy is not None and legacy.threshold == pytest.approx(1.998 * pre.layer_delta)


@pytest.mark.parametrize("key", ["eps_fraction", "layer_delta_fraction"])
@pytest.mark.parametrize("value", [0.0, 1.0, -0.1])
def test_offset_fractions_outside_zero_one_are_refused(key: str, value: float) -> None:
    with pytest.raises(InputError, match=f"preprocess.{key}"):
        PreprocessConfig(**{key: value})  # type: ignore[arg-type]


def test_layer_draws_outside_the_training_range_are_clamped_to_it() -> None:
    showers = toy_showers()
    pre = ShowerPreprocessor.fit(showers, PreprocessConfig(layer_energies=True))
    stage = pre.layer_energies(GEOMETRY)
    assert stage is not None and pre.layer_span is not None
    z = torch.from_numpy(pre.layer_targets(showers))
    layers = showers.showers.reshape(len(showers), 3, 8).sum(axis=2).astype(np.float64)
    largest = (layers / layers.sum(axis=1, keepdims=True)).max(axis=0)  # per layer, in training
    wild = z.clone()
    wild[:, 2] += 20.0  # far above anything seen in layer 1
    ratio, fraction = stage.inverse(wild)
    np.testing.assert_allclose(fraction[:, 1].numpy(), largest[1], rtol=1e-4)
    np.testing.assert_allclose(ratio.numpy(), stage.inverse(z)[0].numpy())  # other components untouched
    smallest = (layers / layers.sum(axis=1, keepdims=True)).min(axis=0)
    np.testing.assert_allclose(stage.inverse(z - 20.0)[1].numpy(), np.broadcast_to(smallest, (len(z), 3)),
                               rtol=1e-3, atol=1e-7)  # and from below
    restored = ShowerPreprocessor.from_dict(pre.to_dict())
    np.testing.assert_array_equal(restored.layer_span, pre.layer_span)


def _stage_and_draw(n: int) -> tuple[ShowerSet, LayerEnergies, torch.Tensor, torch.Tensor]:
    """n toy showers, their fitted layer stage, energies (N,) and a draw: the layer vectors of other
    showers of the set (rolled by 7)."""
    showers = toy_showers(n)
    pre = ShowerPreprocessor.fit(showers, PreprocessConfig(layer_energies=True))
    stage = pre.layer_energies(GEOMETRY)
    assert stage is not None
    energy = torch.from_numpy(showers.energy).float()
    return showers, stage, energy, torch.from_numpy(pre.layer_targets(showers)).roll(7, dims=0)


def test_layer_rescale_puts_the_drawn_energy_in_each_layer() -> None:
    showers, stage, energy, target = _stage_and_draw(50)
    x = torch.from_numpy(showers.showers)
    x[0, 8:16] = 0.0  # shower 0 has no cells in layer 1: its share goes to the others
    scaled = stage.rescale(x, energy, target).numpy()
    ratio, fraction = (t.numpy() for t in stage.inverse(target))
    layers = scaled.reshape(50, 3, 8).sum(axis=2)
    drawn = fraction * ratio[:, None] * showers.energy[:, None]  # (N, L) MeV
    np.testing.assert_allclose(layers[1:], drawn[1:], rtol=1e-4)
    np.testing.assert_allclose(layers[0].sum(), ratio[0] * showers.energy[0], rtol=1e-4)
    assert layers[0, 1] == 0
    assert float(scaled[scaled > 0].min()) >= stage.threshold_mev


def test_rescale_with_scores_lights_the_closest_cell_of_each_layer_the_draw_needs() -> None:
    showers, stage, energy, target = _stage_and_draw(50)
    x = torch.from_numpy(showers.showers)
    x[0, 8:16] = 0.0  # shower 0 left layer 1 empty, which the draw gives energy
    x[1, 16:24] = 0.0  # so did shower 1 with layer 2
    scores = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    scaled = stage.rescale(x, energy, target, scores).numpy()
    lit = (x.numpy() == 0) & (scaled > 0)
    assert np.count_nonzero(lit) == 2  # only the empty layers gain a cell
    assert lit[0, 8 + int(scores[0, 8:16].argmax())]  # the cell with the highest score
    assert lit[1, 16 + int(scores[1, 16:24].argmax())]
    ratio, fraction = (t.numpy() for t in stage.inverse(target))
    layers = scaled.reshape(50, 3, 8).sum(axis=2)
    drawn = fraction * ratio[:, None] * showers.energy[:, None]
    np.testing.assert_allclose(layers, drawn, rtol=1e-4)  # every layer holds its draw, shower 0's too
    assert fraction[0, 1] > 0 and fraction[1, 2] > 0


def test_rescale_with_scores_leaves_a_layer_the_draw_leaves_empty() -> None:
    showers = toy_showers(20)
    pre = ShowerPreprocessor.fit(showers, PreprocessConfig(layer_energies=True))
    stage = pre.layer_energies(GEOMETRY)
    assert stage is not None
    x = torch.from_numpy(showers.showers)
    x[:, 8:16] = 0.0
    y = torch.from_numpy(pre.layer_targets(showers))
    stage.span[0, 2] = math.log(stage.delta)  # as if training had seen layer 1 empty ...
    y[:, 2] = (math.log(stage.delta) - stage.mean[2]) / stage.std[2]  # ... and the draw says empty
    assert (stage.inverse(y)[1][:, 1] == 0).all()
    energy = torch.from_numpy(showers.energy).float()
    assert torch.equal(stage.rescale(x, energy, y, torch.randn(x.shape)), stage.rescale(x, energy, y))
