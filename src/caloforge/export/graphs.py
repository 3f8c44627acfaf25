"""ONNX export written once for every family: the whole sampler, Geant4 Par04's contract, family extras.

* ``sampler``: conditions (energy MeV, theta, phi radians, detector index) and the family's declared noise
  tensors (``caloforge.sampler``) -> showers in MeV, dynamic batch; everything (condition encoding, the
  solver's unrolled steps, the inverse preprocessing) inside, so one ``Run`` generates a batch.
* ``par04``: what Geant4's ``examples/extended/parameterisations/Par04`` feeds a "CaloDiT-2" model
  (``src/Par04InferenceSetup.cc``, ``GetEnergies``; ``src/Par04OnnxInference.cc``, ``RunInference``):
  ONE float32 input of shape (1, K) = [E / GeV, phi, theta, detector one-hot (5 slots)], the angles being
  ``G4ThreeVector::phi()`` / ``theta()`` of the momentum direction in radians; the C++ reads the FIRST
  output as Nr x Nphi x Nz floats, places them looping r, then phi, then z fastest (``GetPositions``),
  and multiplies them by 1000, so the graph returns GeV. The declared noise is drawn inside the graph
  (``RandomNormalLike`` / ``RandomUniformLike``) because the C++ passes none.
* a family's extra graphs (``ShowerSampler.extra_graphs``; edm-dit: the denoiser alone) beside the sampler.

Graphs are traced with PyTorch's TorchScript-based exporter (``dynamo=False``): it needs no extra package,
unrolls Python loops over constant grids, and maps ``torch.randn_like`` to ``RandomNormalLike``.
Inputs, outputs, shapes and units: ``docs/onnx.md``.
"""

from __future__ import annotations

import json
import math
import warnings
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from caloforge.errors import InputError
from caloforge.export.metadata import (
    METADATA_KEY,
    ONNX_OPSET,
    PAR04_DETECTOR_SLOTS,
    PAR04_GEV,
    metadata,
)
from caloforge.generate import ShowerGenerator, load_generator
from caloforge.io import atomic_output
from caloforge.sampler import BITS_FIELDS, ShowerSampler, bits_from_uniform

__all__ = [
    "CONDITION_INPUTS",
    "Par04Graph",
    "example_inputs",
    "export_checkpoint",
    "export_extras",
    "export_par04",
    "export_sampler",
    "par04_permutation",
    "write_onnx",
]

CONDITION_INPUTS = ["energy", "theta", "phi", "detector"]


def par04_permutation(generator: ShowerGenerator) -> Tensor:
    """Index (V,) int64 with ``par04_flat = caloforge_flat[:, index]``.

    Derived from ``CylindricalGeometry.to_par04`` (the one definition of the orders) applied to the voxel
    numbers, so the graph and the file converters cannot disagree.
    """
    geometry = generator.geometry
    numbers = np.arange(geometry.n_voxels, dtype=np.int64)[None]  # (1, V): caloforge index of each voxel
    return torch.from_numpy(geometry.to_par04(numbers).reshape(-1))


