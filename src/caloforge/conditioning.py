"""The condition vector a model sees: a named, typed spec and its torch encoder.

A model declares which conditions it uses (``ConditionSpec``); the encoder turns physical conditions
(energy in MeV, angles in radians, detector index) into the vector fed to the backbone:

==============  ===========================================================  ====================
feature         value                                                        when
==============  ===========================================================  ====================
log_energy      ln(E) mapped linearly from [ln E_min, ln E_max] to [-1, 1]   always
theta           (theta - pi/2) / (pi/2): 0 at normal incidence               ``use_theta``
sin_phi,        sin(phi), cos(phi): phi is periodic, so it enters through    ``use_phi``
cos_phi         its sine and cosine (no jump at +-pi)
detector_k      one-hot over ``n_detectors``                                 ``n_detectors > 1``
==============  ===========================================================  ====================

The encoder is written in torch ops only, so it can be traced into an ONNX graph.
``ConditionRanges`` records the span of conditions seen in training (saved in checkpoints, used to
warn when generating outside it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from torch import Tensor, nn

from caloforge.data import CONDITION_DEFAULTS, ShowerChunks, ShowerSet
from caloforge.errors import InputError

__all__ = [
    "ConditionEncoder", "ConditionRanges", "ConditionRequest", "ConditionSpec", "ConditionTable",
]


@dataclass(frozen=True)
class ConditionTable:
    """Every shower's conditions and response, without the voxels: what condition specs and ranges are
    fitted on. energy (N,) MeV, theta and phi (N,) radians (defaults filled in), detector (N,) index,
    ratio (N,) E_tot / E_inc."""

    energy: NDArray[np.float64]
    theta: NDArray[np.float64]
    phi: NDArray[np.float64]
    detector: NDArray[np.float64]
    ratio: NDArray[np.float64]

    @classmethod
    def of(cls, showers: ShowerChunks) -> ConditionTable:
        """One pass over the chunks of a ``ShowerSet`` or an ``io.ShowerSource``."""
        columns: dict[str, list[NDArray[np.float64]]] = {k: [] for k in ("energy", "theta", "phi",
                                                                          "detector", "ratio")}
        for chunk in showers.chunks():
            for name in ("energy", "theta", "phi", "detector"):
                columns[name].append(chunk.condition(name))
            columns["ratio"].append(chunk.showers.sum(axis=1, dtype=np.float64) / columns["energy"][-1])
        return cls(**{name: np.concatenate(parts) for name, parts in columns.items()})


@dataclass(frozen=True)
class ConditionSpec:
    """Which conditions a model uses and how they are scaled.

    Args:
        log_energy_range: (ln E_min, ln E_max) with E in MeV; ln E is mapped to [-1, 1] over it.
        use_theta: feed theta (radians) to the model.
        use_phi: feed sin(phi), cos(phi).
        n_detectors: detector indices 0 .. n-1; one-hot when more than one.
    """

    log_energy_range: tuple[float, float]
    use_theta: bool = False
    use_phi: bool = False
    n_detectors: int = 1

    @property
    def features(self) -> tuple[str, ...]:
        """Names of the entries of the condition vector, in order."""
        names = ["log_energy"]
        if self.use_theta:
            names.append("theta")
        if self.use_phi:
            names += ["sin_phi", "cos_phi"]
        if self.n_detectors > 1:
            names += [f"detector_{k}" for k in range(self.n_detectors)]
        return tuple(names)

    @property
    def dim(self) -> int:
        """Length of the condition vector."""
        return len(self.features)

    @classmethod
    def fit(cls, showers: ShowerChunks | ConditionTable) -> ConditionSpec:
        """The spec a model trained on ``showers`` needs: angles only if they vary, detectors seen."""
        table = showers if isinstance(showers, ConditionTable) else ConditionTable.of(showers)
        log_e = np.log(table.energy)
        lo, hi = float(log_e.min()), float(log_e.max())
        if hi - lo < 1e-6:  # a single energy: any range containing it works, keep the scale finite
            lo, hi = lo - 0.5, hi + 0.5
        return cls(
            log_energy_range=(lo, hi),
            use_theta=bool(np.ptp(table.theta) > 1e-6),
            use_phi=bool(np.ptp(table.phi) > 1e-6),
            n_detectors=int(table.detector.max()) + 1,
        )

    def encoder(self) -> ConditionEncoder:
        """A torch module computing the condition vector (see module doc)."""
        return ConditionEncoder(self)

    def encode(self, showers: ShowerSet) -> Tensor:
        """Condition vectors (N, dim) float32 of a ``ShowerSet``."""
        return self.encode_arrays(
            showers.energy,
            showers.condition("theta"),
            showers.condition("phi"),
            showers.condition("detector"),
        )

    def encode_arrays(self, energy: Any, theta: Any, phi: Any, detector: Any) -> Tensor:
        """Condition vectors (N, dim) from arrays: energy (N,) MeV, theta/phi (N,) radians, detector (N,)."""
        detector = np.asarray(detector)
        self.check_detectors(detector)
        with torch.no_grad():
            return self.encoder()(
                *(torch.as_tensor(np.asarray(a, dtype=np.float64)).float() for a in (energy, theta, phi)),
                torch.as_tensor(detector.astype(np.int64)),
            )

    def check_detectors(self, detector: NDArray[Any]) -> None:
        """Raise ``InputError`` unless every detector index (N,) is one of the model's slots."""
        if detector.size and (detector.min() < 0 or detector.max() >= self.n_detectors):
            raise InputError(
                None,
                "detector",
                f"has indices {int(detector.min())}..{int(detector.max())}",
                f"indices 0..{self.n_detectors - 1} (the detectors the model was trained on)",
            )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "log_energy_range": list(self.log_energy_range)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConditionSpec:
        lo, hi = data["log_energy_range"]
        return cls(
            (float(lo), float(hi)), bool(data["use_theta"]), bool(data["use_phi"]), int(data["n_detectors"])
        )


