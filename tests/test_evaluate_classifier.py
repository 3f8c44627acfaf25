"""Classifier two-sample test against the analytic AUC of two Gaussians."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from caloforge.config import from_dict
from caloforge.errors import InputError
from caloforge.evaluate.classifier import (
    OFFICIAL_CLASSIFIER,
    ClassifierConfig,
    classifier_test,
    low_level_inputs,
)

SMALL = ClassifierConfig(n_hidden=16, n_layers=2, epochs=4, batch_size=500, learning_rate=3e-3)


def test_auc_of_two_gaussians_matches_phi_of_d_over_sqrt2() -> None:
    rng = np.random.default_rng(0)
    d = 1.0
    generated = rng.normal(0.0, 1.0, (30_000, 1))
    reference = rng.normal(d, 1.0, (30_000, 1))
    result = classifier_test(generated, reference, SMALL, seed=1)
    # N(0,1) vs N(d,1): AUC = P(Y > X) = Phi(d / sqrt 2) = 0.7602; sampling error of 6000 + 6000 ~ 0.005
    assert result.auc == pytest.approx(norm.cdf(d / math.sqrt(2)), abs=0.015)
    # The best JSD of N(0,1) vs N(1,1) (Bayes-optimal classifier), by numerical integration
    t = np.linspace(-8, 9, 20001)
    p, q = norm.pdf(t), norm.pdf(t, d)
    m = 0.5 * (p + q)
    jsd = 0.5 * np.trapezoid(p * np.log2(p / m) + q * np.log2(q / m), t)
    assert result.jsd == pytest.approx(jsd, abs=0.02)
    assert (result.n_train, result.n_test, result.n_validation) == (36_000, 12_000, 12_000)


def test_same_distribution_gives_half_and_seed_reproduces() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(10_000, 3)), rng.normal(size=(10_000, 3))
    first = classifier_test(a, b, SMALL, seed=5)
    assert first.auc == pytest.approx(0.5, abs=0.03)
    assert first.jsd < 0.01
    assert classifier_test(a, b, SMALL, seed=5) == first


def test_low_level_inputs_follow_official_preprocessing() -> None:
    showers = np.array([[0.01, 2.0, 5.0], [1.0, 0.0, 0.02]], dtype=np.float32)
    x = low_level_inputs(showers, np.array([10.0, 100.0]), threshold_mev=0.015)
    np.testing.assert_allclose(x, [[1.0, 0.0, 0.2, 0.5], [2.0, 0.01, 0.0, 0.0002]], rtol=1e-6)


def test_config_rejects_unknown_keys_and_official_settings() -> None:
    assert OFFICIAL_CLASSIFIER.n_hidden == 2048 and OFFICIAL_CLASSIFIER.epochs == 50
    assert OFFICIAL_CLASSIFIER.learning_rate == 2e-4 and OFFICIAL_CLASSIFIER.batch_size == 1000
    assert from_dict(ClassifierConfig, {"epochs": 3, "split": [0.5, 0.25, 0.25]}).split == (0.5, 0.25, 0.25)
    with pytest.raises(InputError, match="epoch"):
        from_dict(ClassifierConfig, {"epoch": 3})
    with pytest.raises(InputError):
        classifier_test(np.zeros((5, 2)), np.zeros((5, 3)))
