"""The ``edm-dit`` sampler: conditions + noise -> showers in MeV (no Lightning; see ``caloforge.sampler``).

Noise spec, in order (each (N, *shape)):

* ``noise`` (V,) normal: the DiT's starting point, scaled by the grid's first sigma;
* ``layer_noise`` (1 + L,) normal: the layer-energy stage's starting point (runs with the stage);
* ``u`` () uniform: the quantile of E_tot / E_inc (runs with the energy-ratio model and no stage);
* ``layer_step_noise`` (n_steps, 1 + L) and ``step_noise`` (n_steps, V) normal: the fresh noise of the
  ``stochastic`` sampler's steps (that sampler only).

The first three are drawn in the order checkpoints of format 1 drew them, so those keep generating the same
showers for the same seed.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from caloforge.conditioning import ConditionEncoder
from caloforge.context import RunContext
from caloforge.diffusion import EDM, ConsistencyEDM, consistency_sigmas, get_sampler
from caloforge.errors import InputError
from caloforge.families.edm_dit import EdmDitConfig, EdmModelConfig
from caloforge.geometry import CylindricalGeometry
from caloforge.models import DiT, LayerMLP
from caloforge.sampler import ExtraGraph, NoiseSpec, ShowerSampler

__all__ = ["DenoiserGraph", "EdmDitSampler", "as_distilled", "build_denoiser", "build_layer_denoiser",
           "shape_condition"]


def build_denoiser(config: EdmDitConfig, geometry: CylindricalGeometry, cond_dim: int, layers: bool) -> EDM:
    """The DiT backbone wrapped in EDM preconditioning, freshly initialised.

    With the layer-energy stage (``layers``), the DiT is conditioned on the stage's standardised vector
    too: its condition is the ``cond_dim`` condition vector followed by the 1 + L layer values.
    """
    extra = 1 + geometry.n_layers if layers else 0
    return EDM(DiT(config.dit, geometry, cond_dim + extra), config.diffusion)


def build_layer_denoiser(config: EdmModelConfig, n_layers: int, cond_dim: int) -> EDM:
    """The layer-energy stage (``LayerMLP`` over 1 + n_layers values) in EDM preconditioning, fresh."""
    return EDM(LayerMLP(1 + n_layers, cond_dim, config.layers), config.diffusion)


def as_distilled(edm: EDM, config: EdmModelConfig) -> EDM:
    """``edm``'s backbone as a consistency function when the run is distilled (``model.distill``), else
    ``edm`` itself; the weights are the same either way."""
    return ConsistencyEDM(edm.backbone, edm.config) if config.distill.distilled else edm


def shape_condition(cond: Tensor, layers: Tensor | None) -> Tensor:
    """The DiT's condition: cond (N, C), then the layer-energy vector (N, 1 + L) when there is one."""
    return cond if layers is None else torch.cat([cond, layers], dim=1)


