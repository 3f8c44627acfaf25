"""Generation with onnxruntime from a graph written by ``caloforge.export`` (no PyTorch model, no Lightning).

``load_onnx_generator(path)`` returns an ``OnnxGenerator`` with the generation interface of
``caloforge.generate.ShowerGenerator`` (``sample``, ``sample_batches``, ``range_warnings``, ``geometry``),
so ``caloforge.generate.generate_to_file`` writes the same file format from either. It runs a ``sampler``
graph, drawing the noise its metadata declares from a seeded ``numpy.random.Generator`` (same seed, same
showers), or a ``par04`` graph (noise drawn inside the graph by onnxruntime: not reproducible; used to
check a Par04 export end to end). ``check_export`` compares a sampler graph with its PyTorch twin.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from caloforge.conditioning import ConditionRanges, ConditionRequest, ConditionSpec
from caloforge.data import ShowerSet
from caloforge.errors import CaloforgeError, InputError
from caloforge.export.metadata import METADATA_FORMAT, METADATA_KEY, PAR04_GEV
from caloforge.geometry import CylindricalGeometry
from caloforge.sampler import NoiseSpec

__all__ = ["OnnxGenerator", "check_export", "load_onnx_generator", "read_metadata", "summing_scatters"]

log = logging.getLogger(__name__)


def _format1(meta: dict[str, Any], inputs: dict[str, list[Any]]) -> dict[str, Any]:
    """Format-1 metadata (edm-dit graphs before the family contract) in format 2's layout."""
    context = {key: meta[key] for key in ("geometry", "conditions", "ranges")}
    noise = [NoiseSpec("noise", (CylindricalGeometry.from_dict(meta["geometry"]).n_voxels,))]
    if "layer_noise" in inputs:
        noise.append(NoiseSpec("layer_noise", (int(inputs["layer_noise"][1]),)))
    if "u" in inputs:
        noise.append(NoiseSpec("u", (), "uniform"))
    return {**meta, "format": 2, "family": "edm-dit", "context": context,
            "noise": [spec.to_dict() for spec in noise],
            "options": {"n_steps": meta["n_steps"], "sampler": meta["sampler"]}}


def _load_model(path: str | PathLike[str]) -> Any:
    """The ONNX model at ``path`` (external tensors not loaded); ``InputError`` if it is not one."""
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        raise
    except Exception as error:  # onnx raises DecodeError and others for a file that is not ONNX
        raise InputError(path, None, f"cannot be read as an ONNX model ({type(error).__name__})",
                         "a .onnx file written by 'caloforge export'") from None


def _metadata(model: Any, path: str | PathLike[str]) -> dict[str, Any]:
    """``read_metadata`` of an already loaded ``model`` (``path`` names it in errors)."""
    entries = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in entries:
        raise InputError(path, f"metadata '{METADATA_KEY}'", "is missing",
                         "a graph written by 'caloforge export'")
    meta: dict[str, Any] = json.loads(entries[METADATA_KEY])
    if meta.get("format") == 1:
        inputs = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
        return _format1(meta, inputs)
    if meta.get("format") != METADATA_FORMAT:
        raise InputError(path, f"metadata '{METADATA_KEY}'.format", f"is {meta.get('format')!r}",
                         f"1 or {METADATA_FORMAT}")
    return meta


def read_metadata(path: str | PathLike[str]) -> dict[str, Any]:
    """The ``caloforge`` metadata entry of an exported graph (``caloforge.export.metadata``), format 2."""
    return _metadata(_load_model(path), path)


