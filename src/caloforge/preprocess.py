"""Fitted, invertible transform between showers in MeV and the standardised space a model learns.

Forward, for voxel energy E (MeV) of a shower with incident energy E_inc (MeV):

    u = ln((E + eps) / E_inc)                    (log of the energy fraction; eps in MeV keeps zeros finite)
    z = (u - mean) / std                          (per voxel, or one global mean/std)

Inverse: E = E_inc * exp(z * std + mean) - eps, then every E below ``threshold`` (MeV) is set to 0.

Why an offset in MeV rather than in the fraction: calorimeter cells read out above a threshold in MeV
(15.15 keV in Par04/CaloChallenge), so eps ~ threshold puts empty cells one constant step (ln 3 with
the defaults) below the faintest real cell at every incident energy. With the defaults, ``threshold``
is half the smallest nonzero deposit in the training set and ``eps = threshold``: a zero maps to
ln(eps / E_inc), the faintest deposit d_min to ln(3 eps / E_inc), and the cut sits at E = d_min / 2, so
the round trip of training showers is exact up to float precision and zeros come back as zeros.

``ln(...)`` is clamped above at ``log_max`` (the largest value in training plus ln 2) before exp, so a
sample far out in a tail cannot overflow. ``PreprocessTransform`` is the torch version (ONNX-traceable).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from caloforge.data import ShowerSet
from caloforge.errors import InputError

__all__ = ["PreprocessConfig", "PreprocessTransform", "ShowerPreprocessor"]

_CHUNK = 4096  # showers per chunk when transforming: bounds memory on large sets


@dataclass
class PreprocessConfig:
    """How showers are transformed (see module doc).

    Args:
        standardize: "voxel" (a mean and std per voxel) or "global" (one of each).
        zero_threshold_mev: deposits below this (MeV) come back as 0; ``None`` = half the smallest
            nonzero deposit in the training set.
        eps_mev: offset inside the log (MeV); ``None`` = the zero threshold.
        std_floor: smallest std used, so voxels that never fire do not divide by zero.
    """

    standardize: str = "voxel"
    zero_threshold_mev: float | None = None
    eps_mev: float | None = None
    std_floor: float = 1e-3

    def __post_init__(self) -> None:
        if self.standardize not in ("voxel", "global"):
            raise InputError(
                None, "preprocess.standardize", f"is '{self.standardize}'", "'voxel' or 'global'"
            )


class PreprocessTransform(nn.Module):
    """Torch form of a fitted ``ShowerPreprocessor``: ``forward`` MeV -> model space, ``inverse`` back.

    Shapes: showers and model-space values (N, n_voxels), energy (N,) in MeV.
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self, mean: Tensor, std: Tensor, eps_mev: float, threshold_mev: float, log_max: float
    ) -> None:
        super().__init__()
        self.register_buffer("mean", mean.float())
        self.register_buffer("std", std.float())
        self.eps_mev = float(eps_mev)
        self.threshold_mev = float(threshold_mev)
        self.log_max = float(log_max)

    def forward(self, showers: Tensor, energy: Tensor) -> Tensor:
        u = torch.log((showers + self.eps_mev) / energy[:, None])  # (N, V)
        return (u - self.mean) / self.std

    def inverse(self, z: Tensor, energy: Tensor) -> Tensor:
        u = torch.clamp(z * self.std + self.mean, max=self.log_max)  # (N, V)
        showers = energy[:, None] * torch.exp(u) - self.eps_mev
        # Cells below the threshold read zero (module doc); where() keeps the graph free of Python branches.
        return torch.where(showers < self.threshold_mev, torch.zeros_like(showers), showers)