class EdmDitSampler(ShowerSampler):
    """Runs the configured ODE/SDE solver over the EDM grid (module doc for the noise).

    Attributes:
        denoiser: the DiT in EDM preconditioning, D(x; sigma | cond) (weights: the training's average).
        layer_denoiser: the layer-energy stage, or ``None``.
        encoder, transform, energy_ratio, layer_energies: built from the run's context (not weights).
        sigmas: the solver's grid (n_steps + 1,), a plain attribute so tracing folds it into the graph.

    ``make_denoiser`` builds the backbone in EDM preconditioning; a family that keeps this objective,
    stage and solvers with another backbone (``edm-unet``) subclasses and overrides only it.
    """

    @staticmethod
    def make_denoiser(config: Any, geometry: CylindricalGeometry, cond_dim: int, layers: bool) -> EDM:
        """The DiT in EDM preconditioning (``build_denoiser``)."""
        return build_denoiser(config, geometry, cond_dim, layers)

    def __init__(
        self,
        config: EdmModelConfig,
        context: RunContext,
        n_steps: int | None = None,
        sampler: str | None = None,
        fill_layers: bool | None = None,
    ) -> None:
        super().__init__()
        geometry, pre, spec = context.geometry, context.preprocessor, context.spec
        self.encoder: ConditionEncoder = spec.encoder()
        self.transform = pre.module()
        self.layer_energies = pre.layer_energies(geometry)
        has_layers = self.layer_energies is not None
        self.energy_ratio = None if has_layers else pre.energy_ratio()
        self.denoiser = as_distilled(self.make_denoiser(config, geometry, spec.dim, has_layers), config)
        self.layer_denoiser = (
            as_distilled(build_layer_denoiser(config, geometry.n_layers, spec.dim), config) if has_layers
            else None
        )
        n_steps = config.sample.n_steps if n_steps is None else int(n_steps)
        if n_steps < 1:
            raise InputError(None, "n_steps", f"is {n_steps}", "at least 1 sampler step")
        name = sampler or config.sample.sampler
        if config.distill.distilled != (name == "consistency"):
            raise InputError(None, "sampler", f"is '{name}'", "consistency for a distilled model, another "
                             "sampler for an undistilled one")
        # Callable[..., Tensor]: the stochastic and consistency solvers also take step noise (``noise=``).
        self.solver: Callable[..., Tensor] = get_sampler(name)
        self.sigmas = (consistency_sigmas(self.denoiser, n_steps) if config.distill.distilled
                       else self.denoiser.sigmas(n_steps))
        self.fill_layers = config.sample.fill_layers if fill_layers is None else fill_layers
        if not isinstance(self.fill_layers, bool):
            raise InputError(None, "fill_layers", f"is {self.fill_layers!r}", "true or false")
        if self.fill_layers and not has_layers:
            raise InputError(None, "fill_layers", "is true for a model without a layer-energy stage",
                             "fill_layers only with preprocess.layer_energies on")
        self.options: dict[str, Any] = {"n_steps": n_steps, "sampler": name}
        if has_layers:
            self.options["fill_layers"] = self.fill_layers
        self.config = config

        layer_dim = 1 + geometry.n_layers
        noise = [NoiseSpec("noise", (geometry.n_voxels,))]
        if has_layers:
            noise.append(NoiseSpec("layer_noise", (layer_dim,)))
        elif self.energy_ratio is not None:
            noise.append(NoiseSpec("u", (), "uniform"))
        if name == "stochastic" or (name == "consistency" and n_steps > 1):
            if has_layers:
                noise.append(NoiseSpec("layer_step_noise", (n_steps, layer_dim)))
            noise.append(NoiseSpec("step_noise", (n_steps, geometry.n_voxels)))
        self.noise = tuple(noise)

    def _named(self, noise: tuple[Tensor, ...]) -> dict[str, Tensor]:
        """The noise tensors by their spec names."""
        return {spec.name: tensor for spec, tensor in zip(self.noise, noise, strict=True)}

    def _solve(self, denoiser: nn.Module, x: Tensor, cond: Tensor, step_noise: Tensor | None) -> Tensor:
        solver = self.solver if step_noise is None else partial(self.solver, noise=step_noise)
        return solver(denoiser, x * float(self.sigmas[0]), self.sigmas, cond)

    def forward(self, energy: Tensor, theta: Tensor, phi: Tensor, detector: Tensor, *noise: Tensor) -> Tensor:
        z, y = self.solve(energy, theta, phi, detector, *noise)
        return self.decode(z, y, energy, *noise)

    def solve(
        self, energy: Tensor, theta: Tensor, phi: Tensor, detector: Tensor, *noise: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """The solvers' outputs: the DiT's z (N, V) in model space and the layer stage's y (N, 1 + L)
        (``None`` without the stage); ``forward`` is ``decode`` of them."""
        named = self._named(noise)
        cond = self.encoder(energy, theta, phi, detector)  # (N, C)
        y = None
        if self.layer_denoiser is not None:
            y = self._solve(self.layer_denoiser, named["layer_noise"], cond, named.get("layer_step_noise"))
        z = self._solve(self.denoiser, named["noise"], shape_condition(cond, y), named.get("step_noise"))
        return z, y

    def decode(self, z: Tensor, y: Tensor | None, energy: Tensor, *noise: Tensor) -> Tensor:
        """Showers (N, V) MeV from ``solve``'s outputs: the inverse preprocessing, its threshold, and the
        rescale to the layer draw y (or to the E_tot / E_inc quantile of the noise ``u``)."""
        showers = self.transform.inverse(z, energy)  # (N, V) MeV
        if y is not None and self.layer_energies is not None:
            scores = self.transform.log_fraction(z) if self.fill_layers else None
            showers = self.layer_energies.rescale(showers, energy, y, scores)
        elif self.energy_ratio is not None:
            showers = self.energy_ratio.rescale(showers, energy, self._named(noise)["u"])
        return showers

    def lower_threshold(self, mev: float) -> None:
        """Cells down to ``mev`` come out (``ShowerSampler.lower_threshold``): the threshold of the inverse
        preprocessing and of the layer or E_tot rescale, the sampler's only thresholds, moves down. A cell in
        [mev, threshold) is a deposit the DiT came close to lighting."""
        self.check_lower_threshold(mev, self.transform.threshold_mev)
        self.transform.threshold_mev = float(mev)
        for stage in (self.layer_energies, self.energy_ratio):
            if stage is not None:
                stage.threshold_mev = float(mev)

    def metadata(self) -> dict[str, Any]:
        """The solver's noise-level grid, for readers of the exported graph."""
        return {"sigmas": self.sigmas.tolist()}

    def extra_graphs(self) -> dict[str, ExtraGraph]:
        """The denoiser alone (docs/onnx.md), for applications that run their own solver loop."""
        n_voxels = int(self.noise[0].shape[0])
        layer_dim = 1 if self.layer_energies is None else self.layer_energies.dim
        example = (torch.zeros(2, n_voxels), torch.ones(2), torch.full((2,), 1e4), torch.full((2,), 1.5),
                   torch.zeros(2), torch.zeros(2, dtype=torch.int64), torch.zeros(2, layer_dim))
        edm = self.config.diffusion
        metadata: dict[str, Any] = {
            "sigma_data": edm.sigma_data, "sigma_min": edm.sigma_min,
            "sigma_max": edm.sigma_max, "rho": edm.rho,
            "consistency_function": self.config.distill.distilled,  # f(x; sigma), not D(x; sigma)
        }
        return {"denoiser": ExtraGraph(
            DenoiserGraph(self), example, ["x", "sigma", "energy", "theta", "phi", "detector", "layers"],
            ["denoised"], metadata,
        )}


class DenoiserGraph(nn.Module):
    """D(x; sigma | conditions): x (N, V) model space, sigma (N,), energy (N,) MeV, theta/phi (N,) rad,
    detector (N,) int64, layers (N, 1 + L) the standardised layer-energy vector the DiT is conditioned on
    (read only by a run with a layer-energy stage, else absent from the graph) -> denoised x (N, V)."""

    def __init__(self, sampler: EdmDitSampler) -> None:
        super().__init__()
        self.denoiser = sampler.denoiser
        self.encoder = sampler.encoder
        self.has_layers = sampler.layer_energies is not None

    def forward(
        self, x: Tensor, sigma: Tensor, energy: Tensor, theta: Tensor, phi: Tensor, detector: Tensor,
        layers: Tensor,
    ) -> Tensor:
        cond = self.encoder(energy, theta, phi, detector)
        return self.denoiser(x, sigma, shape_condition(cond, layers if self.has_layers else None))