@dataclass
class OnnxGenerator:
    """An exported graph ready to sample; build with ``load_onnx_generator``.

    Attributes:
        path: the .onnx file.
        session: the onnxruntime ``InferenceSession``.
        metadata: the graph's ``caloforge`` metadata (format 2).
    """

    path: Path
    session: Any
    metadata: dict[str, Any]

    # geometry, spec, ranges, noise and the graph's inputs are read from the metadata and the session once
    # (rebuilding the geometry cost 0.15 ms a call, a fifth of a shower at batch 1)

    @property
    def kind(self) -> str:
        """"sampler" or "par04"."""
        return str(self.metadata["graph"])

    @cached_property
    def geometry(self) -> CylindricalGeometry:
        return CylindricalGeometry.from_dict(self.metadata["context"]["geometry"])

    @cached_property
    def spec(self) -> ConditionSpec:
        return ConditionSpec.from_dict(self.metadata["context"]["conditions"])

    @cached_property
    def ranges(self) -> ConditionRanges:
        return ConditionRanges.from_dict(self.metadata["context"]["ranges"])

    @cached_property
    def noise(self) -> tuple[NoiseSpec, ...]:
        """The noise the ``sampler`` graph takes after the conditions, in drawing order."""
        return tuple(NoiseSpec.from_dict(spec) for spec in self.metadata["noise"])

    @property
    def options(self) -> dict[str, Any]:
        """The sampling options the graph was exported with (fixed in it)."""
        return dict(self.metadata["options"])

    def range_warnings(
        self, energy: ArrayLike, theta: ArrayLike | None = None, phi: ArrayLike | None = None
    ) -> list[str]:
        """Sentences about requested conditions outside the training span (empty when all inside)."""
        return ConditionRequest.of(energy, theta, phi).outside(self.ranges)

    def _check_fixed(self, options: dict[str, Any]) -> None:
        # Sampling options are baked into the graph; asking for others must not pass silently.
        fixed = self.options
        for name, value in options.items():
            if value is not None and fixed.get(name) != value:
                raise InputError(self.path, name, f"{value!r} was requested",
                                 f"{fixed.get(name)!r}, what this graph was exported with")

    def run(
        self, energy: NDArray[np.floating], theta: NDArray[np.floating], phi: NDArray[np.floating],
        detector: NDArray[np.integer], *noise: NDArray[Any],
    ) -> NDArray[np.float32]:
        """One call of the ``sampler`` graph: conditions (N,) and the declared noise -> showers (N, V) MeV.

        Inputs the graph does not have (conditions or noise the model does not use) are not fed.
        """
        feeds = {
            "energy": np.asarray(energy, dtype=np.float32),
            "theta": np.asarray(theta, dtype=np.float32),
            "phi": np.asarray(phi, dtype=np.float32),
            "detector": np.asarray(detector, dtype=np.int64),
            **{spec.name: np.ascontiguousarray(value, dtype=spec.numpy_dtype)
               for spec, value in zip(self.noise, noise, strict=True)},
        }
        present = self._inputs
        return np.asarray(self.session.run(["showers"], {k: v for k, v in feeds.items() if k in present})[0])

    @cached_property
    def _inputs(self) -> frozenset[str]:
        """The graph's input names (conditions or noise the model does not use are pruned at export)."""
        return frozenset(i.name for i in self.session.get_inputs())

    def run_par04(
        self, energy: NDArray[np.floating], theta: NDArray[np.floating], phi: NDArray[np.floating],
        detector: NDArray[np.integer],
    ) -> NDArray[np.float32]:
        """One call of the ``par04`` graph, fed as Par04's C++ does -> showers (N, V) MeV, caloforge order."""
        n_slots = len(self.metadata["par04"]["input"]) - 3
        features = np.zeros((energy.size, 3 + n_slots), dtype=np.float32)
        features[:, 0] = energy / PAR04_GEV
        features[:, 1], features[:, 2] = phi, theta
        features[np.arange(energy.size), 3 + np.asarray(detector, dtype=np.int64)] = 1.0
        # The C++ reads the first output and scales it by 1000 (GeV -> MeV); (N, V) in Par04 order.
        out = np.asarray(self.session.run(None, {"input": features})[0]) * PAR04_GEV
        geometry = self.geometry
        return geometry.from_par04(out.reshape(-1, *geometry.grid_shape[::-1])).astype(np.float32)

    def sample_batches(
        self,
        energy_mev: ArrayLike,
        theta: ArrayLike | None = None,
        phi: ArrayLike | None = None,
        detector: ArrayLike | None = None,
        *,
        generator: np.random.Generator | None = None,
        seed: int | None = None,
        batch_size: int = 1000,
        on_batch: Callable[[int], None] | None = None,
        warn_outside: bool = True,
        **options: Any,
    ) -> Iterator[ShowerSet]:
        """Like ``ShowerGenerator.sample_batches``: one ``ShowerSet`` (MeV) per batch.

        ``options`` must be left out or equal the graph's. Noise comes from ``generator`` (or a fresh
        ``numpy.random.default_rng(seed)``, seed default 0), spec by spec for each batch.
        """
        self._check_fixed(options)
        detector = self.ranges.own_detector if detector is None else detector
        request = ConditionRequest.of(energy_mev, theta, phi, detector)
        self.spec.check_detectors(request.detector)
        if warn_outside:
            for problem in request.outside(self.ranges):
                log.warning("%s; the model extrapolates there", problem)
        rng = generator if generator is not None else np.random.default_rng(0 if seed is None else int(seed))
        specs, geometry = self.noise, self.geometry
        for start in range(0, len(request), batch_size):
            part = slice(start, min(start + batch_size, len(request)))
            conditions = (
                request.energy[part], request.theta[part], request.phi[part], request.detector[part]
            )
            if self.kind == "par04":
                showers = self.run_par04(*conditions)
            else:
                showers = self.run(*conditions, *(s.draw_numpy(part.stop - start, rng) for s in specs))
            yield request.showers(showers, part, geometry, str(self.path))
            if on_batch is not None:
                on_batch(part.stop - start)

    def sample(
        self,
        energy_mev: ArrayLike,
        theta: ArrayLike | None = None,
        phi: ArrayLike | None = None,
        detector: ArrayLike | None = None,
        *,
        generator: np.random.Generator | None = None,
        seed: int | None = None,
        batch_size: int = 1000,
        **options: Any,
    ) -> ShowerSet:
        """One shower per entry of ``energy_mev`` (N,) MeV, as ``ShowerGenerator.sample``."""
        return ShowerSet.concatenate(list(self.sample_batches(
            energy_mev, theta, phi, detector, generator=generator, seed=seed, batch_size=batch_size,
            **options,
        )))


