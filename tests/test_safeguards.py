"""Generation safeguards: out-of-range refusal and the E_tot / E_inc report, against hand-worked numbers."""

from __future__ import annotations

import numpy as np
import pytest

from caloforge.conditioning import ConditionRanges
from caloforge.data import ShowerSet
from caloforge.geometry import CylindricalGeometry
from caloforge.safeguards import OutOfRangeError, check_request, energy_response

RANGES = ConditionRanges(energy_min=1e3, energy_max=1e5, theta_min=1.2, theta_max=1.9, phi_min=-0.5,
                         phi_max=0.5, mean_energy_ratio=0.5)
GEOMETRY = CylindricalGeometry.regular("toy-safe", 2, 1, (0.0, 1.0), 1.0, "SiW")


def test_inside_the_range_passes_quietly_even_when_strict() -> None:
    assert check_request(RANGES, [1e3, 5e4, 1e5], theta=1.5, phi=[0.0, 0.5, -0.5], strict=True) == []


def test_outside_the_range_warns_or_refuses() -> None:
    problems = check_request(RANGES, [5e2, 5e4, 2e5], theta=[1.0, 1.5, 1.5])
    assert problems[0].startswith("2 of 3 requested energy values") and "theta" in problems[1]
    with pytest.raises(OutOfRangeError, match="energy") as error:
        check_request(RANGES, [2e5], strict=True, source="model.onnx")
    assert error.value.path == "model.onnx"
    # theta and phi left out mean normal incidence (pi/2, 0): inside this range
    assert check_request(RANGES, [1e4]) == []


def test_energy_response_is_the_mean_deposited_fraction() -> None:
    # fractions 0.3 (3 of 10 MeV), 0.6 (12 of 20 MeV) and 0.45 (45 of 100 MeV): mean 0.45
    a = ShowerSet(np.array([[1.0, 2.0], [6.0, 6.0]], np.float32), GEOMETRY, np.array([10.0, 20.0]))
    b = ShowerSet(np.array([[40.0, 5.0]], np.float32), GEOMETRY, np.array([100.0]))
    response = energy_response(iter([a, b]), RANGES)
    assert response.n == 3 and response.mean_generated == pytest.approx(0.45)
    assert response.relative_difference == pytest.approx(-0.1)
    assert "0.45 generated (n=3) vs 0.5 training (-10.0%)" in response.summary()
    assert energy_response(b, RANGES).mean_generated == pytest.approx(0.45)
