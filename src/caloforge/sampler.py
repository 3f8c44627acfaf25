"""The sampler side of the family contract: conditions + named noise tensors -> showers in MeV.

Every family's ``build_sampler`` returns a ``ShowerSampler``: a plain ``torch.nn.Module`` (no Lightning)
whose ``forward`` takes the conditions and, after them, one tensor per entry of its ``noise`` spec::

    sampler(energy (N,) MeV, theta (N,) rad, phi (N,) rad, detector (N,) int64, *noise) -> showers (N, V) MeV

All randomness enters through those named tensors, so the sampler is a deterministic function of its
inputs. That is what lets generation (``caloforge.generate``), ONNX export of the whole sampler and of the
Geant4 Par04 graph (which draws the declared noise in-graph) and the onnxruntime generator be written once
for every family: they only read the spec.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from caloforge.errors import InputError

if TYPE_CHECKING:
    from caloforge.geometry import CylindricalGeometry

__all__ = ["NOISE_DISTRIBUTIONS", "ExtraGraph", "NoiseSpec", "ShowerSampler"]

NOISE_DISTRIBUTIONS = ("normal", "uniform")


@dataclass(frozen=True)
class NoiseSpec:
    """One noise input of a sampler.

    Args:
        name: the input's name (also in the exported graph).
        shape: per-shower shape; the tensor fed is (N, *shape).
        distribution: "normal" (standard normal) or "uniform" (on [0, 1)).
    """

    name: str
    shape: tuple[int, ...]
    distribution: str = "normal"

    def __post_init__(self) -> None:
        if self.distribution not in NOISE_DISTRIBUTIONS:
            raise ValueError(f"noise '{self.name}': distribution '{self.distribution}' is not one of "
                             f"{NOISE_DISTRIBUTIONS}")

    @property
    def size(self) -> int:
        """Numbers per shower."""
        return math.prod(self.shape)

    def draw(self, n: int, generator: torch.Generator) -> Tensor:
        """(n, *shape) float32 from a torch generator (on the generator's device)."""
        shape = (n, *self.shape)
        if self.distribution == "normal":
            return torch.randn(shape, generator=generator, device=generator.device)
        return torch.rand(shape, generator=generator, device=generator.device)

    def draw_numpy(self, n: int, rng: np.random.Generator) -> NDArray[np.float32]:
        """(n, *shape) float32 from a numpy generator (the onnxruntime path)."""
        shape = (n, *self.shape)
        if self.distribution == "normal":
            return rng.standard_normal(shape, dtype=np.float32)
        return rng.random(shape, dtype=np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "distribution": self.distribution}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NoiseSpec:
        return cls(str(data["name"]), tuple(int(s) for s in data["shape"]), str(data["distribution"]))


class ExtraGraph(NamedTuple):
    """A family-specific graph exported beside the sampler (e.g. the DiT's denoiser alone)."""

    module: nn.Module
    example: tuple[Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    metadata: dict[str, Any]


class ShowerSampler(nn.Module):
    """Base class of every family's sampler (module doc).

    Subclasses set ``noise`` (the spec, in the order the tensors follow the conditions) and ``options``
    (the sampling settings this instance was built with, e.g. ``{"n_steps": 20, "sampler": "heun"}``;
    recorded in exported graphs), and implement ``forward``.
    """

    noise: tuple[NoiseSpec, ...] = ()
    options: dict[str, Any]

    def __init__(self) -> None:
        super().__init__()
        self.options = {}

    def forward(
        self, energy: Tensor, theta: Tensor, phi: Tensor, detector: Tensor, *noise: Tensor
    ) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def check_noise(self, noise: tuple[Tensor, ...], n: int) -> None:
        """Raise ``InputError`` unless ``noise`` matches the spec for a batch of ``n`` showers."""
        if len(noise) != len(self.noise):
            raise InputError(None, "noise", f"has {len(noise)} tensors",
                             f"{len(self.noise)}: {', '.join(s.name for s in self.noise)}")
        for tensor, spec in zip(noise, self.noise, strict=True):
            if tuple(tensor.shape) != (n, *spec.shape):
                raise InputError(None, spec.name, f"has shape {tuple(tensor.shape)}", f"{(n, *spec.shape)}")

    def base(self) -> ShowerSampler:
        """The family's own sampler: itself, or the one a wrapper (``calibration.CalibratedSampler``)
        holds."""
        return self

    def lower_threshold(self, mev: float) -> None:
        """From now on, output every cell down to ``mev`` (below the readout threshold) as well as the hits:
        candidates for a calibration that picks the hits among them (``calibration.CalibrationConfig.
        candidate_threshold``). Only a family whose threshold is the last step of its sampler can; the
        others refuse (default)."""
        raise InputError(None, "calibration.candidate_threshold",
                         f"asks {type(self).__name__} for cells below its readout threshold, which it cannot "
                         "give", "1 for this family (edm-dit, edm-unet and mdma-gan hand over fainter cells)")

    @staticmethod
    def check_lower_threshold(mev: float, threshold_mev: float) -> None:
        """Raise ``InputError`` unless ``mev`` is in (0, ``threshold_mev``], the readout threshold: what a
        family's ``lower_threshold`` can move its threshold down to."""
        if not 0 < mev <= threshold_mev:
            raise InputError(None, "threshold", f"is {mev} MeV",
                             f"in (0, {threshold_mev}] MeV, the readout threshold")

    def voxelise_onto(self, geometry: CylindricalGeometry) -> ShowerSampler:
        """This sampler writing its showers onto ``geometry``, another readout of its detector (checked by
        the caller, ``Family.check_readout``); only readout-free families (``Family.readout_free``) can."""
        raise NotImplementedError(f"{type(self).__name__} learns its readout's cells")

    def metadata(self) -> dict[str, Any]:
        """Family-specific facts recorded in every exported graph (plain JSON types; default: none)."""
        return {}

    def extra_graphs(self) -> dict[str, ExtraGraph]:
        """Graphs worth exporting beside the sampler, by name (default: none)."""
        return {}
