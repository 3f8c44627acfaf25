"""``ShowerSet``: showers, their named conditions and the geometry they live in.

Conditions (units as everywhere in caloforge's public API):

============  =======  ==========================================================================
name          unit     meaning
============  =======  ==========================================================================
energy        MeV      incident particle energy (required, > 0)
theta         radians  polar angle of the incident direction from the beam axis; pi/2 = normal
                       incidence on the readout (CaloChallenge datasets are all at pi/2)
phi           radians  azimuth of the incident direction about the readout axis; 0 = normal
                       incidence on the readout. Par04/LEMURS files store the direction's global
                       azimuth instead (for a barrel hit from the interaction point that is no tilt
                       at all); models treat it as a label either way, but the embedded simulator
                       reads phi as a tilt, so simulate LEMURS-like samples with phi = 0
detector      index    which detector (geometry/material) the shower comes from, for multi-detector
                       models; 0 when there is only one
============  =======  ==========================================================================

The readout frame: z is the readout axis (the detector normal at the entry point), x runs along the beam
axis and y completes a right-handed frame. A direction (theta, phi) is, in that frame,
``(cos theta, sin theta sin phi, sin theta cos phi)``; see ``incident_direction``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from caloforge.errors import InputError
from caloforge.geometry import CylindricalGeometry

__all__ = [
    "CONDITION_DEFAULTS", "CONDITION_NAMES", "ShowerChunks", "ShowerSet", "incident_direction",
]

CONDITION_NAMES: tuple[str, ...] = ("energy", "theta", "phi", "detector")
# Value used when a file carries no such condition (CaloChallenge files: normal incidence, one detector).
CONDITION_DEFAULTS: dict[str, float] = {"theta": math.pi / 2, "phi": 0.0, "detector": 0.0}


def incident_direction(theta: NDArray[np.floating], phi: NDArray[np.floating]) -> NDArray[np.float64]:
    """Unit direction (N, 3) = (x, y, z) in the readout frame for angles in radians (see module doc)."""
    theta = np.asarray(theta, dtype=np.float64)
    phi = np.asarray(phi, dtype=np.float64)
    return np.stack([np.cos(theta), np.sin(theta) * np.sin(phi), np.sin(theta) * np.cos(phi)], axis=-1)


@dataclass
class ShowerSet:
    """Showers with their conditions.

    Args:
        showers: (N, n_voxels) deposited energy per voxel in MeV, flat in the geometry's voxel order;
            float32 or float16.
        geometry: the readout the voxels belong to.
        energy: (N,) incident energy in MeV.
        theta, phi: (N,) incident angles in radians, or ``None`` when not recorded (defaults apply).
        detector: (N,) integer detector index, or ``None``.
        source: where the showers came from (a path or "gflash"), used in error messages.
    """

    showers: NDArray[np.floating]
    geometry: CylindricalGeometry
    energy: NDArray[np.floating]
    theta: NDArray[np.floating] | None = None
    phi: NDArray[np.floating] | None = None
    detector: NDArray[np.integer] | None = None
    source: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        n = self.showers.shape[0] if self.showers.ndim >= 1 else -1
        if self.showers.ndim != 2 or self.showers.shape[1] != self.geometry.n_voxels:
            raise InputError(
                self.source, "showers", f"shape {self.showers.shape}",
                f"(N, {self.geometry.n_voxels}) for geometry '{self.geometry.name}'",
            )
        self.energy = np.asarray(self.energy).reshape(-1)
        for name in ("energy", "theta", "phi", "detector"):
            values = getattr(self, name)
            if values is not None and len(values) != n:
                raise InputError(
                    self.source, name, f"has {len(values)} entries but there are {n} showers",
                    "one entry per shower",
                )

    def __len__(self) -> int:
        return int(self.showers.shape[0])

    def condition(self, name: str) -> NDArray[np.float64]:
        """Condition ``name`` as float64 (N,), filled with its default when the set does not record it."""
        if name not in CONDITION_NAMES:
            raise KeyError(f"unknown condition '{name}'; known: {', '.join(CONDITION_NAMES)}")
        values = getattr(self, name)
        if values is None:
            return np.full(len(self), CONDITION_DEFAULTS[name], dtype=np.float64)
        return np.asarray(values, dtype=np.float64).reshape(-1)

    def __getitem__(self, index: slice | NDArray[Any] | Sequence[int]) -> ShowerSet:
        """A subset (slice, boolean mask or index array), sharing the geometry."""
        def take(values: NDArray[Any] | None) -> NDArray[Any] | None:
            return None if values is None else values[index]

        return ShowerSet(
            showers=self.showers[index], geometry=self.geometry, energy=self.energy[index],
            theta=take(self.theta), phi=take(self.phi), detector=take(self.detector), source=self.source,
        )

    def check(self) -> None:
        """Raise ``InputError`` on values no shower can have: NaN/inf, negative deposits, energy <= 0."""
        where = self.source
        bad = ~np.isfinite(self.showers)
        if bad.any():
            raise InputError(where, "showers", f"contains {int(bad.sum())} NaN or inf values",
                             "finite energies in MeV")
        n_negative = int((self.showers < 0).sum())
        if n_negative:
            raise InputError(where, "showers", f"contains {n_negative} negative energies (min "
                             f"{float(self.showers.min()):.4g} MeV)", "deposits >= 0 MeV")
        for name in ("energy", "theta", "phi"):
            values = getattr(self, name)
            if values is not None and not np.all(np.isfinite(values)):
                raise InputError(where, name, "contains NaN or inf values", "finite values")
        if np.any(self.energy <= 0):
            raise InputError(where, "energy", f"has {int((self.energy <= 0).sum())} values <= 0 (min "
                             f"{float(self.energy.min()):.4g})", "incident energies > 0 MeV")

    def chunks(self, size: int = 10_000) -> Iterator[ShowerSet]:
        """The set in consecutive slices of at most ``size`` showers (views, no copies)."""
        for start in range(0, len(self), size):
            yield self[start : start + size]

    @staticmethod
    def concatenate(parts: Sequence[ShowerSet], fill_defaults: bool = False) -> ShowerSet:
        """Join sets of the same geometry; a condition absent from any part is dropped, or, with
        ``fill_defaults``, kept when any part records it, with its default (``CONDITION_DEFAULTS``)
        where a part does not. A single part is returned as it is, not copied (joining copies every cell:
        0.07 s for 10,000 showers of 6480, which a generator's one batch need not pay)."""
        if not parts:
            raise ValueError("nothing to concatenate")
        if len(parts) == 1:
            return parts[0]
        geometry = parts[0].geometry
        if any(p.geometry != geometry for p in parts):
            raise ValueError("cannot concatenate showers of different geometries")

        def joined(name: str) -> NDArray[Any] | None:
            values = [getattr(p, name) for p in parts]
            if all(v is None for v in values) or (not fill_defaults and any(v is None for v in values)):
                return None
            if all(v is not None for v in values):
                return np.concatenate(values)
            filled = [p.condition(name) if v is None else v for p, v in zip(parts, values, strict=True)]
            return np.concatenate(filled).astype(np.int64 if name == "detector" else np.float64)

        return ShowerSet(
            showers=np.concatenate([p.showers for p in parts]), geometry=geometry,
            energy=np.concatenate([p.energy for p in parts]), theta=joined("theta"), phi=joined("phi"),
            detector=joined("detector"), source=parts[0].source,
        )


class ShowerChunks(Protocol):
    """Showers that can be walked chunk by chunk: a ``ShowerSet`` in memory or an ``io.ShowerSource`` on
    disk. Fitting preprocessing and condition specs takes either, so a file larger than memory is fitted
    in bounded memory."""

    @property
    def geometry(self) -> CylindricalGeometry: ...

    @property
    def source(self) -> str | None: ...

    def chunks(self) -> Iterator[ShowerSet]: ...
