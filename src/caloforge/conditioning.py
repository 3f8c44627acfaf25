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
from torch import Tensor, nn

from caloforge.data import ShowerSet
from caloforge.errors import InputError

__all__ = ["ConditionEncoder", "ConditionRanges", "ConditionSpec"]


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
    def fit(cls, showers: ShowerSet) -> ConditionSpec:
        """The spec a model trained on ``showers`` needs: angles only if they vary, detectors seen."""
        log_e = np.log(showers.energy.astype(np.float64))
        lo, hi = float(log_e.min()), float(log_e.max())
        if hi - lo < 1e-6:  # a single energy: any range containing it works, keep the scale finite
            lo, hi = lo - 0.5, hi + 0.5
        theta, phi = showers.condition("theta"), showers.condition("phi")
        detector = showers.condition("detector")
        return cls(
            log_energy_range=(lo, hi),
            use_theta=bool(np.ptp(theta) > 1e-6),
            use_phi=bool(np.ptp(phi) > 1e-6),
            n_detectors=int(detector.max()) + 1,
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
        if detector.size and (detector.min() < 0 or detector.max() >= self.n_detectors):
            raise InputError(
                None,
                "detector",
                f"has indices {int(detector.min())}..{int(detector.max())}",
                f"indices 0..{self.n_detectors - 1} (the detectors the model was trained on)",
            )
        with torch.no_grad():
            return self.encoder()(
                *(torch.as_tensor(np.asarray(a, dtype=np.float64)).float() for a in (energy, theta, phi)),
                torch.as_tensor(detector.astype(np.int64)),
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
        self.register_buffer("log_energy_mid", torch.tensor(0.5 * (lo + hi)))
        self.register_buffer("log_energy_half", torch.tensor(0.5 * (hi - lo)))

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

    Energies in MeV, angles in radians; ``mean_energy_ratio`` is the mean of E_tot / E_inc.
    """

    energy_min: float
    energy_max: float
    theta_min: float
    theta_max: float
    phi_min: float
    phi_max: float
    mean_energy_ratio: float

    @classmethod
    def from_showers(cls, showers: ShowerSet) -> ConditionRanges:
        theta, phi = showers.condition("theta"), showers.condition("phi")
        ratio = showers.showers.sum(axis=1, dtype=np.float64) / showers.energy.astype(np.float64)
        return cls(
            float(showers.energy.min()),
            float(showers.energy.max()),
            float(theta.min()),
            float(theta.max()),
            float(phi.min()),
            float(phi.max()),
            float(ratio.mean()),
        )

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

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConditionRanges:
        return cls(**{k: float(v) for k, v in data.items()})
