"""Checkpoint -> showers for every family: ``load_generator(path).sample(...)`` returns a ``ShowerSet`` (MeV).

The family's sampler (``caloforge.sampler.ShowerSampler``) is a deterministic function of the conditions
and its declared noise; this module draws that noise from one seeded CPU ``torch.Generator``, spec by spec
and batch by batch, so the same seed gives the same showers on every device. No Lightning is imported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from numpy.typing import ArrayLike

from caloforge.checkpoint import CheckpointContent, read_checkpoint
from caloforge.conditioning import ConditionRequest
from caloforge.data import ShowerSet
from caloforge.errors import InputError
from caloforge.families import Family, get_family
from caloforge.geometry import CylindricalGeometry
from caloforge.sampler import ShowerSampler

if TYPE_CHECKING:
    from caloforge.calibration import CalibrationConfig, CellCalibration

__all__ = ["ShowerGenerator", "calibrate_checkpoint", "generate_to_file", "load_generator"]

log = logging.getLogger(__name__)


@dataclass
class ShowerGenerator:
    """A trained model ready to sample; build with ``load_generator``.

    Attributes:
        content: what the checkpoint holds (family, config, context, sampler weights).
        family: the model family.
        sampler: the sampler with the run's default options, in eval mode on ``device``.
        readout: the readout it voxelises onto when not the training one (``load_generator``).
    """

    content: CheckpointContent
    family: Family
    sampler: ShowerSampler
    readout: CylindricalGeometry | None = None
    _built: dict[tuple[tuple[str, Any], ...], ShowerSampler] = field(default_factory=dict, repr=False)

    @property
    def geometry(self) -> CylindricalGeometry:
        """The readout the showers come on: the training one, or ``load_generator``'s ``readout``."""
        return self.content.geometry if self.readout is None else self.readout

    @property
    def device(self) -> torch.device:
        """Where the model runs (``load_generator``'s ``device``)."""
        return next(self.sampler.parameters()).device

    def to(self, device: torch.device | str) -> ShowerGenerator:
        """Moves the model to ``device`` ("cpu", "cuda", ...); returns self. Seeds give the same showers
        on every device up to float arithmetic, because all random numbers are drawn on the CPU."""
        for sampler in (self.sampler, *self._built.values()):
            sampler.to(device)
        return self

    def sampler_for(self, **options: Any) -> ShowerSampler:
        """The sampler built with ``options`` (e.g. ``n_steps=8, sampler="dpmpp_2m"``; ``None`` values mean
        the run's default), weights loaded, eval mode, on this generator's device."""
        given = tuple(sorted((k, v) for k, v in options.items() if v is not None))
        if not given:
            return self.sampler
        if given not in self._built:
            self._built[given] = _load_sampler(self.content, self.family, dict(given),
                                               self.readout).to(self.device)
        return self._built[given]

    def range_warnings(
        self, energy: ArrayLike, theta: ArrayLike | None = None, phi: ArrayLike | None = None
    ) -> list[str]:
        """Sentences about requested conditions outside the training span (empty when all inside)."""
        return ConditionRequest.of(energy, theta, phi).outside(self.content.ranges)

    def sample_batches(
        self,
        energy_mev: ArrayLike,
        theta: ArrayLike | None = None,
        phi: ArrayLike | None = None,
        detector: ArrayLike | None = None,
        *,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        batch_size: int = 1000,
        on_batch: Callable[[int], None] | None = None,
        warn_outside: bool = True,
        **options: Any,
    ) -> Iterator[ShowerSet]:
        """Like ``sample``, yielding one ``ShowerSet`` per batch (for streaming to a file).

        ``warn_outside=False`` leaves out the log warning about conditions outside the training range
        (for callers that have reported it already).
        """
        sampler = self.sampler_for(**options)
        detector = self.content.ranges.own_detector if detector is None else detector
        request = ConditionRequest.of(energy_mev, theta, phi, detector)
        self.content.spec.check_detectors(request.detector)
        if warn_outside:
            for problem in request.outside(self.content.ranges):
                log.warning("%s; the model extrapolates there", problem)
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
        device = self.device

        def column(values: np.ndarray, part: slice, dtype: torch.dtype) -> torch.Tensor:
            return torch.from_numpy(values[part]).to(dtype).to(device)

        for start in range(0, len(request), batch_size):
            part = slice(start, min(start + batch_size, len(request)))
            n = part.stop - start
            noise = [spec.draw(n, generator).to(device) for spec in sampler.noise]
            with torch.no_grad():
                showers = sampler(
                    column(request.energy, part, torch.float32), column(request.theta, part, torch.float32),
                    column(request.phi, part, torch.float32), column(request.detector, part, torch.int64),
                    *noise,
                )
            yield request.showers(showers.cpu().numpy(), part, self.geometry, "generated")
            if on_batch is not None:
                on_batch(n)

    def sample(
        self,
        energy_mev: ArrayLike,
        theta: ArrayLike | None = None,
        phi: ArrayLike | None = None,
        detector: ArrayLike | None = None,
        *,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        batch_size: int = 1000,
        **options: Any,
    ) -> ShowerSet:
        """Generate one shower per entry of ``energy_mev`` (N,) MeV.

        theta, phi (radians) and detector take one value or one per shower (defaults: normal incidence,
        detector 0). ``options`` are the family's sampling options (``caloforge families``; for edm-dit
        ``n_steps`` and ``sampler``), defaulting to the run's. Randomness comes only from ``generator`` (or
        a fresh one seeded with ``seed``, default 0): same seed, same showers.
        """
        parts = self.sample_batches(energy_mev, theta, phi, detector, generator=generator, seed=seed,
                                    batch_size=batch_size, **options)
        return ShowerSet.concatenate(list(parts))


