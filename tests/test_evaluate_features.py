"""High-level features against hand-worked numbers and a per-layer loop written independently."""

from __future__ import annotations

import math

import numpy as np
import pytest

from caloforge.data import ShowerSet
from caloforge.evaluate.features import FeatureAccumulator, compute_features, high_level_vector
from caloforge.evaluate.histograms import histogram_specs, rebin_voxel_counts, separation_powers
from caloforge.geometry import CylindricalGeometry, get_geometry

# 3 layers x 4 alpha x 2 radial bins of 10 mm: alpha centres -3pi/4, -pi/4, pi/4, 3pi/4.
TINY = CylindricalGeometry.regular("tiny", 3, 4, (0.0, 10.0, 20.0), 5.0, "SiW")


def _random_set(n: int, seed: int, geometry: CylindricalGeometry = TINY) -> ShowerSet:
    rng = np.random.default_rng(seed)
    showers = rng.exponential(1.0, (n, geometry.n_voxels)) * (rng.random((n, geometry.n_voxels)) < 0.6)
    return ShowerSet(showers.astype(np.float32), geometry, energy=rng.uniform(10.0, 20.0, n))


def test_two_voxel_shower_by_hand() -> None:
    showers = np.zeros((1, TINY.n_voxels), dtype=np.float32)
    # layer 1: 3 MeV at (alpha bin 0, r bin 1) and 1 MeV at (alpha bin 3, r bin 0)
    showers[0, TINY.flat_index(1, 0, 1)] = 3.0
    showers[0, TINY.flat_index(1, 3, 0)] = 1.0
    f = compute_features(ShowerSet(showers, TINY, energy=np.array([8.0])), threshold_mev=0.0)
    c = math.sqrt(0.5)
    x = np.array([15 * -c, 5 * -c])  # r cos(alpha) of the two voxels
    y = np.array([15 * -c, 5 * c])
    w = np.array([3.0, 1.0]) / 4.0
    assert f.e_total[0] == pytest.approx(4.0)
    assert f.e_layer[0].tolist() == pytest.approx([0.0, 4.0, 0.0])
    assert f.centre_x[0, 1] == pytest.approx(w @ x)
    assert f.centre_y[0, 1] == pytest.approx(w @ y)
    assert f.width_x[0, 1] == pytest.approx(math.sqrt(w @ (x - w @ x) ** 2))
    assert f.centre_r[0, 1] == pytest.approx(0.75 * 15 + 0.25 * 5)
    assert f.width_r[0, 1] == pytest.approx(math.sqrt(0.75 * 0.25) * 10)
    assert f.sparsity[0].tolist() == pytest.approx([1.0, 6 / 8, 1.0])
    # empty layers: centre and width 0 (official 1e-16 convention)
    assert f.centre_x[0, 0] == 0.0 and f.width_r[0, 2] == 0.0
    assert f.e_radial[0].tolist() == pytest.approx([1.0, 3.0])
    assert f.n_zero_voxels == TINY.n_voxels - 2


def test_matches_independent_per_layer_loop_and_chunking() -> None:
    data = _random_set(50, seed=1)
    threshold = 0.3
    chunked = FeatureAccumulator(TINY, threshold)
    for start in range(0, 50, 7):
        chunked.update(data[start:start + 7])
    f = chunked.finish()
    whole = compute_features(data, threshold_mev=threshold)
    # float32 sums: a width that is 0 in one batching can be ~1e-7 mm in another (sqrt of a rounding residue)
    np.testing.assert_allclose(f.width_y, whole.width_y, atol=1e-5)
    showers = np.where(data.showers < threshold, 0.0, data.showers.astype(np.float64))
    centres = TINY.voxel_centres
    for layer in range(3):
        cut = slice(int(TINY.layer_offsets[layer]), int(TINY.layer_offsets[layer + 1]))
        e = showers[:, cut]
        s = e.sum(1)
        for name, coord in (("x", centres["x"][cut]), ("y", centres["y"][cut]), ("r", centres["r"][cut])):
            mean = (e * coord).sum(1) / s
            std = np.sqrt((e * (coord - mean[:, None]) ** 2).sum(1) / s)
            np.testing.assert_allclose(getattr(f, f"centre_{name}")[:, layer], mean, atol=1e-9)
            np.testing.assert_allclose(getattr(f, f"width_{name}")[:, layer], std, atol=1e-6)
        np.testing.assert_allclose(f.sparsity[:, layer], (e == 0).mean(1))
    np.testing.assert_allclose(f.shower_sum, showers.sum(0))
    assert f.voxel_counts.sum() == int((showers > 0).sum())
    assert f.max_voxel == pytest.approx(showers.max())
    assert high_level_vector(f).shape == (50, 2 + 8 * 3)