class Par04Graph(nn.Module):
    """Par04's one-input contract: input (N, 3 + slots) = [E GeV, phi, theta, one-hot...] float32 ->
    output (N, Nr * Nphi * Nz) float32 in GeV, r slowest and z fastest; noise drawn inside.

    The detector index is the position of the largest one-hot entry (slot k -> caloforge detector k).
    ``fixed_noise`` ({name: per-shower tensor}) replaces the random draws, only to check the graph against
    PyTorch; noise it does not name is fixed at its distribution's centre (0 normal, 0.5 uniform).
    """

    def __init__(
        self,
        sampler: ShowerSampler,
        permutation: Tensor,
        n_slots: int = PAR04_DETECTOR_SLOTS,
        fixed_noise: dict[str, Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.sampler = sampler
        self.register_buffer("permutation", permutation)
        self.n_slots = n_slots
        self.fixed_noise = fixed_noise

    def _noise(self, features: Tensor) -> list[Tensor]:
        drawn = []
        for spec in self.sampler.noise:
            # Shaped like the noise, from the input (the runtime draws ``*Like``: no shape inputs needed).
            template = features[:, :1].expand(-1, spec.size).reshape(-1, *spec.shape)  # (N, *shape)
            if self.fixed_noise is not None:
                value = self.fixed_noise.get(spec.name)
                drawn.append((spec.middle(1)[0] if value is None else value).expand_as(template))
            elif spec.distribution == "normal":
                drawn.append(torch.randn_like(template))
            elif spec.distribution == "bits":  # ONNX draws no integers: four uniform numbers a number
                fields = features[:, :1].expand(-1, spec.size * BITS_FIELDS)  # (N, 4 size)
                drawn.append(bits_from_uniform(torch.rand_like(fields).reshape(-1, *spec.shape, BITS_FIELDS)))
            else:
                drawn.append(torch.rand_like(template))
        return drawn

    def forward(self, features: Tensor) -> Tensor:
        energy = features[:, 0] * PAR04_GEV  # (N,) MeV
        phi, theta = features[:, 1], features[:, 2]  # (N,) radians, in Par04's order
        detector = torch.argmax(features[:, 3 : 3 + self.n_slots], dim=1)  # (N,) int64
        showers = self.sampler(energy, theta, phi, detector, *self._noise(features))  # (N, V) MeV
        return showers[:, self.permutation] / PAR04_GEV  # (N, V) GeV, Par04 order


# ---- writing ------------------------------------------------------------------------------------------
def write_onnx(
    module: nn.Module,
    args: tuple[Tensor, ...],
    path: str | PathLike[str],
    input_names: list[str],
    output_names: list[str],
    dynamic_batch: bool,
    meta: dict[str, Any],
) -> Path:
    """Trace ``module`` on example ``args`` into ONNX (opset ``ONNX_OPSET``, batch axis dynamic when
    ``dynamic_batch``), attach ``meta`` as the ``caloforge`` entry, write atomically; returns the path."""
    import onnx

    module.eval()
    dynamic_axes = {name: {0: "batch"} for name in [*input_names, *output_names]} if dynamic_batch else None
    target = Path(path)
    with atomic_output(target) as tmp:
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript-based exporter is the one that needs no extra package (module doc); its
            # deprecation notice, the tracer's notes about Python floats from constant grids and the
            # constant folder's note about padding are expected here and say nothing about the graph.
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", ".*feature will be removed.*", DeprecationWarning)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", ".*Constant folding.*", UserWarning)
            torch.onnx.export(
                module, args, str(tmp), dynamo=False, opset_version=ONNX_OPSET, input_names=input_names,
                output_names=output_names, dynamic_axes=dynamic_axes, do_constant_folding=True,
            )
        model = onnx.load(str(tmp))
        model.producer_name = "caloforge"
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(meta)
        onnx.checker.check_model(model)
        onnx.save_model(model, str(tmp))
    return target


def example_inputs(generator: ShowerGenerator, sampler: ShowerSampler, n: int) -> tuple[Tensor, ...]:
    """Conditions in the middle of the training ranges and centred noise, batch ``n`` (for tracing)."""
    ranges = generator.content.ranges
    energy = torch.full((n,), math.sqrt(ranges.energy_min * ranges.energy_max))
    theta = torch.full((n,), 0.5 * (ranges.theta_min + ranges.theta_max))
    phi = torch.full((n,), 0.5 * (ranges.phi_min + ranges.phi_max))
    noise = [s.middle(n) for s in sampler.noise]
    return energy, theta, phi, torch.zeros(n, dtype=torch.int64), *noise


def export_sampler(generator: ShowerGenerator, path: str | PathLike[str], **options: Any) -> Path:
    """Write the ``sampler`` graph (conditions + noise -> showers MeV, dynamic batch) to ``path``;
    ``options`` (the family's sampling options) default to the run's."""
    sampler = generator.sampler_for(**options)
    names = CONDITION_INPUTS + [spec.name for spec in sampler.noise]
    return write_onnx(sampler, example_inputs(generator, sampler, 2), path, names, ["showers"], True,
                      metadata(generator, sampler, "sampler"))


def export_extras(generator: ShowerGenerator, out: str | PathLike[str], **options: Any) -> list[Path]:
    """Write the family's extra graphs next to ``out`` as ``<out stem>.<name>.onnx``."""
    sampler = generator.sampler_for(**options)
    out = Path(out)
    return [
        write_onnx(extra.module, extra.example, out.with_name(f"{out.stem}.{name}.onnx"), extra.input_names,
                   extra.output_names, True, metadata(generator, sampler, name, **extra.metadata))
        for name, extra in sampler.extra_graphs().items()
    ]


def export_par04(
    generator: ShowerGenerator,
    path: str | PathLike[str],
    n_slots: int = PAR04_DETECTOR_SLOTS,
    fixed_noise: dict[str, Tensor] | None = None,
    **options: Any,
) -> Path:
    """Write the Geant4 Par04 ``CaloDiT-2``-compatible graph (module doc) to ``path``.

    Input ``input`` (1, 3 + n_slots) float32, output ``output`` (1, Nr * Nphi * Nz) float32 in GeV;
    the batch axis is dynamic, though Par04 always passes 1. Needs a regular geometry with Par04's uniform
    mesh. ``fixed_noise`` replaces the in-graph random draws (``Par04Graph``): only for checking the graph
    against PyTorch (the metadata records it), never for simulation.
    """
    geometry = generator.geometry
    if not geometry.is_regular:
        raise InputError(None, "geometry", f"'{geometry.name}' has per-layer binning",
                         "a regular (Nr x Nphi x Nz) readout for Par04")
    # Par04InferenceSetup::GetPositions puts cell (iR, iZ) at ((iR + 0.5) dr, (iZ + 0.5) dz): equal radial
    # bins from r = 0 and equal layers, or the C++ would place the deposits elsewhere.
    widths, depths = np.diff(geometry.r_edges_mm), np.asarray(geometry.layer_thickness_mm)
    if geometry.r_edges_mm[0] != 0 or np.ptp(widths) > 1e-6 * widths[0] or np.ptp(depths) > 1e-6 * depths[0]:
        raise InputError(None, "geometry", f"'{geometry.name}' has unequal radial bins or layers",
                         "equal radial bins from r = 0 and equal layer depths (Par04's uniform mesh)")
    n_detectors = generator.content.spec.n_detectors
    if n_slots < max(n_detectors, 1):
        raise InputError(None, "par04 detector slots", f"is {n_slots}",
                         f"at least the model's {n_detectors} detectors")
    sampler = generator.sampler_for(**options)
    graph = Par04Graph(sampler, par04_permutation(generator), n_slots, fixed_noise)
    energy, theta, phi = example_inputs(generator, sampler, 1)[:3]
    example = torch.zeros(1, 3 + n_slots)
    example[:, 0], example[:, 1], example[:, 2], example[:, 3] = energy / PAR04_GEV, phi, theta, 1.0
    n_layers, n_alpha, n_radial = geometry.grid_shape
    meta = metadata(
        generator, sampler, "par04",
        par04={
            "input": ["energy_gev", "phi", "theta", *[f"detector_{k}" for k in range(n_slots)]],
            "output_unit": "GeV",
            "mesh": {"n_rho": n_radial, "n_phi": n_alpha, "n_z": n_layers,
                     "rho_cell_mm": float(geometry.r_edges_mm[1]),
                     "z_cell_mm": geometry.layer_thickness_mm[0]},
            "model_type": "CaloDiT-2", "fixed_noise": fixed_noise is not None,
        },
    )
    return write_onnx(graph, (example,), path, ["input"], ["output"], True, meta)


def export_checkpoint(
    checkpoint: str | PathLike[str],
    out: str | PathLike[str],
    target: str = "caloforge",
    extras: bool = True,
    **options: Any,
) -> list[Path]:
    """Export a checkpoint of any family; returns the files written.

    ``target="caloforge"`` writes the sampler graph to ``out`` and (with ``extras``) the family's extra
    graphs next to it as ``<out stem>.<name>.onnx``; ``target="par04"`` writes the Par04 graph to ``out``.
    """
    if target not in ("caloforge", "par04"):
        raise InputError(None, "target", f"is '{target}'", "'caloforge' or 'par04'")
    generator = load_generator(checkpoint)
    if target == "par04":
        return [export_par04(generator, out, **options)]
    written = [export_sampler(generator, out, **options)]
    if extras:
        written += export_extras(generator, out, **options)
    return written