def _load_sampler(content: CheckpointContent, family: Family, options: dict[str, Any],
                  readout: CylindricalGeometry | None = None) -> ShowerSampler:
    """The family's sampler with the checkpoint's weights, wrapped in its calibration if it has one.

    A calibrated checkpoint samples by default with the options its calibration was fitted for; other
    options are honoured, with a warning (the calibration then corrects a spectrum it was not fitted to)."""
    if content.calibration is not None:
        fitted_for = dict(content.calibration.get("info", {}).get("sampling", {}))
        options = {**fitted_for, **{k: v for k, v in options.items() if v is not None}}
        if options != fitted_for:
            log.warning("the calibration was fitted for sampling %s; sampling with %s", fitted_for, options)
    sampler = family.sampler(content.config.model, content.context, **options)
    assert content.sampler_state is not None
    missing, unexpected = sampler.load_state_dict(content.sampler_state, strict=False)
    if missing or unexpected:
        raise InputError(None, "sampler weights",
                         f"do not fit family '{family.name}' as configured (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})", "the weights of the model its config describes")
    if readout is not None:
        sampler = sampler.voxelise_onto(readout)
    if content.calibration is not None:
        from caloforge.calibration import CalibratedSampler, CellCalibration

        sampler = CalibratedSampler(sampler, CellCalibration.from_dict(content.calibration, content.geometry))
    return sampler.eval().requires_grad_(False)


def load_generator(
    path: str | PathLike[str], device: torch.device | str = "cpu",
    readout: CylindricalGeometry | None = None, **options: Any,
) -> ShowerGenerator:
    """A ``ShowerGenerator`` from a checkpoint written by ``caloforge train`` (any family, format 1 or 2),
    in eval mode on ``device``; ``options`` replace the run's default sampling options.

    ``readout``: voxelise onto this readout instead of the training one, for a readout-free family (the
    mdma-gan's hits) and another readout of the same detector (``Family.check_readout``). Everything else
    of the model (hit count, energy scale, threshold) stays as trained; a cell calibration, fitted to the
    training readout's cells, is refused.
    """
    content = read_checkpoint(path)
    if readout is not None and readout != content.geometry:
        get_family(content.family).check_readout(content.geometry, readout, path, "geometry")
        if content.calibration is not None:
            raise InputError(path, "calibration", f"is fitted to the cells of '{content.geometry.name}'",
                             "an uncalibrated checkpoint to voxelise onto another readout")
    else:
        readout = None
    return _generator(content, path, device, options, readout)


