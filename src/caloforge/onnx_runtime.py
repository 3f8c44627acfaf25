"""Generation with onnxruntime from a graph written by ``caloforge.export`` (no PyTorch model needed).

``load_onnx_generator(path)`` returns an ``OnnxGenerator`` with the same generation interface as
``caloforge.generate.ShowerGenerator`` (``sample``, ``sample_batches``, ``range_warnings``,
``geometry``), so ``caloforge.generate.generate_to_file`` writes the same file format from either.
It runs the ``sampler`` graph (noise drawn here from a seeded ``numpy.random.Generator``, so the same
seed gives the same showers) or the ``par04`` graph (noise drawn inside the graph by onnxruntime, so
it is not reproducible; used to check a Par04 export end to end).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from caloforge.conditioning import ConditionRanges, ConditionRequest, ConditionSpec
from caloforge.data import ShowerSet
from caloforge.errors import InputError
from caloforge.export import METADATA_FORMAT, METADATA_KEY, PAR04_GEV
from caloforge.geometry import CylindricalGeometry

__all__ = ["OnnxGenerator", "load_onnx_generator", "read_metadata"]

log = logging.getLogger(__name__)


def read_metadata(path: str | PathLike[str]) -> dict[str, Any]:
    """The ``caloforge`` metadata entry of an exported graph (see ``caloforge.export``)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        raise
    except Exception as error:  # onnx raises DecodeError and others for a file that is not ONNX
        raise InputError(path, None, f"cannot be read as an ONNX model ({type(error).__name__})",
                         "a .onnx file written by 'caloforge export'") from None
    entries = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in entries:
        raise InputError(path, f"metadata '{METADATA_KEY}'", "is missing",
                         "a graph written by 'caloforge export'")
    meta: dict[str, Any] = json.loads(entries[METADATA_KEY])
    if meta.get("format") != METADATA_FORMAT:
        raise InputError(path, f"metadata '{METADATA_KEY}'.format", f"is {meta.get('format')!r}",
                         f"{METADATA_FORMAT}")
    return meta


