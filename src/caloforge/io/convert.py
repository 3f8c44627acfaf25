"""Streaming conversion between shower-file layouts (and storage dtypes)."""

from __future__ import annotations

import os

from numpy.typing import DTypeLike

from caloforge.io.reader import FileInfo, GeometryLike, inspect_file, iter_showers
from caloforge.io.writer import ShowerWriter
from caloforge.progress import progress_bar

__all__ = ["convert_file"]


def convert_file(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    to: str,
    geometry: GeometryLike = None,
    dtype: DTypeLike | None = None,
    chunk_size: int = 10_000,
    compression: str | None = None,
    progress: bool = False,
) -> FileInfo:
    """Copy a shower file into layout ``to`` chunk by chunk; the destination appears only when complete.

    Args:
        source, destination: HDF5 files; the destination is written atomically.
        to: ``"calochallenge"`` or ``"par04"``.
        geometry: geometry of the source, when it cannot be found from the file.
        dtype: storage dtype of the showers in the destination; by default the source's.
        chunk_size: showers in memory at a time.
        compression: HDF5 filter for the destination's showers.
        progress: show progress on stderr (``caloforge.progress``: a bar on a terminal, a few lines
            otherwise).
    Returns:
        the description of the written file.
    """
    info = inspect_file(source, geometry)
    dtype = info.showers_dtype if dtype is None else dtype
    with ShowerWriter(destination, info.geometry, to, dtype, info.conditions, info.n_showers,
                      compression, medium=info.medium) as writer, progress_bar(
        info.n_showers, "convert", unit="shower", enabled=progress,
    ) as bar:
        for chunk in iter_showers(source, chunk_size, info.geometry):
            writer.append(chunk)
            bar.update(len(chunk))
    return inspect_file(destination)
