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
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from caloforge.errors import InputError

if TYPE_CHECKING:
    from caloforge.geometry import CylindricalGeometry

__all__ = ["BITS_FIELDS", "NOISE_DISTRIBUTIONS", "ExtraGraph", "NoiseSpec", "ShowerSampler",
           "bits_from_uniform", "normal_from_bits", "zero_below"]

NOISE_DISTRIBUTIONS = ("normal", "uniform", "bits")
BITS_FIELDS = 4  # random numbers in one number of a "bits" noise: a field of 15 bits in each 16-bit word
_FIELD_BITS = 15
_FIELD = 1 << _FIELD_BITS  # values of one field
_WORD_BITS = 16  # a field is the low 15 bits of its 16-bit word (so PyTorch reads it off an int16 view)
_SHIFTS = tuple(_WORD_BITS * k for k in range(BITS_FIELDS))  # each field's lowest bit, lowest field first


@lru_cache(maxsize=4)
def _normal_quantiles(device: torch.device) -> Tensor:
    """(2^15,) float32: the standard normal quantile at the middle of each 15-bit field's interval,
    (f + 1/2) / 2^15 (``normal_from_bits``)."""
    levels = (torch.arange(_FIELD, dtype=torch.float64) + 0.5) / _FIELD
    return torch.special.ndtri(levels).float().to(device)


def normal_from_bits(bits: Tensor) -> Tensor:
    """A "bits" noise (T, W) int64 (in [0, 2^63), uniformly random) -> (T, 4 W) float32 independent
    standard normal numbers: the low 15 bits f of each of a number's four 16-bit words (lowest first) are
    read off a table of the normal quantiles at (f + 1/2) / 2^15 (so |z| <= 4.17).

    A random-number generator makes 64 random bits in about the time of one float32 uniform number, so this
    gives four normal numbers for the price of one uniform number, with one lookup each instead of
    Box-Muller's logarithm, root, sine and cosine: for samplers that need many normal numbers of modest
    resolution and use a fraction of them (the mdma-gan's hit slots)."""
    if torch.onnx.is_in_onnx_export():  # shifts and a remainder (ONNX has no bit casts; a mask is opset 18)
        fields = (bits.unsqueeze(-1) >> torch.tensor(_SHIFTS, device=bits.device)) % _FIELD  # (T, W, 4)
    else:  # the words as an int16 view (little-endian: lowest first), masked: 2x faster than shifting
        fields = (bits.contiguous().view(torch.int16) & (_FIELD - 1)).int()  # (T, 4 W)
    normal = _normal_quantiles(bits.device).index_select(0, fields.reshape(-1))
    # a constant width (exported: a Reshape to (-1, 4 W); flatten(-2)'s -1 last fails on no hits)
    return normal.reshape(-1, BITS_FIELDS * int(bits.shape[-1]))


def bits_from_uniform(u: Tensor) -> Tensor:
    """Uniform numbers u (..., W, 4) in [0, 1) -> a "bits" noise (..., W) int64: the leading 15 bits of each
    group of four as the four fields of one number (``normal_from_bits`` reads them as the normal quantiles at
    (floor(2^15 u) + 1/2) / 2^15). How a graph without a random-integer operator (ONNX) draws bits."""
    fields = torch.clamp(torch.floor(u * _FIELD), 0, _FIELD - 1).to(torch.int64)
    return (fields * torch.tensor([1 << s for s in _SHIFTS], device=u.device)).sum(-1)


class _ZeroBelow(torch.autograd.Function):
    """``torch.threshold(x, alpha, 0)`` exported as one ONNX ThresholdedRelu (``zero_below``); used
    only while exporting."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, alpha: float) -> Tensor:
        return torch.threshold(x, alpha, 0.0)

    @staticmethod
    def symbolic(g: Any, x: Any, alpha: float) -> Any:
        return g.op("ThresholdedRelu", x, alpha_f=alpha)


@lru_cache(maxsize=16)
def _below(threshold: float, dtype: torch.dtype) -> float:
    """The largest ``dtype`` number below ``threshold``: x > it exactly where x >= threshold in ``dtype``."""
    kind = {torch.float16: "float16", torch.float32: "float32", torch.float64: "float64"}[dtype]
    value = np.asarray(threshold, dtype=kind)  # numpy: no tensor while tracing
    return float(np.nextafter(value, np.asarray(-math.inf, dtype=kind)))


def zero_below(values: Tensor, threshold: float) -> Tensor:
    """``values`` (...) with every entry below ``threshold`` read as zero (a readout threshold in MeV, or a
    fraction's): x where x >= threshold, else 0 (NaN stays NaN), compared in the values' dtype.

    One pass (``torch.threshold`` at the number just below ``threshold``), exported as one ThresholdedRelu: a
    comparison, a cast and a product (or a Where on a tensor of zeros) took 6 times as long in PyTorch
    (0.44 against 0.07 ms for 100 showers of 6480 cells) and three or four nodes in a graph."""
    alpha = _below(float(threshold), values.dtype)
    if torch.onnx.is_in_onnx_export():
        return _ZeroBelow.apply(values, alpha)
    return torch.threshold(values, alpha, 0.0)


@dataclass(frozen=True)
class NoiseSpec:
    """One noise input of a sampler.

    Args:
        name: the input's name (also in the exported graph).
        shape: per-shower shape; the tensor fed is (N, *shape).
        distribution: "normal" (standard normal, float32), "uniform" (on [0, 1), float32) or "bits" (int64
            in [0, 2^63), uniformly random: four fields of 15 bits, one in each 16-bit word,
            ``normal_from_bits``).
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

    @property
    def numpy_dtype(self) -> type[np.generic]:
        """The dtype of its tensors (int64 for "bits", else float32)."""
        return np.int64 if self.distribution == "bits" else np.float32

    def draw(self, n: int, generator: torch.Generator) -> Tensor:
        """(n, *shape) float32 (int64 for "bits") from a torch generator (on the generator's device)."""
        shape = (n, *self.shape)
        if self.distribution == "normal":
            return torch.randn(shape, generator=generator, device=generator.device)
        if self.distribution == "bits":  # in [0, 2^63)
            return torch.empty(shape, dtype=torch.int64, device=generator.device).random_(generator=generator)
        return torch.rand(shape, generator=generator, device=generator.device)

    def draw_numpy(self, n: int, rng: np.random.Generator) -> NDArray[Any]:
        """(n, *shape) float32 (int64 for "bits") from a numpy generator (the onnxruntime path)."""
        shape = (n, *self.shape)
        if self.distribution == "normal":
            return rng.standard_normal(shape, dtype=np.float32)
        if self.distribution == "bits":  # the generator's raw 64-bit output, shifted into [0, 2^63)
            return (rng.bit_generator.random_raw(shape) >> np.uint64(1)).view(np.int64)
        return rng.random(shape, dtype=np.float32)

    def middle(self, n: int) -> Tensor:
        """(n, *shape): the distribution's middle (0, 0.5, or bits whose fields are all 2^14: the middle of
        their range), for tracing a graph and for fixed noise."""
        if self.distribution == "bits":
            middle = sum((_FIELD // 2) << s for s in _SHIFTS)
            return torch.full((n, *self.shape), middle, dtype=torch.int64)
        return torch.full((n, *self.shape), 0.0 if self.distribution == "normal" else 0.5)

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
