"""Safeguards around generation: refuse or warn outside the training range, check the energy response.

A generative model extrapolates poorly: asked for energies or angles it never saw, it still returns
showers, silently wrong. ``check_request`` turns the checkpoint's ``ConditionRanges`` into warnings, or
into an ``OutOfRangeError`` in strict mode. After generation, ``energy_response`` compares the mean
deposited fraction E_tot / E_inc of the generated showers with the training data's, the first number
a physicist looks at (the sampling fraction of the calorimeter).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from caloforge.conditioning import ConditionRanges, ConditionRequest
from caloforge.data import ShowerSet
from caloforge.errors import InputError

__all__ = ["EnergyResponse", "OutOfRangeError", "check_request", "energy_response"]


class OutOfRangeError(InputError):
    """Requested conditions lie outside the training range and strict mode forbids extrapolating."""


def check_request(
    ranges: ConditionRanges,
    energy: ArrayLike,
    theta: ArrayLike | None = None,
    phi: ArrayLike | None = None,
    strict: bool = False,
    source: str | None = None,
) -> list[str]:
    """Sentences naming the requested conditions outside ``ranges`` (energy (N,) MeV; theta, phi (N,)
    radians, one value, or ``None`` for the defaults of ``caloforge.data``).

    With ``strict``, raises ``OutOfRangeError`` instead of returning a non-empty list.
    """
    problems = ConditionRequest.of(energy, theta, phi).outside(ranges)
    if problems and strict:
        raise OutOfRangeError(
            source, "conditions", "; ".join(problems),
            "conditions inside the training range (drop --strict to generate anyway, with a warning)",
        )
    return problems


@dataclass(frozen=True)
class EnergyResponse:
    """Mean E_tot / E_inc of ``n`` generated showers beside the training data's."""

    n: int
    mean_generated: float
    mean_training: float

    @property
    def relative_difference(self) -> float:
        """(generated - training) / training."""
        return (self.mean_generated - self.mean_training) / self.mean_training

    def summary(self) -> str:
        """One line for people, e.g. ``mean E_tot/E_inc 0.0412 generated vs 0.0405 training (+1.7%)``."""
        return (f"mean E_tot/E_inc {self.mean_generated:.4g} generated (n={self.n}) vs "
                f"{self.mean_training:.4g} training ({100 * self.relative_difference:+.1f}%)")


def energy_response(showers: ShowerSet | Iterable[ShowerSet], ranges: ConditionRanges) -> EnergyResponse:
    """Mean E_tot / E_inc over ``showers`` (one set or an iterator of chunks, e.g. ``iter_showers``)."""
    total, count = 0.0, 0
    for part in [showers] if isinstance(showers, ShowerSet) else showers:
        ratio = part.showers.sum(axis=1, dtype=np.float64) / part.energy.astype(np.float64)
        total += float(ratio.sum())
        count += len(part)
    if count == 0:
        raise InputError(None, "showers", "is empty", "at least one shower")
    return EnergyResponse(count, total / count, float(ranges.mean_energy_ratio))