class ConditionEncoder(nn.Module):
    """Physical conditions -> condition vector (N, spec.dim); torch ops only (ONNX-traceable)."""

    log_energy_mid: Tensor
    log_energy_half: Tensor

    def __init__(self, spec: ConditionSpec) -> None:
        super().__init__()
        self.spec = spec
        lo, hi = spec.log_energy_range
        self.register_buffer("log_energy_mid", torch.tensor(0.5 * (lo + hi)), persistent=False)
        self.register_buffer("log_energy_half", torch.tensor(0.5 * (hi - lo)), persistent=False)

    def forward(self, energy: Tensor, theta: Tensor, phi: Tensor, detector: Tensor) -> Tensor:
        """energy (N,) MeV, theta (N,) and phi (N,) radians, detector (N,) int64 -> (N, dim)."""
        parts = [((torch.log(energy) - self.log_energy_mid) / self.log_energy_half)[:, None]]
        if self.spec.use_theta:
            parts.append(((theta - math.pi / 2) / (math.pi / 2))[:, None])
        if self.spec.use_phi:
            parts += [torch.sin(phi)[:, None], torch.cos(phi)[:, None]]
        if self.spec.n_detectors > 1:
            parts.append(nn.functional.one_hot(detector.long(), self.spec.n_detectors).to(energy.dtype))
        return torch.cat(parts, dim=1)