@dataclass
class OnnxGenerator:
    """An exported graph ready to sample; build with ``load_onnx_generator``.

    Attributes:
        path: the .onnx file.
        session: the onnxruntime ``InferenceSession``.
        metadata: the graph's ``caloforge`` metadata (kind, geometry, conditions, ranges, steps, sampler).
    """

    path: Path
    session: Any
    metadata: dict[str, Any]

    @property
    def kind(self) -> str:
        """"sampler" or "par04"."""
        return str(self.metadata["graph"])

    @property
    def geometry(self) -> CylindricalGeometry:
        return CylindricalGeometry.from_dict(self.metadata["geometry"])

    @property
    def spec(self) -> ConditionSpec:
        return ConditionSpec.from_dict(self.metadata["conditions"])

    @property
    def ranges(self) -> ConditionRanges:
        return ConditionRanges.from_dict(self.metadata["ranges"])

    @property
    def n_steps(self) -> int:
        return int(self.metadata["n_steps"])

    @property
    def sampler(self) -> str:
        return str(self.metadata["sampler"])

    @property
    def layer_dim(self) -> int:
        """Width 1 + L of the ``layer_noise`` input (the layer-energy stage's); 1 when the graph has none."""
        for graph_input in self.session.get_inputs():
            if graph_input.name == "layer_noise":
                return int(graph_input.shape[1])
        return 1

    def range_warnings(
        self, energy: ArrayLike, theta: ArrayLike | None = None, phi: ArrayLike | None = None
    ) -> list[str]:
        """Sentences about requested conditions outside the training span (empty when all inside)."""
        return ConditionRequest.of(energy, theta, phi).outside(self.ranges)

    def _check_fixed(self, n_steps: int | None, sampler: str | None) -> None:
        # Steps and sampler are baked into the graph; asking for others must not pass silently.
        if n_steps is not None and n_steps != self.n_steps:
            raise InputError(self.path, "steps", f"{n_steps} were requested",
                             f"{self.n_steps}, the number this graph was exported with")
        if sampler is not None and sampler != self.sampler:
            raise InputError(self.path, "sampler", f"'{sampler}' was requested",
                             f"'{self.sampler}', the sampler this graph was exported with")

    def run(
        self,
        noise: NDArray[np.float32],
        energy: NDArray[np.floating],
        theta: NDArray[np.floating],
        phi: NDArray[np.floating],
        detector: NDArray[np.integer],
        u: NDArray[np.floating] | None = None,
        layer_noise: NDArray[np.floating] | None = None,
    ) -> NDArray[np.float32]:
        """One call of the ``sampler`` graph: noise (N, V), conditions (N,), u (N,) uniform in [0, 1)
        (the E_tot / E_inc quantile; default 0.5), layer_noise (N, 1 + L) (the layer-energy stage's
        noise; default zeros) -> showers (N, V) MeV.

        Conditions the graph has no input for (the model does not use them) are not fed.
        """
        feeds = {
            "noise": np.ascontiguousarray(noise, dtype=np.float32),
            "energy": np.asarray(energy, dtype=np.float32),
            "theta": np.asarray(theta, dtype=np.float32),
            "phi": np.asarray(phi, dtype=np.float32),
            "detector": np.asarray(detector, dtype=np.int64),
            "u": np.full(len(noise), 0.5, np.float32) if u is None else np.asarray(u, dtype=np.float32),
            "layer_noise": np.zeros((len(noise), self.layer_dim), np.float32)
            if layer_noise is None
            else np.ascontiguousarray(layer_noise, dtype=np.float32),
        }
        # The exporter drops inputs the model does not use (e.g. theta for a normal-incidence model).
        present = {i.name for i in self.session.get_inputs()}
        feeds = {name: value for name, value in feeds.items() if name in present}
        return np.asarray(self.session.run(["showers"], feeds)[0])

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
        n_steps: int | None = None,
        sampler: str | None = None,
        generator: np.random.Generator | None = None,
        seed: int | None = None,
        batch_size: int = 1000,
        on_batch: Callable[[int], None] | None = None,
    ) -> Iterator[ShowerSet]:
        """Like ``ShowerGenerator.sample_batches``: one ``ShowerSet`` (MeV) per batch.

        ``n_steps``/``sampler`` must be left out or equal the graph's. Noise comes from ``generator``
        (or a fresh ``numpy.random.default_rng(seed)``, seed default 0).
        """
        self._check_fixed(n_steps, sampler)
        request = ConditionRequest.of(energy_mev, theta, phi, detector)
        energy, theta_a, phi_a, detector_a, n = (
            request.energy, request.theta, request.phi, request.detector, len(request)
        )
        n_detectors = self.spec.n_detectors
        if detector_a.min() < 0 or detector_a.max() >= n_detectors:
            raise InputError(None, "detector", f"has indices {detector_a.min()}..{detector_a.max()}",
                             f"indices 0..{n_detectors - 1} (the detectors the model was trained on)")
        for problem in request.outside(self.ranges):
            log.warning("%s; the model extrapolates there", problem)
        rng = generator if generator is not None else np.random.default_rng(0 if seed is None else int(seed))
        n_voxels = self.geometry.n_voxels
        inputs = {i.name for i in self.session.get_inputs()}
        needs_u, layer_dim = "u" in inputs, self.layer_dim if "layer_noise" in inputs else 0
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            part = slice(start, stop)
            if self.kind == "par04":
                showers = self.run_par04(energy[part], theta_a[part], phi_a[part], detector_a[part])
            else:
                noise = rng.standard_normal((stop - start, n_voxels), dtype=np.float32)
                # Draw as the PyTorch path does: the layer stage's noise after the DiT's; u only for
                # graphs that rescale E_tot alone, so that without either the showers do not depend on
                # the batch size.
                layer_noise = (
                    rng.standard_normal((stop - start, layer_dim), dtype=np.float32) if layer_dim else None
                )
                u = rng.random(stop - start, dtype=np.float32) if needs_u else None
                showers = self.run(
                    noise, energy[part], theta_a[part], phi_a[part], detector_a[part], u, layer_noise
                )
            yield request.showers(showers, part, self.geometry, str(self.path))
            if on_batch is not None:
                on_batch(stop - start)

    def sample(
        self,
        energy_mev: ArrayLike,
        theta: ArrayLike | None = None,
        phi: ArrayLike | None = None,
        detector: ArrayLike | None = None,
        generator: np.random.Generator | None = None,
        seed: int | None = None,
        batch_size: int = 1000,
    ) -> ShowerSet:
        """One shower per entry of ``energy_mev`` (N,) MeV, as ``ShowerGenerator.sample``."""
        return ShowerSet.concatenate(list(self.sample_batches(
            energy_mev, theta, phi, detector, generator=generator, seed=seed, batch_size=batch_size,
        )))


def load_onnx_generator(
    path: str | PathLike[str], threads: int | None = None, providers: list[str] | None = None
) -> OnnxGenerator:
    """An ``OnnxGenerator`` for a ``sampler`` or ``par04`` graph written by ``caloforge export``.

    ``threads`` sets onnxruntime's intra-op threads (default: its own choice); ``providers`` its execution
    providers (default: CUDA when available, then CPU).
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    meta = read_metadata(path)
    if meta.get("graph") not in ("sampler", "par04"):
        raise InputError(path, f"metadata '{METADATA_KEY}'.graph", f"is {meta.get('graph')!r}",
                         "a 'sampler' or 'par04' graph (the denoiser graph alone does not generate)")
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    if providers is None:
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    session = ort.InferenceSession(str(path), options, providers=providers)
    return OnnxGenerator(path, session, meta)
