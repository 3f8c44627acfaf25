"""Separation power, Frechet and kernel distances against closed forms and brute-force sums."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.linalg import sqrtm

from caloforge.evaluate.metrics import (
    frechet_distance,
    frechet_physics_distance,
    gaussian_frechet_distance,
    histogram_separation,
    kernel_physics_distance,
    mmd_polynomial_unbiased,
    separation_power,
)


def test_separation_power_of_hand_made_histograms() -> None:
    # normalised: (1/4, 3/4, 0) vs (1/2, 1/4, 1/4); 1/2 [ (1/4)^2/(3/4) + (1/2)^2/1 + (1/4)^2/(1/4) ] = 7/24
    assert separation_power([1, 3, 0], [2, 1, 1]) == pytest.approx(7 / 24)
    assert separation_power([5, 0], [0, 2]) == pytest.approx(1.0)
    assert separation_power([2, 4, 6], [1, 2, 3]) == pytest.approx(0.0)
    assert math.isnan(separation_power([0, 0], [1, 2]))
    # samples: the value 9 lies outside the bins and is ignored, as with the official plt.hist
    value = histogram_separation([0.5, 1.5, 1.5, 1.5, 9.0], [0.5, 0.5, 1.5, 2.5], [0, 1, 2, 3])
    assert value == pytest.approx(7 / 24)


def test_gaussian_frechet_distance_closed_form_and_sqrtm() -> None:
    # diagonal covariances: Tr(S1 + S2 - 2 sqrt(S1 S2)) = (1 + 4 + 2.25 + 1) - 2 (1.5 + 2) = 1.25;
    # |dmu|^2 = 1 + 0.25 = 1.25
    value = gaussian_frechet_distance([0, 0], np.diag([1.0, 4.0]), [1, 0.5], np.diag([2.25, 1.0]))
    assert value == pytest.approx(2.5)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = a @ a.T + np.eye(5), b @ b.T + np.eye(5)
    expected = np.trace(s1 + s2 - 2 * sqrtm(s1 @ s2).real)
    assert gaussian_frechet_distance(np.zeros(5), s1, np.zeros(5), s2) == pytest.approx(expected, rel=1e-8)


def test_fpd_identical_samples_zero_and_shifted_gaussians_closed_form() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40_000, 2)) * [1.0, 2.0]
    x2 = rng.normal(size=(40_000, 2)) * [1.0, 2.0]
    y = rng.normal(size=(40_000, 2)) * [1.5, 1.0] + [1.0, 0.5]
    kwargs = {"seed": 3, "min_samples": 2_000, "max_samples": 20_000, "num_batches": 5, "normalise": False}
    value, error = frechet_physics_distance(x, x, **kwargs)
    assert value == pytest.approx(0.0, abs=2e-3)
    value, error = frechet_physics_distance(x, x2, **kwargs)
    assert value == pytest.approx(0.0, abs=5e-3)
    value, error = frechet_physics_distance(x, y, **kwargs)
    assert value == pytest.approx(2.5, abs=0.06)  # closed form above; sampling error of 40k showers
    assert frechet_distance(x, y) == pytest.approx(2.5, abs=0.06)
    assert error >= 0


def test_mmd_matches_brute_force_and_linear_kernel_expectation() -> None:
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(30, 3)), rng.normal(size=(20, 3)) + 0.3
    for degree in (1, 3, 4):
        kxx = (x @ x.T / 3 + 1) ** degree
        kyy = (y @ y.T / 3 + 1) ** degree
        kxy = (x @ y.T / 3 + 1) ** degree
        brute = ((kxx.sum() - np.trace(kxx)) / (30 * 29) + (kyy.sum() - np.trace(kyy)) / (20 * 19)
                 - 2 * kxy.mean())
        assert mmd_polynomial_unbiased(x, y, degree, block=7) == pytest.approx(brute, rel=1e-10)
    # degree 1: E[MMD^2] = |mu_x - mu_y|^2 / d exactly (unbiased estimator)
    x, y = rng.normal(size=(4000, 2)), rng.normal(size=(4000, 2)) + np.array([0.6, 0.0])
    assert mmd_polynomial_unbiased(x, y, degree=1) == pytest.approx(0.36 / 2, abs=0.02)


def test_kpd_identical_distributions_consistent_with_zero() -> None:
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(5000, 4)), rng.normal(size=(5000, 4))
    value, error = kernel_physics_distance(x, y, seed=0, num_batches=5, batch_size=1000)
    assert abs(value) < 3 * error + 1e-4
    shifted, _ = kernel_physics_distance(x, y + 0.5, seed=0, num_batches=5, batch_size=1000)
    assert shifted > 20 * max(error, 1e-5)
