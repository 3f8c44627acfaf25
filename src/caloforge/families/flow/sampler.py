"""The ``flow`` sampler: conditions + normal noise -> showers in MeV, and exact log-likelihoods of showers.

Noise spec, in order (each (N, *shape), standard normal: the flows' latents):

* ``layer_noise`` (1 + L,): flow I's latent (runs with ``preprocess.layer_energies``);
* ``noise`` (V,): flow II's latent, in voxel order (layer slowest);
* ``u`` () uniform: the quantile of E_tot / E_inc (runs with ``preprocess.energy_ratio`` and no flow I).

A teacher (MAF) inverts its transforms dimension by dimension (D network passes per transform, D the
flow's dimension: 1 + L for flow I, the voxels of one layer for flow II layer by layer); a student (IAF)
samples in one pass per transform. Both trace into ONNX (the teacher's loops unrolled, so its graph grows
with D x transforms x layers). No Lightning here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from caloforge.context import RunContext
from caloforge.errors import InputError
from caloforge.families.flow import FlowConfig
from caloforge.geometry import CylindricalGeometry
from caloforge.models.flows import AutoregressiveFlow, LayerwiseFlow
from caloforge.sampler import NoiseSpec, ShowerSampler

__all__ = ["FlowSampler", "ZeroDequantizer", "flow_layers", "shape_condition"]


def flow_layers(config: FlowConfig, geometry: CylindricalGeometry) -> int:
    """How many pieces flow II splits a shower into: L layer by layer, 1 for the whole shower."""
    regular = geometry.is_regular and geometry.n_layers > 1
    if config.shape == "layers" and not regular:
        raise InputError(None, "model.shape", "is 'layers'",
                         f"'whole' or 'auto' for readout '{geometry.name}' (per-layer binning or one layer)")
    return geometry.n_layers if config.shape == "layers" or (config.shape == "auto" and regular) else 1


def shape_condition(cond: Tensor, layers: Tensor | None) -> Tensor:
    """Flow II's context: cond (N, C), then the standardised layer vector (N, 1 + L) when there is one."""
    return cond if layers is None else torch.cat([cond, layers], dim=1)


class ZeroDequantizer(nn.Module):
    """Empty cells spread uniformly below the readout threshold, in the preprocessed space.

    The preprocessing puts an empty cell at u = ln(eps / E_inc), a point mass a flow cannot fit with a
    finite density. ``forward(x, cond, w)`` moves each empty cell of x (N, V) to the deposit
    E = 0.99 w x threshold (MeV; w (N, V) in [0, 1)), which the inverse preprocessing still reads as zero.
    E_inc comes from the condition vector's first entry (ln E_inc mapped to [-1, 1], ``ConditionSpec``).
    """

    mean: Tensor
    std: Tensor

    def __init__(self, context: RunContext) -> None:
        super().__init__()
        pre = context.preprocessor
        self.register_buffer("mean", torch.from_numpy(pre.mean).float(), persistent=False)
        self.register_buffer("std", torch.from_numpy(pre.std).float(), persistent=False)
        self.eps, self.threshold = float(pre.eps_mev), float(pre.threshold_mev)
        lo, hi = context.spec.log_energy_range
        self.log_energy_mid, self.log_energy_half = 0.5 * (lo + hi), 0.5 * (hi - lo)

    def forward(self, x: Tensor, cond: Tensor, w: Tensor) -> Tensor:
        log_energy = (cond[:, :1] * self.log_energy_half + self.log_energy_mid)  # (N, 1) ln(MeV)
        u = x * self.std + self.mean  # ln((E + eps) / E_inc)
        empty = torch.exp(u + log_energy) - self.eps < self.threshold  # (N, V)
        spread = (torch.log(0.99 * w * self.threshold + self.eps) - log_energy - self.mean) / self.std
        return torch.where(empty, spread, x)