def test_voxel_rebinning_matches_numpy_histogram() -> None:
    data = _random_set(200, seed=2)
    f = compute_features(data, threshold_mev=0.05)
    edges = np.logspace(np.log10(0.05), np.log10(f.max_voxel), 50)
    values = data.showers[data.showers >= 0.05]
    exact, _ = np.histogram(values, bins=edges)
    approx = rebin_voxel_counts(f, edges)
    assert approx.sum() == exact.sum()
    # Only voxels within one fine bin (0.001 in log10 E) of an edge can land in the neighbouring bin, so
    # the cumulative counts differ at each edge by at most the number of voxels that close to it.
    distance = np.abs(np.log10(values)[:, None] - np.log10(edges[1:-1])[None, :])
    near_edge = (distance < 1e-3).sum(0)
    assert np.all(np.abs(np.cumsum(approx - exact)[:-1]) <= near_edge)
    assert near_edge.sum() < 0.05 * len(values)


def test_official_binning_for_dataset_2_and_identical_samples_have_zero_separation() -> None:
    geometry = get_geometry("calochallenge-2")
    data = _random_set(20, seed=3, geometry=geometry)
    f = compute_features(data)
    specs = {s.name: s for s in histogram_specs(f)}
    centre = specs["centre_x_0"].edges
    assert (centre[0], centre[-1], len(centre)) == (pytest.approx(-30), pytest.approx(30), 101)
    assert specs["centre_r_4"].edges[-1] == pytest.approx(42)
    assert specs["width_r_4"].edges[-1] == pytest.approx(20)
    assert len(specs["e_layer_7"].edges) == 40 and len(specs["voxel_energy"].edges) == 50
    # the top edge is the reference's maximum itself, so every value above threshold is counted
    assert specs["e_layer_7"].edges[-1] == f.e_layer[:, 7].max()
    counts, _ = np.histogram(f.e_layer[:, 7], specs["e_layer_7"].edges)
    assert counts.sum() == int((f.e_layer[:, 7] >= f.threshold_mev).sum())
    powers = separation_powers(f, f)
    assert len(powers) == 1 + 8 * 45 + 1
    assert max(powers.values()) == pytest.approx(0.0, abs=1e-12)
    # random "showers" have E_tot / E_inc ~ 260, outside the official [0.5, 1.5]: the same relative range
    # around the median is used, so the histogram is not empty
    etot = specs["etot_einc"].edges
    median = np.median(f.e_total / f.energy)
    assert (etot[0], etot[-1]) == (pytest.approx(0.5 * median), pytest.approx(1.5 * median))


def test_layers_without_voxels_give_finite_features_and_are_left_out_of_the_vector() -> None:
    # CaloChallenge dataset-1 photons: 24 layer slots, 5 with voxels (0, 1, 2, 3, 12).
    photons = get_geometry("calochallenge-1-photons")
    f = compute_features(_random_set(20, 3, photons), threshold_mev=0.0)
    assert np.isfinite(f.sparsity).all() and (f.sparsity[:, 4] == 0.0).all()  # layer 4 has no voxels
    vector = high_level_vector(f)
    assert vector.shape == (20, 2 + 8 * 5) and np.isfinite(vector).all()
    assert high_level_vector(compute_features(_random_set(5, 1))).shape == (5, 2 + 8 * TINY.n_layers)