def _generator(
    content: CheckpointContent, path: str | PathLike[str], device: torch.device | str,
    options: dict[str, Any], readout: CylindricalGeometry | None = None,
) -> ShowerGenerator:
    """A ``ShowerGenerator`` of ``content`` (read from ``path``, which errors name) on ``device``."""
    family = get_family(content.family)
    try:
        sampler = _load_sampler(content, family, options, readout)
    except InputError as error:
        raise InputError(path, error.field, error.problem, error.expected) from None
    return ShowerGenerator(content, family, sampler, readout).to(device)


def generate_to_file(
    generator: Any,
    path: str | PathLike[str],
    energy_mev: ArrayLike,
    theta: ArrayLike | None = None,
    phi: ArrayLike | None = None,
    detector: ArrayLike | None = None,
    seed: int = 0,
    batch_size: int = 1000,
    file_format: str = "calochallenge",
    progress: bool = True,
    warn_outside: bool = True,
    **options: Any,
) -> int:
    """Generate one shower per energy (MeV) with a ``ShowerGenerator`` or an ``OnnxGenerator`` and write
    them to ``path`` atomically; returns the count.

    The file records the conditions that were given (energy always; theta, phi, detector when not None).
    Progress goes to stderr when ``progress``.
    """
    from caloforge.io import ShowerWriter
    from caloforge.progress import progress_bar

    n = int(np.asarray(energy_mev).size)
    conditions = ["energy"] + [
        name for name, v in (("theta", theta), ("phi", phi), ("detector", detector)) if v is not None
    ]
    with (
        ShowerWriter(
            path, generator.geometry, format=file_format, conditions=conditions, expected_n=n
        ) as writer,
        progress_bar(n, "generating", unit="shower", enabled=progress) as bar,
    ):
        for batch in generator.sample_batches(
            energy_mev, theta, phi, detector, seed=seed, batch_size=batch_size, on_batch=bar.update,
            warn_outside=warn_outside, **options,
        ):
            writer.append(batch)
    return n


def calibrate_checkpoint(
    checkpoint: str | PathLike[str], reference: ShowerSet, out: str | PathLike[str],
    config: CalibrationConfig | None = None, seed: int = 0, batch_size: int = 500,
    progress: Callable[[int], None] | None = None, **options: Any,
) -> CellCalibration:
    """Generate ``config.n_showers`` showers with ``checkpoint``'s model (sampling ``options``, e.g.
    ``n_steps``) at incident energies drawn from ``reference`` (seeded by ``seed``), fit the calibration to
    ``reference`` (the model's training showers: never the showers it will be scored against) and write
    the model with it to ``out`` (a slim checkpoint, written atomically). ``progress(n)`` is called after
    each generated batch. Returns the calibration.

    A checkpoint that is calibrated already is calibrated afresh: its model generates without the old
    map, and the new one replaces it (e.g. for another sampler setting, or another training file)."""
    from caloforge.calibration import CalibrationConfig, check_single_condition, fit_cell_calibration
    from caloforge.checkpoint import write_sampler_checkpoint

    config = config or CalibrationConfig()
    content = read_checkpoint(checkpoint)
    content.calibration = None  # the model's own showers, whatever map it held
    generator = _generator(content, checkpoint, "cpu", {})
    if reference.geometry.n_voxels != generator.geometry.n_voxels:
        raise InputError(reference.source, "showers", f"have {reference.geometry.n_voxels} voxels "
                         f"(geometry '{reference.geometry.name}')",
                         f"{generator.geometry.n_voxels}, the readout of {checkpoint}")
    check_single_condition(reference, "reference")
    rng = np.random.default_rng(seed)
    energy = rng.choice(np.asarray(reference.energy, dtype=np.float64), config.n_showers,
                        replace=config.n_showers > len(reference))
    sampler = generator.sampler_for(**options)
    threshold = generator.content.preprocessor.threshold_mev
    if config.candidate_threshold < 1:  # the fit sees the cells the calibrated sampler will hand over
        sampler.base().lower_threshold(config.candidate_threshold * threshold)
    generated = ShowerSet.concatenate(list(generator.sample_batches(
        energy, seed=seed, batch_size=batch_size, on_batch=progress, warn_outside=False, **options)))
    calibration = fit_cell_calibration(generated, reference, threshold, config)
    calibration.info.update({"sampling": dict(sampler.options), "seed": seed,
                             "reference": str(reference.source) if reference.source else None})
    content.calibration = calibration.to_dict()
    write_sampler_checkpoint(content, Path(out))
    return calibration
