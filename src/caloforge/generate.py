"""Checkpoint -> showers: ``load_generator(path).sample(...)`` returns a ``ShowerSet`` in MeV.

The pieces a generator is made of are public so that ``caloforge.export`` can trace them into ONNX:
``encoder`` (conditions -> vector), ``denoiser`` (the EMA EDM module, D(x, sigma, cond)), ``sigmas``
(the sampler's grid) and ``transform`` (preprocessing forward/inverse in torch ops).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from os import PathLike
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from torch import Tensor

from caloforge.checkpoint import CheckpointContent, read_checkpoint
from caloforge.conditioning import ConditionEncoder
from caloforge.data import CONDITION_DEFAULTS, ShowerSet
from caloforge.diffusion import EDM, get_sampler
from caloforge.errors import InputError
from caloforge.preprocess import EnergyRatio, PreprocessTransform
from caloforge.training import build_denoiser

__all__ = ["ShowerGenerator", "generate_to_file", "load_generator"]

log = logging.getLogger(__name__)


def _broadcast(name: str, values: ArrayLike | None, n: int) -> NDArray[np.float64]:
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


@dataclass
class ShowerGenerator:
    """A trained model ready to sample; build with ``load_generator``.

    Attributes:
        content: what the checkpoint holds (config, geometry, preprocessing, condition spec, ranges).
        denoiser: the EMA-weight EDM module, ``denoiser(x, sigma, cond)`` -> D(x; sigma), eval mode.
        encoder: conditions (energy MeV, theta, phi radians, detector index) -> condition vector.
        transform: preprocessing in torch (``forward`` MeV -> model space, ``inverse`` back).
        energy_ratio: the E_tot / E_inc model (``caloforge.preprocess.EnergyRatio``) that rescales each
            generated shower, drawing one uniform number per shower after the sampler's noise; ``None``
            when the run was trained without it.
    """

    content: CheckpointContent
    denoiser: EDM
    encoder: ConditionEncoder
    transform: PreprocessTransform
    energy_ratio: EnergyRatio | None = None

    @property
    def geometry(self) -> Any:
        return self.content.geometry

    def sigmas(self, n_steps: int | None = None) -> Tensor:
        """The sampler's noise-level grid (n_steps + 1,), ending in 0."""
        return self.denoiser.sigmas(n_steps or self.content.config.sample.n_steps)

    def range_warnings(
        self, energy: ArrayLike, theta: ArrayLike | None = None, phi: ArrayLike | None = None
    ) -> list[str]:
        """Sentences about requested conditions outside the training span (empty when all inside)."""
        n = np.asarray(energy).size
        return self.content.ranges.outside(energy, _broadcast("theta", theta, n), _broadcast("phi", phi, n))

    def sample_batches(
        self,
        energy_mev: ArrayLike,
        theta: ArrayLike | None = None,
        phi: ArrayLike | None = None,
        detector: ArrayLike | None = None,
        n_steps: int | None = None,
        sampler: str | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        batch_size: int = 1000,
        on_batch: Callable[[int], None] | None = None,
    ) -> Iterator[ShowerSet]:
        """Like ``sample``, yielding one ``ShowerSet`` per batch (for streaming to a file)."""
        energy = np.asarray(energy_mev, dtype=np.float64).reshape(-1)
        n = energy.size
        if n == 0 or np.any(~np.isfinite(energy)) or np.any(energy <= 0):
            raise InputError(
                None, "energy", "has no values, or values <= 0 or not finite", "energies > 0 MeV"
            )
        theta_a, phi_a = _broadcast("theta", theta, n), _broadcast("phi", phi, n)
        detector_a = _broadcast("detector", detector, n).astype(np.int64)
        for problem in self.range_warnings(energy, theta_a, phi_a):
            log.warning("%s; the model extrapolates there", problem)
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
        run = get_sampler(sampler or self.content.config.sample.sampler)
        sigmas = self.sigmas(n_steps)
        cond_all = self.content.spec.encode_arrays(energy, theta_a, phi_a, detector_a)
        n_voxels = self.content.geometry.n_voxels
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            cond = cond_all[start:stop]
            x = torch.randn((stop - start, n_voxels), generator=generator) * sigmas[0]
            with torch.no_grad():
                z = run(self.denoiser, x, sigmas, cond, generator=generator)
                e_inc = torch.from_numpy(energy[start:stop]).float()
                showers = self.transform.inverse(z, e_inc)
                if self.energy_ratio is not None:
                    u = torch.rand(stop - start, generator=generator)
                    showers = self.energy_ratio.rescale(showers, e_inc, u)
            yield ShowerSet(
                showers=showers.numpy(),
                geometry=self.content.geometry,
                energy=energy[start:stop],
                theta=theta_a[start:stop] if theta is not None else None,
                phi=phi_a[start:stop] if phi is not None else None,
                detector=detector_a[start:stop] if detector is not None else None,
                source="generated",
            )
            if on_batch is not None:
                on_batch(stop - start)

    def sample(
        self,
        energy_mev: ArrayLike,
        theta: ArrayLike | None = None,
        phi: ArrayLike | None = None,
        detector: ArrayLike | None = None,
        n_steps: int | None = None,
        sampler: str | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        batch_size: int = 1000,
    ) -> ShowerSet:
        """Generate one shower per entry of ``energy_mev`` (N,) MeV.

        theta, phi (radians) and detector take one value or one per shower (defaults: normal incidence,
        detector 0). ``n_steps``/``sampler`` default to the run's ``sample`` config. Randomness comes only
        from ``generator`` (or a fresh one seeded with ``seed``, default 0): same seed, same showers.
        """
        parts = list(
            self.sample_batches(
                energy_mev, theta, phi, detector, n_steps, sampler, generator, seed, batch_size
            )
        )
        return ShowerSet.concatenate(parts)


