"""ONNX export of a trained generator: the denoiser, the whole sampler, and Geant4 Par04's contract.

Three graphs (inputs, outputs, shapes and units are documented in ``docs/onnx.md``):

* ``denoiser``: D(x; sigma | conditions) with a dynamic batch axis, for applications that run their own
  sampler loop (the noise-level grid is in the metadata).
* ``sampler``: standard normal noise + conditions (energy MeV, theta, phi radians, detector index) ->
  showers in MeV, with the condition encoding, a fixed number of sampler steps (unrolled) and the inverse
  preprocessing all inside, so one ``Run`` generates a batch.
* ``par04``: what Geant4's ``examples/extended/parameterisations/Par04`` feeds a "CaloDiT-2" model
  (``src/Par04InferenceSetup.cc``, ``GetEnergies``; ``src/Par04OnnxInference.cc``, ``RunInference``):
  ONE float32 input of shape (1, K) = [E / GeV, phi, theta, detector one-hot (5 slots)], the angles being
  ``G4ThreeVector::phi()`` / ``theta()`` of the momentum direction in radians; the C++ reads the FIRST
  output as Nr x Nphi x Nz floats, places them looping r, then phi, then z fastest
  (``GetPositions``), and multiplies them by 1000, so the graph returns GeV. The noise is drawn inside
  the graph (``RandomNormalLike``) because the C++ passes none.

Every file carries a ``caloforge`` metadata entry (JSON: graph kind, geometry, condition spec, training
ranges, sampler, steps, sigma grid) that ``caloforge.onnx_runtime`` reads back. The graphs are traced
with PyTorch's TorchScript-based exporter (``dynamo=False``): it needs no extra package, unrolls the
sampler's Python loop over its fixed grid, and maps ``torch.randn_like`` to ``RandomNormalLike``.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from caloforge.diffusion import get_sampler
from caloforge.errors import CaloforgeError, InputError
from caloforge.generate import ShowerGenerator, load_generator
from caloforge.io import atomic_output
from caloforge.preprocess import LayerEnergies
from caloforge.training import shape_condition

__all__ = [
    "DETERMINISTIC_SAMPLERS",
    "METADATA_FORMAT",
    "METADATA_KEY",
    "ONNX_OPSET",
    "PAR04_DETECTOR_SLOTS",
    "DenoiserGraph",
    "Par04Graph",
    "SamplerGraph",
    "check_sampler_export",
    "export_checkpoint",
    "export_denoiser",
    "export_par04",
    "export_sampler",
    "par04_permutation",
    "write_onnx",
]

ONNX_OPSET = 17  # onnxruntime >= 1.14 runs it; the TorchScript exporter supports it fully
METADATA_KEY = "caloforge"
METADATA_FORMAT = 1
# Par04InferenceSetup.cc (CaloDiT-2): genVector.assign(8, 0) = E, phi, theta + 5 detector slots
# (Par04SiW, Par04SciPb, ODD, FCCeeCLD, one free slot for an adapted detector).
PAR04_DETECTOR_SLOTS = 5
PAR04_GEV = 1000.0  # MeV per GeV: the C++ multiplies the output by 1000 (GeV -> Geant4's MeV)


# A sampler that draws noise per step cannot be reproduced by a graph fed only the initial noise.
DETERMINISTIC_SAMPLERS: tuple[str, ...] = ("heun", "euler", "dpmpp_2m", "dpmpp_2m_logsnr")


def _sampler(name: str) -> Callable[..., Tensor]:
    if name not in DETERMINISTIC_SAMPLERS:
        raise InputError(
            None, "sampler", f"is '{name}'",
            f"one of {', '.join(DETERMINISTIC_SAMPLERS)} (deterministic: an exported graph gets only the "
            "initial noise)",
        )
    return get_sampler(name)


# ---- the graphs as torch modules ------------------------------------------------------------------------
def _layer_dim(layer_energies: LayerEnergies | None) -> int:
    """Width of a graph's layer input: 1 + L with a layer-energy stage, else 1 (an input the graph drops)."""
    return 1 if layer_energies is None else layer_energies.dim


class DenoiserGraph(nn.Module):
    """D(x; sigma | conditions): x (N, V) model space, sigma (N,), energy (N,) MeV, theta/phi (N,) rad,
    detector (N,) int64, layers (N, 1 + L) the standardised layer-energy vector the DiT is conditioned on
    (read only by a run with a layer-energy stage, else absent from the graph) -> denoised x (N, V)."""

    def __init__(self, generator: ShowerGenerator) -> None:
        super().__init__()
        self.denoiser = generator.denoiser
        self.encoder = generator.encoder
        self.has_layers = generator.layer_energies is not None

    def forward(
        self, x: Tensor, sigma: Tensor, energy: Tensor, theta: Tensor, phi: Tensor, detector: Tensor,
        layers: Tensor,
    ) -> Tensor:
        cond = self.encoder(energy, theta, phi, detector)
        return self.denoiser(x, sigma, shape_condition(cond, layers if self.has_layers else None))


