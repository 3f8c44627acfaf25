"""Condition spectra: parse a one-line spec and draw values from it.

Used for ``--energy`` (MeV), ``--theta`` and ``--phi`` (radians) by ``caloforge simulate`` and
``caloforge generate``. Specs (numbers in the condition's unit):

==============================  ======================================================================
``50000``                       a fixed value
``uniform:a,b``                 flat in [a, b)
``log-uniform:a,b``             flat in log between a and b (CaloChallenge datasets 2/3: 1e3, 1e6 MeV)
``power-law:a,b,index``         density proportional to x^-index on [a, b] (index 1 = log-uniform)
``discrete:a,b,c``              one of the listed values, equally likely
``powers-of-two:a,b``           one of the powers of two 2^k with a <= 2^k <= b, equally likely
                                (CaloChallenge dataset 1 style: 256 MeV .. 4 TeV = 2^8 .. 2^22 MeV)
==============================  ======================================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from caloforge.errors import InputError

__all__ = ["SPEC_KINDS", "Spectrum", "parse_spectrum"]

SPEC_KINDS: dict[str, str] = {
    "uniform": "uniform:a,b",
    "log-uniform": "log-uniform:a,b",
    "power-law": "power-law:a,b,index",
    "discrete": "discrete:a,b,c,...",
    "powers-of-two": "powers-of-two:a,b",
}
_EXPECTED = "a number, or " + ", ".join(SPEC_KINDS.values())


@dataclass(frozen=True)
class Spectrum:
    """A distribution of one condition.

    Args:
        kind: ``fixed``, ``uniform``, ``log-uniform``, ``power-law``, ``discrete`` (powers of two become
            ``discrete``).
        params: (value,) for fixed; (a, b) for uniform and log-uniform; (a, b, index) for power-law;
            the values for discrete.
        text: the spec it was parsed from.
    """

    kind: str
    params: tuple[float, ...]
    text: str = ""

    @property
    def range(self) -> tuple[float, float]:
        """Smallest and largest value the spectrum can produce."""
        if self.kind == "fixed":
            return (self.params[0], self.params[0])
        if self.kind == "discrete":
            return (min(self.params), max(self.params))
        return (self.params[0], self.params[1])

    def sample(self, n: int, rng: np.random.Generator) -> NDArray[np.float64]:
        """Draw ``n`` values, shape (n,)."""
        if self.kind == "fixed":
            return np.full(n, self.params[0])
        if self.kind == "discrete":
            return rng.choice(np.asarray(self.params, dtype=np.float64), size=n)
        a, b = self.params[0], self.params[1]
        u = rng.random(n)
        if self.kind == "uniform":
            return a + (b - a) * u
        if self.kind == "log-uniform":
            return np.exp(math.log(a) + (math.log(b) - math.log(a)) * u)
        index = self.params[2]
        if abs(index - 1.0) < 1e-12:
            return np.exp(math.log(a) + (math.log(b) - math.log(a)) * u)
        # Inverse CDF of x^-index on [a, b]: x = [a^g + u (b^g - a^g)]^(1/g), g = 1 - index.
        g = 1.0 - index
        return np.asarray((a**g + u * (b**g - a**g)) ** (1.0 / g), dtype=np.float64)

    def __str__(self) -> str:
        return self.text or f"{self.kind}:{','.join(f'{p:g}' for p in self.params)}"


def _numbers(text: str, body: str, field: str) -> list[float]:
    try:
        values = [float(v) for v in body.split(",")]
    except ValueError:
        raise InputError(None, field, f"'{text}' has a value that is not a number", _EXPECTED) from None
    if not all(math.isfinite(v) for v in values):
        raise InputError(None, field, f"'{text}' has a value that is not finite", _EXPECTED)
    return values


def parse_spectrum(text: str, field: str = "spectrum", positive: bool = False) -> Spectrum:
    """Parse a spectrum spec (see the module doc).

    Args:
        text: the spec, e.g. ``log-uniform:1000,1000000``.
        field: what the spec is for (e.g. ``--energy``), named in errors.
        positive: require every value to be > 0 (energies).

    Raises:
        InputError: naming ``field``, the spec and the accepted forms.
    """
    text = text.strip()
    kind, sep, body = text.partition(":")
    kind = kind.strip().lower()
    if not sep:
        value = _numbers(text, text, field)
        if len(value) != 1:
            raise InputError(None, field, f"'{text}' is not a spectrum", _EXPECTED)
        spectrum = Spectrum("fixed", (value[0],), text)
    elif kind not in SPEC_KINDS:
        raise InputError(None, field, f"'{text}' has unknown kind '{kind}'", _EXPECTED)
    else:
        values = _numbers(text, body, field)
        spectrum = _build(kind, values, text, field)
    low = spectrum.range[0]
    if positive and low <= 0:
        raise InputError(None, field, f"'{text}' reaches {low:g}", "values > 0")
    return spectrum


def _build(kind: str, values: list[float], text: str, field: str) -> Spectrum:
    def need(count: int) -> None:
        if len(values) != count:
            raise InputError(None, field, f"'{text}' has {len(values)} numbers", SPEC_KINDS[kind])

    if kind == "discrete":
        if not values:
            raise InputError(None, field, f"'{text}' lists no values", SPEC_KINDS[kind])
        return Spectrum("discrete", tuple(values), text)
    if kind == "powers-of-two":
        need(2)
        lo, hi = values
        if not 0 < lo <= hi:
            raise InputError(None, field, f"'{text}' has bounds {lo:g}, {hi:g}", "0 < a <= b")
        first, last = math.ceil(math.log2(lo) - 1e-9), math.floor(math.log2(hi) + 1e-9)
        powers = tuple(2.0**k for k in range(first, last + 1))
        if not powers:
            raise InputError(None, field, f"'{text}' contains no power of two", "a range holding some 2^k")
        return Spectrum("discrete", powers, text)
    need(3 if kind == "power-law" else 2)
    lo, hi = values[0], values[1]
    if not lo < hi:
        raise InputError(None, field, f"'{text}' has bounds {lo:g}, {hi:g}", "a < b")
    if kind in ("log-uniform", "power-law") and lo <= 0:
        raise InputError(None, field, f"'{text}' has a lower bound {lo:g}", f"a > 0 for {kind}")
    return Spectrum(kind, tuple(values), text)
