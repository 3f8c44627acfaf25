"""Exact log-likelihoods of showers under a ``flow`` checkpoint (a quality score; no Lightning).

``shower_log_likelihoods("run/model.ckpt", showers)`` returns one number per shower: the model's
log-density in nats of its own coordinates (``FlowSampler.log_prob``). Higher means more typical of the
training distribution as the model learnt it; compare showers (e.g. a generated set against a simulated one,
or one detector's showers against another's) under the same checkpoint.
"""

from __future__ import annotations

from os import PathLike
from typing import TYPE_CHECKING

import numpy as np
import torch
from numpy.typing import NDArray

from caloforge.data import ShowerSet
from caloforge.errors import InputError

if TYPE_CHECKING:
    from caloforge.families.flow.sampler import FlowSampler

__all__ = ["flow_sampler", "log_likelihoods", "shower_log_likelihoods"]


def flow_sampler(checkpoint: str | PathLike[str], device: str = "cpu") -> FlowSampler:
    """The ``FlowSampler`` of a ``flow`` checkpoint on ``device``; any other family is refused by name."""
    from caloforge.families.flow.sampler import FlowSampler
    from caloforge.generate import load_generator

    generator = load_generator(checkpoint, device=device)
    sampler = generator.sampler.base()
    if not isinstance(sampler, FlowSampler):
        raise InputError(checkpoint, "family", f"is '{generator.content.family}'",
                         "a 'flow' checkpoint (only flows have an exact likelihood)")
    return sampler


def log_likelihoods(sampler: FlowSampler, showers: ShowerSet, batch_size: int = 1000) -> NDArray[np.float64]:
    """log p(shower | conditions) (N,) in nats for every shower of ``showers`` (MeV, with their incident
    energy in MeV, angles in rad and detector index) under ``sampler``, in batches of ``batch_size`` on the
    sampler's device. The readout must be the sampler's."""
    geometry = sampler.context.geometry
    if showers.geometry != geometry:
        raise InputError(showers.source, "geometry", f"is '{showers.geometry.name}'",
                         f"'{geometry.name}', the checkpoint's readout")
    device = next(sampler.parameters()).device
    out = np.empty(len(showers), dtype=np.float64)
    columns = {name: showers.condition(name) for name in ("theta", "phi", "detector")}
    for start in range(0, len(showers), batch_size):
        part = slice(start, min(start + batch_size, len(showers)))

        def column(values: np.ndarray, dtype: torch.dtype, part: slice = part) -> torch.Tensor:
            return torch.from_numpy(np.asarray(values[part])).to(dtype).to(device)

        with torch.no_grad():
            log_p = sampler.log_prob(
                column(showers.showers, torch.float32), column(showers.energy, torch.float32),
                column(columns["theta"], torch.float32), column(columns["phi"], torch.float32),
                column(columns["detector"], torch.int64),
            )
        out[part] = log_p.double().cpu().numpy()
    return out


def shower_log_likelihoods(
    checkpoint: str | PathLike[str], showers: ShowerSet, batch_size: int = 1000, device: str = "cpu"
) -> NDArray[np.float64]:
    """``log_likelihoods`` of ``showers`` under the ``flow`` model in ``checkpoint``, on ``device``."""
    return log_likelihoods(flow_sampler(checkpoint, device), showers, batch_size)