@dataclass
class ShowerPreprocessor:
    """A fitted transform (see module doc); build with ``fit``, save with ``to_dict``.

    Attributes: threshold_mev and eps_mev in MeV; mean and std (n_voxels,) or (1,) in log space;
    log_max the clamp of the log before exp.
    """

    config: PreprocessConfig
    threshold_mev: float
    eps_mev: float
    mean: NDArray[np.float64]
    std: NDArray[np.float64]
    log_max: float

    @classmethod
    def fit(cls, showers: ShowerSet, config: PreprocessConfig | None = None) -> ShowerPreprocessor:
        """Fit on a training set (energies must be > 0 and deposits >= 0)."""
        config = config or PreprocessConfig()
        showers.check()
        nonzero = showers.showers[showers.showers > 0]
        if config.zero_threshold_mev is not None:
            threshold = float(config.zero_threshold_mev)
        elif nonzero.size:
            threshold = 0.5 * float(nonzero.min())
        else:
            raise InputError(showers.source, "showers", "are all zero", "some nonzero deposits to fit on")
        eps = float(config.eps_mev) if config.eps_mev is not None else threshold
        if eps <= 0 or threshold <= 0:
            raise InputError(
                None, "preprocess", f"eps_mev={eps}, zero_threshold_mev={threshold}", "values > 0"
            )
        energy = showers.energy.astype(np.float64)
        n_voxels = showers.showers.shape[1]
        total, total_sq, log_max = np.zeros(n_voxels), np.zeros(n_voxels), -math.inf
        for start in range(0, len(showers), _CHUNK):
            u = np.log(
                (showers.showers[start : start + _CHUNK].astype(np.float64) + eps)
                / energy[start : start + _CHUNK, None]
            )
            total += u.sum(axis=0)
            total_sq += (u * u).sum(axis=0)
            log_max = max(log_max, float(u.max()))
        n = len(showers)
        if config.standardize == "global":
            total, total_sq, n = total.sum(keepdims=True), total_sq.sum(keepdims=True), n * n_voxels
        mean = total / n
        std = np.sqrt(np.maximum(total_sq / n - mean**2, 0.0))
        return cls(config, threshold, eps, mean, np.maximum(std, config.std_floor), log_max + math.log(2.0))

    def module(self) -> PreprocessTransform:
        """The torch form (buffers on CPU, float32)."""
        return PreprocessTransform(
            torch.from_numpy(self.mean),
            torch.from_numpy(self.std),
            self.eps_mev,
            self.threshold_mev,
            self.log_max,
        )

    def transform(self, showers: ShowerSet) -> NDArray[np.float32]:
        """Model-space values (N, n_voxels) float32 of a ``ShowerSet``."""
        module = self.module()
        out = np.empty(showers.showers.shape, dtype=np.float32)
        with torch.no_grad():
            for start in range(0, len(showers), _CHUNK):
                stop = start + _CHUNK
                out[start:stop] = module(
                    torch.from_numpy(np.asarray(showers.showers[start:stop], np.float32)),
                    torch.from_numpy(showers.energy[start:stop].astype(np.float32)),
                ).numpy()
        return out

    def inverse(self, z: NDArray[np.floating], energy: NDArray[np.floating]) -> NDArray[np.float32]:
        """Showers (N, n_voxels) in MeV from model-space values (N, n_voxels) and energy (N,) MeV."""
        with torch.no_grad():
            return (
                self.module()
                .inverse(
                    torch.as_tensor(np.asarray(z, np.float32)),
                    torch.as_tensor(np.asarray(energy, np.float32)),
                )
                .numpy()
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists of floats), for checkpoints and JSON."""
        return {
            "config": {
                "standardize": self.config.standardize,
                "zero_threshold_mev": self.config.zero_threshold_mev,
                "eps_mev": self.config.eps_mev,
                "std_floor": self.config.std_floor,
            },
            "threshold_mev": self.threshold_mev,
            "eps_mev": self.eps_mev,
            "log_max": self.log_max,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShowerPreprocessor:
        return cls(
            PreprocessConfig(**data["config"]),
            float(data["threshold_mev"]),
            float(data["eps_mev"]),
            np.asarray(data["mean"], dtype=np.float64),
            np.asarray(data["std"], dtype=np.float64),
            float(data["log_max"]),
        )
