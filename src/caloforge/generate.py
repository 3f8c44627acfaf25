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
from numpy.typing import ArrayLike
from torch import Tensor

from caloforge.checkpoint import CheckpointContent, read_checkpoint
from caloforge.conditioning import ConditionEncoder, ConditionRequest
from caloforge.data import ShowerSet
from caloforge.diffusion import EDM, get_sampler
from caloforge.errors import InputError
from caloforge.preprocess import EnergyRatio, LayerEnergies, PreprocessTransform
from caloforge.training import build_denoiser, build_layer_denoiser, shape_condition

__all__ = ["ShowerGenerator", "generate_to_file", "load_generator"]

log = logging.getLogger(__name__)


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
            when the run was trained without it, and unused when the run has a layer-energy stage.
        layer_denoiser: the layer-energy stage's EMA EDM module (``None`` when the run has none). Its
            sampler runs first, from noise drawn right after the DiT's; the DiT's shower is then rescaled
            layer by layer to its draw with ``layer_energies`` (``caloforge.preprocess.LayerEnergies``).
    """

    content: CheckpointContent
    denoiser: EDM
    encoder: ConditionEncoder
    transform: PreprocessTransform
    energy_ratio: EnergyRatio | None = None
    layer_denoiser: EDM | None = None
    layer_energies: LayerEnergies | None = None

    @property
    def geometry(self) -> Any:
        return self.content.geometry

    @property
    def device(self) -> torch.device:
        """Where the model runs (``load_generator``'s ``device``)."""
        return next(self.denoiser.parameters()).device

    def to(self, device: torch.device | str) -> ShowerGenerator:
        """Moves the model to ``device`` ("cpu", "cuda", ...); returns self. Seeds give the same showers
        on every device up to float arithmetic, because all random numbers are drawn on the CPU."""
        modules = (self.denoiser, self.encoder, self.transform, self.energy_ratio, self.layer_denoiser,
                   self.layer_energies)
        for module in modules:
            if module is not None:
                module.to(device)
        return self

    def sigmas(self, n_steps: int | None = None) -> Tensor:
        """The sampler's noise-level grid (n_steps + 1,), ending in 0."""
        return self.denoiser.sigmas(n_steps or self.content.config.sample.n_steps)

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
        n_steps: int | None = None,
        sampler: str | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        batch_size: int = 1000,
        on_batch: Callable[[int], None] | None = None,
    ) -> Iterator[ShowerSet]:
        """Like ``sample``, yielding one ``ShowerSet`` per batch (for streaming to a file)."""
        request = ConditionRequest.of(energy_mev, theta, phi, detector)
        for problem in request.outside(self.content.ranges):
            log.warning("%s; the model extrapolates there", problem)
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
        run = get_sampler(sampler or self.content.config.sample.sampler)
        sigmas = self.sigmas(n_steps)
        cond_all = self.content.spec.encode_arrays(
            request.energy, request.theta, request.phi, request.detector
        )
        n_voxels, n = self.content.geometry.n_voxels, len(request)
        device = self.device
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            cond = cond_all[start:stop].to(device)
            x = torch.randn((stop - start, n_voxels), generator=generator) * sigmas[0]
            with torch.no_grad():
                e_inc = torch.from_numpy(request.energy[start:stop]).float().to(device)
                y = None
                if self.layer_denoiser is not None and self.layer_energies is not None:
                    y = torch.randn((stop - start, self.layer_energies.dim), generator=generator) * sigmas[0]
                    y = run(self.layer_denoiser, y.to(device), sigmas, cond, generator=generator)
                z = run(self.denoiser, x.to(device), sigmas, shape_condition(cond, y), generator=generator)
                showers = self.transform.inverse(z, e_inc)
                if y is not None and self.layer_energies is not None:
                    showers = self.layer_energies.rescale(showers, e_inc, y)
                elif self.energy_ratio is not None:
                    u = torch.rand(stop - start, generator=generator)
                    showers = self.energy_ratio.rescale(showers, e_inc, u.to(device))
            yield request.showers(
                showers.cpu().numpy(), slice(start, stop), self.content.geometry, "generated"
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


def load_generator(path: str | PathLike[str], device: torch.device | str = "cpu") -> ShowerGenerator:
    """A ``ShowerGenerator`` from a checkpoint written by ``caloforge train``, in eval mode on ``device``."""
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
    layer_denoiser, layer_energies = None, pre.layer_energies(content.geometry)
    if layer_energies is not None:
        layer_denoiser = build_layer_denoiser(content.config, content.geometry.n_layers, content.spec.dim)
        if content.layer_weights is None:
            raise InputError(path, "state_dict", "holds no 'layer_ema.' weights",
                             "the layer-energy stage its preprocessing says the run has")
        layer_denoiser.load_state_dict(content.layer_weights)
        layer_denoiser.eval().requires_grad_(False)
    generator = ShowerGenerator(
        content, denoiser, content.spec.encoder(), pre.module(), pre.energy_ratio(), layer_denoiser,
        layer_energies,
    )
    return generator.to(device)


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