class SamplerGraph(nn.Module):
    """Noise -> showers: noise (N, V) standard normal, energy (N,) MeV, theta/phi (N,) radians,
    detector (N,) int64, u (N,) uniform in [0, 1), layer_noise (N, 1 + L) standard normal -> showers
    (N, V) MeV in caloforge's flat voxel order.

    Runs ``sampler`` over ``generator.sigmas(n_steps)`` starting at ``noise * sigmas[0]`` and inverts the
    preprocessing. With a layer-energy stage (``generator.layer_denoiser``) it first runs the same sampler
    over that stage from ``layer_noise * sigmas[0]``, conditions the DiT on the draw and rescales each
    shower's layers to it;
    otherwise, when the run models E_tot / E_inc (``generator.energy_ratio``), it rescales each shower to
    the ratio drawn at quantile ``u``. The same arithmetic as ``ShowerGenerator.sample`` given the same
    noise; the inputs a run does not use are absent from the exported graph.
    """

    def __init__(self, generator: ShowerGenerator, n_steps: int, sampler: str) -> None:
        super().__init__()
        self.denoiser = generator.denoiser
        self.encoder = generator.encoder
        self.transform = generator.transform
        self.energy_ratio = generator.energy_ratio
        self.layer_denoiser = generator.layer_denoiser
        self.layer_energies = generator.layer_energies
        self.sampler = _sampler(sampler)
        # A plain attribute, not a buffer: the grid is a constant the tracer folds into the graph.
        self.sigmas = generator.sigmas(n_steps).detach().clone()

    @property
    def layer_dim(self) -> int:
        """The width of ``layer_noise`` (``_layer_dim``)."""
        return _layer_dim(self.layer_energies)

    def forward(
        self, noise: Tensor, energy: Tensor, theta: Tensor, phi: Tensor, detector: Tensor, u: Tensor,
        layer_noise: Tensor,
    ) -> Tensor:
        cond = self.encoder(energy, theta, phi, detector)  # (N, C)
        start = float(self.sigmas[0])
        y = None
        if self.layer_denoiser is not None:
            y = self.sampler(self.layer_denoiser, layer_noise * start, self.sigmas, cond)  # (N, 1 + L)
        z = self.sampler(self.denoiser, noise * start, self.sigmas, shape_condition(cond, y))  # (N, V)
        showers = self.transform.inverse(z, energy)  # (N, V) MeV
        if y is not None and self.layer_energies is not None:
            showers = self.layer_energies.rescale(showers, energy, y)
        elif self.energy_ratio is not None:
            showers = self.energy_ratio.rescale(showers, energy, u)
        return showers


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
    ``fixed_noise`` (V,) replaces the random draw, only to check the graph against PyTorch.
    """

    def __init__(
        self,
        sampler: SamplerGraph,
        permutation: Tensor,
        n_slots: int = PAR04_DETECTOR_SLOTS,
        fixed_noise: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.sampler = sampler
        self.register_buffer("permutation", permutation)
        self.n_slots = n_slots
        self.n_voxels = int(permutation.numel())
        self.fixed_noise = fixed_noise

    def forward(self, features: Tensor) -> Tensor:
        energy = features[:, 0] * PAR04_GEV  # (N,) MeV
        phi, theta = features[:, 1], features[:, 2]  # (N,) radians, in Par04's order
        detector = torch.argmax(features[:, 3 : 3 + self.n_slots], dim=1)  # (N,) int64
        # Noise shaped like the output, drawn by the runtime (RandomNormalLike): the C++ passes none.
        template = features[:, :1].expand(-1, self.n_voxels)
        layer_template = features[:, :1].expand(-1, self.sampler.layer_dim)
        if self.fixed_noise is None:
            noise = torch.randn_like(template)  # (N, V)
            u = torch.rand_like(energy)  # (N,) quantile of E_tot / E_inc (RandomUniformLike)
            layer_noise = torch.randn_like(layer_template)  # (N, 1 + L)
        else:
            noise, u = self.fixed_noise.expand_as(template), torch.full_like(energy, 0.5)
            layer_noise = torch.zeros_like(layer_template)
        showers = self.sampler(noise, energy, theta, phi, detector, u, layer_noise)  # (N, V) MeV
        return showers[:, self.permutation] / PAR04_GEV  # (N, V) GeV, Par04 order


# ---- writing ------------------------------------------------------------------------------------------
def _metadata(generator: ShowerGenerator, graph: str, **extra: Any) -> dict[str, Any]:
    content = generator.content
    return {
        "format": METADATA_FORMAT,
        "graph": graph,
        "geometry": content.geometry.to_dict(),
        "conditions": content.spec.to_dict(),
        "ranges": content.ranges.to_dict(),
        "training_steps": content.step,
        **extra,
    }


def write_onnx(
    module: nn.Module,
    args: tuple[Tensor, ...],
    path: str | PathLike[str],
    input_names: list[str],
    output_names: list[str],
    dynamic_batch: bool,
    metadata: dict[str, Any],
) -> Path:
    """Trace ``module`` on example ``args`` into ONNX (opset ``ONNX_OPSET``, batch axis dynamic when
    ``dynamic_batch``), attach ``metadata`` as the ``caloforge`` entry, write atomically; returns the path."""
    import onnx

    module.eval()
    dynamic_axes = (
        {name: {0: "batch"} for name in [*input_names, *output_names]} if dynamic_batch else None
    )
    target = Path(path)
    with atomic_output(target) as tmp:
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript-based exporter is the one that needs no extra package (module doc); its
            # deprecation notice, the tracer's notes about Python floats from the constant sigma grid and
            # the constant folder's note about padding are expected here and say nothing about the graph.
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
        entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
        onnx.checker.check_model(model)
        onnx.save_model(model, str(tmp))
    return target


def _example_conditions(generator: ShowerGenerator, n: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    ranges = generator.content.ranges
    energy = torch.full((n,), math.sqrt(ranges.energy_min * ranges.energy_max))
    theta = torch.full((n,), 0.5 * (ranges.theta_min + ranges.theta_max))
    phi = torch.full((n,), 0.5 * (ranges.phi_min + ranges.phi_max))
    return energy, theta, phi, torch.zeros(n, dtype=torch.int64)


def export_denoiser(generator: ShowerGenerator, path: str | PathLike[str]) -> Path:
    """Write the ``denoiser`` graph (dynamic batch) to ``path``; see ``docs/onnx.md``."""
    n_voxels = generator.geometry.n_voxels
    args = (torch.zeros(2, n_voxels), torch.ones(2), *_example_conditions(generator, 2),
            torch.zeros(2, _layer_dim(generator.layer_energies)))
    sigmas = generator.sigmas().tolist()
    edm = generator.denoiser.config
    meta = _metadata(
        generator, "denoiser", sigmas=sigmas, sigma_data=edm.sigma_data, sigma_min=edm.sigma_min,
        sigma_max=edm.sigma_max, rho=edm.rho, preprocess=generator.content.preprocessor.to_dict(),
    )
    return write_onnx(
        DenoiserGraph(generator), args, path, ["x", "sigma", "energy", "theta", "phi", "detector", "layers"],
        ["denoised"], True, meta,
    )


def _sampler_graph(generator: ShowerGenerator, n_steps: int | None, sampler: str | None) -> SamplerGraph:
    sample = generator.content.config.sample
    n_steps = int(n_steps or sample.n_steps)
    if n_steps < 1:
        raise InputError(None, "steps", f"is {n_steps}", "at least 1")
    return SamplerGraph(generator, n_steps, sampler or sample.sampler)


def export_sampler(
    generator: ShowerGenerator,
    path: str | PathLike[str],
    n_steps: int | None = None,
    sampler: str | None = None,
) -> Path:
    """Write the ``sampler`` graph (noise + conditions -> showers MeV, dynamic batch) to ``path``.

    ``n_steps`` and ``sampler`` default to the run's ``sample`` config; only deterministic samplers
    (``DETERMINISTIC_SAMPLERS``) can be exported.
    """
    graph = _sampler_graph(generator, n_steps, sampler)
    n_voxels = generator.geometry.n_voxels
    args = (
        torch.zeros(2, n_voxels), *_example_conditions(generator, 2), torch.full((2,), 0.5),
        torch.zeros(2, graph.layer_dim),
    )
    meta = _metadata(
        generator, "sampler", sampler=sampler or generator.content.config.sample.sampler,
        n_steps=len(graph.sigmas) - 1, sigmas=graph.sigmas.tolist(),
    )
    return write_onnx(
        graph, args, path, ["noise", "energy", "theta", "phi", "detector", "u", "layer_noise"], ["showers"],
        True, meta,
    )


def export_par04(
    generator: ShowerGenerator,
    path: str | PathLike[str],
    n_steps: int | None = None,
    sampler: str | None = None,
    n_slots: int = PAR04_DETECTOR_SLOTS,
    fixed_noise: Tensor | None = None,
) -> Path:
    """Write the Geant4 Par04 ``CaloDiT-2``-compatible graph (module doc) to ``path``.

    Input ``input`` (1, 3 + n_slots) float32, output ``output`` (1, Nr * Nphi * Nz) float32 in GeV;
    the batch axis is dynamic, though Par04 always passes 1. Needs a regular geometry.
    ``fixed_noise`` (V,) replaces the in-graph random draw: only for checking the graph against PyTorch
    (the metadata records it), never for simulation.
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
    graph = Par04Graph(
        _sampler_graph(generator, n_steps, sampler), par04_permutation(generator), n_slots, fixed_noise
    )
    energy, theta, phi, _ = _example_conditions(generator, 1)
    example = torch.zeros(1, 3 + n_slots)
    example[:, 0], example[:, 1], example[:, 2], example[:, 3] = energy / PAR04_GEV, phi, theta, 1.0
    n_layers, n_alpha, n_radial = geometry.grid_shape
    meta = _metadata(
        generator, "par04", sampler=sampler or generator.content.config.sample.sampler,
        n_steps=len(graph.sampler.sigmas) - 1, sigmas=graph.sampler.sigmas.tolist(),
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
    n_steps: int | None = None,
    sampler: str | None = None,
    denoiser: bool = True,
) -> list[Path]:
    """Export a checkpoint; returns the files written.

    ``target="caloforge"`` writes the sampler graph to ``out`` and (with ``denoiser``) the denoiser graph
    next to it as ``<out stem>.denoiser.onnx``; ``target="par04"`` writes the Par04 graph to ``out``.
    """
    if target not in ("caloforge", "par04"):
        raise InputError(None, "target", f"is '{target}'", "'caloforge' or 'par04'")
    generator = load_generator(checkpoint)
    out = Path(out)
    if target == "par04":
        return [export_par04(generator, out, n_steps, sampler)]
    written = [export_sampler(generator, out, n_steps, sampler)]
    if denoiser:
        written.append(export_denoiser(generator, out.with_name(f"{out.stem}.denoiser.onnx")))
    return written


