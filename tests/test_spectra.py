"""Spectrum specs: parsing, ranges, sampling against independently worked-out moments, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from caloforge.errors import InputError
from caloforge.spectra import parse_spectrum


def test_fixed_value() -> None:
    spec = parse_spectrum("50000")
    assert spec.range == (50000.0, 50000.0)
    assert np.all(spec.sample(5, np.random.default_rng(0)) == 50000.0)


def test_uniform_mean_and_bounds() -> None:
    values = parse_spectrum("uniform:1.0,2.0").sample(40000, np.random.default_rng(1))
    assert values.min() >= 1.0 and values.max() < 2.0
    assert values.mean() == pytest.approx(1.5, abs=0.01)  # (a + b) / 2


def test_log_uniform_is_flat_in_log() -> None:
    spec = parse_spectrum("log-uniform:1000,1000000")
    assert spec.range == (1000.0, 1e6)
    values = spec.sample(40000, np.random.default_rng(2))
    # log10 is uniform on [3, 6]: mean 4.5, a third of the values in each decade.
    assert np.log10(values).mean() == pytest.approx(4.5, abs=0.02)
    assert np.mean(values < 1e4) == pytest.approx(1 / 3, abs=0.01)


def test_power_law_matches_its_cdf() -> None:
    # x^-2 on [1, 10]: CDF(x) = (1 - 1/x) / (1 - 1/10); median x_m solves CDF = 1/2 -> x_m = 1 / (1 - 0.45).
    values = parse_spectrum("power-law:1,10,2").sample(40000, np.random.default_rng(3))
    assert np.median(values) == pytest.approx(1 / 0.55, rel=0.02)
    assert values.min() >= 1.0 and values.max() <= 10.0
    # Index 1 is the log-uniform special case: mean of ln x on [1, e^2] is 1.
    flat = parse_spectrum(f"power-law:1,{math.e**2},1").sample(40000, np.random.default_rng(4))
    assert np.log(flat).mean() == pytest.approx(1.0, abs=0.02)


def test_discrete_and_powers_of_two() -> None:
    values = parse_spectrum("discrete:1,5,9").sample(3000, np.random.default_rng(5))
    assert set(np.unique(values)) == {1.0, 5.0, 9.0}
    powers = parse_spectrum("powers-of-two:1000,1048576")
    assert powers.params == tuple(2.0**k for k in range(10, 21))  # 1024 .. 1048576 MeV
    assert powers.range == (1024.0, 1048576.0)
    assert set(np.unique(powers.sample(5000, np.random.default_rng(6)))) == set(powers.params)


def test_same_generator_state_same_values() -> None:
    spec = parse_spectrum("log-uniform:1,10")
    first, second = spec.sample(10, np.random.default_rng(7)), spec.sample(10, np.random.default_rng(7))
    assert np.array_equal(first, second)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("log-uniform:1000", "has 1 numbers"),
        ("uniform:5,1", "a < b"),
        ("log-uniform:0,10", "a > 0"),
        ("gaussian:1,2", "unknown kind 'gaussian'"),
        ("uniform:1,x", "not a number"),
        ("powers-of-two:1000,1020", "no power of two"),
        ("discrete:", "not a number"),
        ("abc", "not a number"),
    ],
)
def test_bad_specs_name_the_field(text: str, fragment: str) -> None:
    with pytest.raises(InputError) as info:
        parse_spectrum(text, field="--energy")
    assert "--energy" in str(info.value) and fragment in str(info.value)


def test_positive_requirement() -> None:
    with pytest.raises(InputError, match="values > 0"):
        parse_spectrum("uniform:-1,1", field="--energy", positive=True)
    assert parse_spectrum("uniform:-1,1", field="--theta").range == (-1.0, 1.0)