def summing_scatters(model: Any) -> bool:
    """Whether an ONNX ``model`` (``onnx.ModelProto``) has a ScatterND node with a reduction (its updates may
    collide)."""
    return any(node.op_type == "ScatterND" and any(a.name == "reduction" and a.s not in (b"", b"none")
                                                   for a in node.attribute) for node in model.graph.node)


def load_onnx_generator(
    path: str | PathLike[str], threads: int | None = None, providers: list[str] | None = None
) -> OnnxGenerator:
    """An ``OnnxGenerator`` for a ``sampler`` or ``par04`` graph written by ``caloforge export``.

    ``threads`` sets onnxruntime's intra-op threads (default: its own choice); ``providers`` its execution
    providers (default: CUDA when available, then CPU). A graph with ScatterND adds (``summing_scatters``:
    the mdma-gan family's per-shower and per-cell sums) always runs on one intra-op thread: onnxruntime
    1.32's CPU kernel splits the updates between threads and loses some of those that add into the same
    row (the mdma-gan sampler's output changed between calls on the same inputs, by up to 0.67 of the
    largest cell, with two threads; never with one).
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    model = _load_model(path)  # once: its metadata, then its nodes
    meta = _metadata(model, path)
    if meta.get("graph") not in ("sampler", "par04"):
        raise InputError(path, f"metadata '{METADATA_KEY}'.graph", f"is {meta.get('graph')!r}",
                         "a 'sampler' or 'par04' graph (a family's extra graph alone does not generate)")
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    if summing_scatters(model):  # see the docstring
        options.intra_op_num_threads = 1
    if providers is None:
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    session = ort.InferenceSession(str(path), options, providers=providers)
    return OnnxGenerator(path, session, meta)


def check_export(
    checkpoint: Any, path: str | PathLike[str], n: int = 4, seed: int = 0, tolerance: float = 1e-3
) -> float:
    """Run an exported ``sampler`` graph with onnxruntime and the checkpoint's PyTorch sampler (a
    ``ShowerGenerator`` or a checkpoint path) on the same conditions and noise.

    Returns the largest absolute difference divided by the largest deposit (MeV / MeV) over ``n`` showers
    spread over the training ranges; raises ``CaloforgeError`` above ``tolerance``.
    """
    import torch

    from caloforge.generate import ShowerGenerator, load_generator

    generator = checkpoint if isinstance(checkpoint, ShowerGenerator) else load_generator(checkpoint)
    exported = load_onnx_generator(path, providers=["CPUExecutionProvider"])
    sampler = generator.sampler_for(**exported.options)
    ranges = generator.content.ranges
    rng = np.random.default_rng(seed)
    energy = np.exp(rng.uniform(math.log(ranges.energy_min), math.log(ranges.energy_max), n))
    theta = rng.uniform(ranges.theta_min, ranges.theta_max, n)
    phi = rng.uniform(ranges.phi_min, ranges.phi_max, n)
    detector = rng.integers(0, generator.content.spec.n_detectors, n)
    noise = [spec.draw_numpy(n, rng) for spec in sampler.noise]
    with torch.no_grad():
        expected = sampler(
            *(torch.from_numpy(a.astype(np.float32)) for a in (energy, theta, phi)),
            torch.from_numpy(detector.astype(np.int64)), *(torch.from_numpy(x) for x in noise),
        ).numpy()
    got = exported.run(energy, theta, phi, detector, *noise)
    scale = max(float(np.abs(expected).max()), 1e-30)
    difference = float(np.abs(got - expected).max()) / scale
    if not difference <= tolerance:
        raise CaloforgeError(
            f"{path}: onnxruntime and PyTorch differ by {difference:.3g} of the largest deposit "
            f"(tolerance {tolerance:g}); the export is not faithful"
        )
    return difference