def check_sampler_export(
    generator: ShowerGenerator | str | PathLike[str],
    path: str | PathLike[str],
    n: int = 4,
    seed: int = 0,
    tolerance: float = 1e-3,
) -> float:
    """Run an exported ``sampler`` graph with onnxruntime and its PyTorch twin on the same noise.

    Returns the largest absolute difference divided by the largest deposit (MeV / MeV) over ``n``
    showers spread over the training energy range; raises ``CaloforgeError`` above ``tolerance``.
    """
    from caloforge.onnx_runtime import load_onnx_generator

    if not isinstance(generator, ShowerGenerator):
        generator = load_generator(generator)
    exported = load_onnx_generator(path, providers=["CPUExecutionProvider"])
    graph = SamplerGraph(generator, exported.n_steps, exported.sampler).eval()
    ranges = generator.content.ranges
    rng = np.random.default_rng(seed)
    energy = np.exp(rng.uniform(math.log(ranges.energy_min), math.log(ranges.energy_max), n))
    theta = rng.uniform(ranges.theta_min, ranges.theta_max, n)
    phi = rng.uniform(ranges.phi_min, ranges.phi_max, n)
    detector = rng.integers(0, generator.content.spec.n_detectors, n)
    noise = rng.standard_normal((n, generator.geometry.n_voxels), dtype=np.float32)
    u = rng.random(n, dtype=np.float32)
    layer_noise = rng.standard_normal((n, graph.layer_dim), dtype=np.float32)
    with torch.no_grad():
        expected = graph(
            torch.from_numpy(noise), *(torch.from_numpy(a.astype(np.float32)) for a in (energy, theta, phi)),
            torch.from_numpy(detector.astype(np.int64)), torch.from_numpy(u), torch.from_numpy(layer_noise),
        ).numpy()
    got = exported.run(noise, energy, theta, phi, detector, u, layer_noise)
    scale = max(float(np.abs(expected).max()), 1e-30)
    difference = float(np.abs(got - expected).max()) / scale
    if not difference <= tolerance:
        raise CaloforgeError(
            f"{path}: onnxruntime and PyTorch differ by {difference:.3g} of the largest deposit "
            f"(tolerance {tolerance:g}); the export is not faithful"
        )
    return difference