@dataclass(frozen=True)
class ConditionRanges:
    """Span of the training conditions, saved in checkpoints for out-of-range warnings.

    Energies in MeV, angles in radians; ``mean_energy_ratio`` is the mean of E_tot / E_inc; ``detectors``
    the detector slots the model was trained on (empty in checkpoints written before it was recorded),
    which tells adaptation (``caloforge adapt``) which slots are spare.
    """

    energy_min: float
    energy_max: float
    theta_min: float
    theta_max: float
    phi_min: float
    phi_max: float
    mean_energy_ratio: float
    detectors: tuple[int, ...] = ()

    @classmethod
    def from_showers(cls, showers: ShowerChunks | ConditionTable) -> ConditionRanges:
        table = showers if isinstance(showers, ConditionTable) else ConditionTable.of(showers)
        return cls(
            float(table.energy.min()),
            float(table.energy.max()),
            float(table.theta.min()),
            float(table.theta.max()),
            float(table.phi.min()),
            float(table.phi.max()),
            float(table.ratio.mean()),
            tuple(int(d) for d in np.unique(table.detector)),
        )

    @property
    def own_detector(self) -> int | None:
        """The slot to generate in when none is asked for: the one detector trained on, when that is not
        slot 0 (the default of ``ConditionRequest``); else ``None``."""
        return self.detectors[0] if len(self.detectors) == 1 and self.detectors[0] != 0 else None

    def outside(self, energy: Any, theta: Any, phi: Any) -> list[str]:
        """Sentences naming each condition of the request that leaves the training span (empty if none)."""
        problems = []
        for name, values, lo, hi in (
            ("energy", energy, self.energy_min, self.energy_max),
            ("theta", theta, self.theta_min, self.theta_max),
            ("phi", phi, self.phi_min, self.phi_max),
        ):
            values = np.asarray(values, dtype=np.float64)
            tolerance = 1e-6 * max(abs(lo), abs(hi), 1.0)
            n_out = int(((values < lo - tolerance) | (values > hi + tolerance)).sum())
            if n_out:
                problems.append(
                    f"{n_out} of {values.size} requested {name} values lie outside the training "
                    f"range [{lo:.6g}, {hi:.6g}]"
                )
        return problems

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["detectors"] = list(self.detectors)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConditionRanges:
        detectors = tuple(int(d) for d in data.get("detectors", ()))
        return cls(**{k: float(v) for k, v in data.items() if k != "detectors"}, detectors=detectors)


def _per_shower(name: str, values: ArrayLike | None, n: int) -> NDArray[np.float64]:
    """One value per shower from ``None`` (the default of ``caloforge.data``), one value, or N values."""
    if values is None:
        return np.full(n, CONDITION_DEFAULTS[name], dtype=np.float64)
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 1:
        return np.full(n, float(array[0]))
    if array.size != n:
        raise InputError(
            None, name, f"has {array.size} values for {n} showers", "one value, or one per shower"
        )
    return array


@dataclass(frozen=True)
class ConditionRequest:
    """The conditions a generator is asked for, one value per shower.

    Build with ``ConditionRequest.of``; ``given`` names the optional conditions the caller set, which are
    the ones recorded with the generated showers.
    """

    energy: NDArray[np.float64]  # (N,) MeV
    theta: NDArray[np.float64]  # (N,) radians
    phi: NDArray[np.float64]  # (N,) radians
    detector: NDArray[np.int64]  # (N,)
    given: frozenset[str]

    @classmethod
    def of(
        cls,
        energy_mev: ArrayLike,
        theta: ArrayLike | None = None,
        phi: ArrayLike | None = None,
        detector: ArrayLike | None = None,
    ) -> ConditionRequest:
        """Energies (N,) MeV; theta, phi (radians) and detector as one value, N values or ``None``."""
        energy = np.asarray(energy_mev, dtype=np.float64).reshape(-1)
        if energy.size == 0 or np.any(~np.isfinite(energy)) or np.any(energy <= 0):
            raise InputError(
                None, "energy", "has no values, or values <= 0 or not finite", "energies > 0 MeV"
            )
        n = energy.size
        optional = {"theta": theta, "phi": phi, "detector": detector}
        given = frozenset(name for name, values in optional.items() if values is not None)
        return cls(
            energy, _per_shower("theta", theta, n), _per_shower("phi", phi, n),
            _per_shower("detector", detector, n).astype(np.int64), given,
        )

    def __len__(self) -> int:
        return int(self.energy.size)

    def outside(self, ranges: ConditionRanges) -> list[str]:
        """Sentences naming the requested conditions outside ``ranges`` (empty when all inside)."""
        return ranges.outside(self.energy, self.theta, self.phi)

    def showers(self, showers: NDArray[np.floating], part: slice, geometry: Any, source: str) -> ShowerSet:
        """Generated ``showers`` (n, V) MeV for the requests ``part``, with the conditions that were given."""
        def kept(name: str) -> NDArray[Any] | None:
            return getattr(self, name)[part] if name in self.given else None

        return ShowerSet(
            showers=showers, geometry=geometry, energy=self.energy[part], theta=kept("theta"),
            phi=kept("phi"), detector=kept("detector"), source=source,
        )