class FlowSampler(ShowerSampler):
    """Flow I (``layer_flow``, or ``None``) then flow II (``shape_flow``): MAFs for ``role: teacher``, IAFs
    for ``role: student`` (module doc for the noise).

    Attributes:
        layer_flow: ``AutoregressiveFlow`` over the standardised layer vector (1 + L) given cond (C).
        shape_flow: ``LayerwiseFlow`` over the preprocessed voxels (V) given [cond, layer vector].
        encoder, transform, layer_energies, energy_ratio, dequantizer: built from the run's context.
        context: the run's context (geometry, preprocessing, conditions), to check a teacher against.
    """

    def __init__(self, config: FlowConfig, context: RunContext) -> None:
        super().__init__()
        config.check()
        geometry, pre, spec = context.geometry, context.preprocessor, context.spec
        self.config, self.context = config, context
        self.role = config.role
        kind = "maf" if config.role == "teacher" else "iaf"
        self.encoder = spec.encoder()
        self.transform = pre.module()
        self.dequantizer = ZeroDequantizer(context)
        self.layer_energies = pre.layer_energies(geometry)
        self.energy_ratio = None if self.layer_energies is not None else pre.energy_ratio()
        layer_net, shape_net = config.resolved()
        layer_dim = 1 + geometry.n_layers
        self.layer_flow = None
        if self.layer_energies is not None:
            self.layer_flow = AutoregressiveFlow(layer_dim, spec.dim, layer_net, kind)
        shape_context = spec.dim + (layer_dim if self.layer_flow is not None else 0)
        self.shape_flow = LayerwiseFlow(geometry.n_voxels, flow_layers(config, geometry), shape_context,
                                        shape_net, kind)
        noise = []
        if self.layer_flow is not None:
            noise.append(NoiseSpec("layer_noise", (layer_dim,)))
        noise.append(NoiseSpec("noise", (geometry.n_voxels,)))
        if self.energy_ratio is not None:
            noise.append(NoiseSpec("u", (), "uniform"))
        self.noise = tuple(noise)
        self.options = {}

    def forward(self, energy: Tensor, theta: Tensor, phi: Tensor, detector: Tensor, *noise: Tensor) -> Tensor:
        named = {spec.name: tensor for spec, tensor in zip(self.noise, noise, strict=True)}
        cond = self.encoder(energy, theta, phi, detector)  # (N, C)
        y = None
        if self.layer_flow is not None:
            y = self.layer_flow.to_data(named["layer_noise"], cond)  # (N, 1 + L) standardised
            if self.layer_energies is not None:  # inside training's range, as flow II's context
                y = self.layer_energies.bound(y)
        # keeps each layer, flow II's next context, finite
        low, high = self.transform.support(energy, named["noise"].shape[1])
        x = self.shape_flow.sample(named["noise"], shape_condition(cond, y), low, high)  # (N, V)
        showers = self.transform.inverse(x, energy)  # (N, V) MeV
        if y is not None and self.layer_energies is not None:
            showers = self.layer_energies.rescale(showers, energy, y)
        elif self.energy_ratio is not None:
            showers = self.energy_ratio.rescale(showers, energy, named["u"])
        return showers

    # -- likelihood
    def model_inputs(
        self, showers: Tensor, energy: Tensor, theta: Tensor, phi: Tensor, detector: Tensor
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """What the flows score: (x (N, V) preprocessed with empty cells at the middle of their
        dequantisation interval, cond (N, C), y (N, 1 + L) standardised layer vector or ``None``)."""
        cond = self.encoder(energy, theta, phi, detector)
        x = self.transform(showers, energy)
        if self.config.dequantize:
            x = self.dequantizer(x, cond, torch.full_like(x, 0.5))
        y = None
        if self.layer_flow is not None and self.layer_energies is not None:
            y = self.layer_energies(showers, energy)
        return x, cond, y

    def log_prob_parts(self, x: Tensor, cond: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        """(log p_I(y | cond), log p_II(x | cond, y)), each (N,) nats, of model-space inputs (flow I's part
        is zero without a layer-energy stage)."""
        layer_part = torch.zeros_like(x[:, 0])
        if self.layer_flow is not None and y is not None:
            layer_part = self.layer_flow.log_prob(y, cond)
        return layer_part, self.shape_flow.log_prob(x, shape_condition(cond, y))

    def log_prob(
        self, showers: Tensor, energy: Tensor, theta: Tensor, phi: Tensor, detector: Tensor
    ) -> Tensor:
        """Exact log-likelihood (N,) in nats of showers (N, V) MeV at conditions energy (N,) MeV, theta
        and phi (N,) rad, detector (N,) int64.

        It is the density of the model's own coordinates, log p_I(y | c) + log p_II(x | c, y): y the
        standardised layer vector (``preprocess.LayerEnergies``; absent without a layer-energy stage) and x
        the per-voxel standardised ln((E + eps) / E_inc), empty cells at the middle of their dequantisation
        interval. So values compare showers scored by the same checkpoint (higher: more typical of the
        model); they are not a density in MeV. A teacher (MAF) scores in one pass per transform, a student
        (IAF) in D passes per transform.
        """
        inputs = self.model_inputs(showers, energy, theta, phi, detector)
        layer_part, shape_part = self.log_prob_parts(*inputs)
        return layer_part + shape_part

    def metadata(self) -> dict[str, Any]:
        """The role and the flows' sizes, recorded in exported graphs."""
        shape_net = self.config.resolved()[1]
        return {"role": self.role, "kind": "maf" if self.role == "teacher" else "iaf",
                "transforms": shape_net.transforms, "splines": shape_net.splines,
                "shape_layers": self.shape_flow.n_layers,
                "dims_per_shower": int(self.shape_flow.n_layers * self.shape_flow.per_layer
                                       + (0 if self.layer_flow is None else self.layer_flow.features))}