def load_generator(path: str | PathLike[str]) -> ShowerGenerator:
    """A ``ShowerGenerator`` from a checkpoint written by ``caloforge train`` (CPU, eval mode)."""
    content = read_checkpoint(path)
    denoiser = build_denoiser(content.config, content.geometry, content.spec.dim)
    assert content.weights is not None
    missing, unexpected = denoiser.load_state_dict(content.weights, strict=False)
    if missing or unexpected:
        raise InputError(
            path,
            "state_dict",
            f"does not fit the model in its config (missing {missing[:3]}, unexpected {unexpected[:3]})",
            "EMA weights of the configured DiT",
        )
    denoiser.eval().requires_grad_(False)
    pre = content.preprocessor
    return ShowerGenerator(content, denoiser, content.spec.encoder(), pre.module(), pre.energy_ratio())


def generate_to_file(
    generator: ShowerGenerator,
    path: str | PathLike[str],
    energy_mev: ArrayLike,
    theta: ArrayLike | None = None,
    phi: ArrayLike | None = None,
    detector: ArrayLike | None = None,
    n_steps: int | None = None,
    sampler: str | None = None,
    seed: int = 0,
    batch_size: int = 1000,
    file_format: str = "calochallenge",
    progress: bool = True,
) -> int:
    """Generate one shower per energy (MeV) and write them to ``path`` atomically; returns the count.

    The file records the conditions that were given (energy always; theta, phi, detector when not None).
    A tqdm bar on stderr shows progress when ``progress``.
    """
    from tqdm import tqdm

    from caloforge.io import ShowerWriter

    n = int(np.asarray(energy_mev).size)
    conditions = ["energy"] + [
        name for name, v in (("theta", theta), ("phi", phi), ("detector", detector)) if v is not None
    ]
    with (
        ShowerWriter(
            path, generator.geometry, format=file_format, conditions=conditions, expected_n=n
        ) as writer,
        tqdm(total=n, desc="generating", unit="shower", file=sys.stderr, disable=not progress) as bar,
    ):
        for batch in generator.sample_batches(
            energy_mev,
            theta,
            phi,
            detector,
            n_steps,
            sampler,
            seed=seed,
            batch_size=batch_size,
            on_batch=bar.update,
        ):
            writer.append(batch)
    return n
