"""Whole-file statistics computed in one streaming pass (``caloforge info``)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from caloforge.io.reader import FileInfo, GeometryLike, inspect_file, iter_showers
from caloforge.progress import progress_bar

__all__ = ["FileSummary", "summarize_file"]


@dataclass(frozen=True)
class FileSummary:
    """Statistics of a shower file.

    A file with no showers (``empty``) has no statistics: ``ranges`` is empty and the three numbers are
    None (not NaN, which a caller could print or average by mistake).

    Attributes:
        info: shapes, dtypes and geometry (``inspect_file``).
        ranges: (min, max) of every condition present: energy in MeV, theta and phi in radians,
            detector as an index; {} for an empty file.
        sparsity: fraction of voxels, over all showers, with exactly zero energy.
        deposit_fraction_mean: mean over showers of sum of voxel energies / incident energy.
        deposit_fraction_std: its standard deviation over showers.
    """

    info: FileInfo
    ranges: dict[str, tuple[float, float]]
    sparsity: float | None
    deposit_fraction_mean: float | None
    deposit_fraction_std: float | None

    @property
    def empty(self) -> bool:
        """Whether the file holds no showers (N = 0)."""
        return self.info.n_showers == 0


def summarize_file(
    path: str | os.PathLike[str],
    geometry: GeometryLike = None,
    chunk_size: int = 10_000,
    progress: bool = False,
) -> FileSummary:
    """Stream a shower file once and summarise it (checks every value on the way)."""
    info = inspect_file(path, geometry)
    low = {name: math.inf for name in info.conditions}
    high = {name: -math.inf for name in info.conditions}
    zeros = 0
    # Sums of x and x^2 in float64 over at most ~1e9 showers: plenty of precision for a summary.
    total = total_sq = 0.0
    with progress_bar(info.n_showers, "info", unit="shower", enabled=progress) as bar:
        for chunk in iter_showers(path, chunk_size, info.geometry):
            for name in info.conditions:
                values = chunk.condition(name)
                low[name] = min(low[name], float(values.min()))
                high[name] = max(high[name], float(values.max()))
            zeros += int(np.count_nonzero(chunk.showers == 0))
            fraction = chunk.showers.sum(axis=1, dtype=np.float64) / chunk.condition("energy")
            total += float(fraction.sum())
            total_sq += float(np.square(fraction).sum())
            bar.update(len(chunk))
    n = info.n_showers
    if n == 0:
        return FileSummary(info, {}, None, None, None)
    mean = total / n
    std = math.sqrt(max(total_sq / n - mean * mean, 0.0))
    return FileSummary(
        info=info, ranges={name: (low[name], high[name]) for name in info.conditions},
        sparsity=zeros / (n * info.geometry.n_voxels), deposit_fraction_mean=mean, deposit_fraction_std=std,
    )
