"""Writing shower files, whole or chunk by chunk, atomically.

``ShowerWriter`` is the one way caloforge writes showers: resizable HDF5 datasets in a temporary file
next to the target, renamed into place when the ``with`` block ends without error and deleted when it
does not, so no half-written output is ever left behind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np
from numpy.typing import DTypeLike, NDArray

from caloforge.data import CONDITION_NAMES, ShowerSet
from caloforge.errors import InputError, UnknownNameError
from caloforge.geometry import CylindricalGeometry, get_geometry
from caloforge.io.atomic import atomic_output
from caloforge.io.formats import FORMATS, GEOMETRY_ATTRIBUTE, MEDIUM_ATTRIBUTE

__all__ = ["ShowerWriter", "write_showers"]

_CHUNK_BYTES = 1 << 20  # ~1 MiB HDF5 chunks: small enough for row-range reads, large enough to compress
_FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504 MeV


class ShowerWriter:
    """Context manager that writes showers to an HDF5 file in chunks.

    Args:
        path: output file; only appears once the ``with`` block has finished without error.
        geometry: readout of the showers (preset name or geometry); stored as a JSON attribute.
        format: ``"calochallenge"`` (showers (N, n_voxels)) or ``"par04"`` (showers (N, R, PHI, Z)).
        dtype: storage dtype of the showers, float16, float32 or float64. float16 holds at most
            65504 MeV per voxel; larger deposits raise ``InputError`` rather than become inf.
        conditions: conditions to write; ``energy`` is required, ``theta``, ``phi``, ``detector`` optional.
            Every appended set must carry them; they keep the dtype of the first appended set.
        expected_n: number of showers expected in total, to size the datasets once (optional).
        compression: HDF5 filter for the showers (``"gzip"``, ``"lzf"`` or ``None``).
        medium: the calorimeter medium the showers were made in, when it is not the geometry's own
            (e.g. ``caloforge simulate --material``); stored as the ``caloforge_medium`` attribute.

    Example::

        with ShowerWriter("out.h5", "calochallenge-2", conditions=("energy", "theta")) as writer:
            for chunk in chunks:
                writer.append(chunk)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        geometry: str | CylindricalGeometry,
        format: str = "calochallenge",
        dtype: DTypeLike = np.float32,
        conditions: Sequence[str] = ("energy",),
        expected_n: int | None = None,
        compression: str | None = None,
        medium: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.geometry = get_geometry(geometry) if isinstance(geometry, str) else geometry
        if format not in FORMATS:
            raise UnknownNameError("file format", format, FORMATS)
        self.layout = FORMATS[format]
        if self.layout.showers_rank == 4 and not self.geometry.is_regular:
            raise InputError(self.path, "showers", f"geometry '{self.geometry.name}' has per-layer binning",
                             "a regular geometry for the par04 layout (R, PHI, Z)")
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float16, np.float32, np.float64):
            raise InputError(self.path, "showers", f"storage dtype {self.dtype} requested",
                             "float16, float32 or float64")
        unknown = [c for c in conditions if c not in CONDITION_NAMES]
        if unknown or "energy" not in conditions:
            raise InputError(self.path, None, f"conditions {tuple(conditions)} requested",
                             f"'energy' plus any of {', '.join(CONDITION_NAMES[1:])}")
        self.conditions = tuple(dict.fromkeys(conditions))
        self.expected_n = expected_n
        self.compression = compression
        self.medium = medium
        self.n = 0
        self._capacity = 0
        self._context: AbstractContextManager[Path] | None = None
        self._h5: Any = None
        self._datasets: dict[str, Any] = {}

    # ---- context ----------------------------------------------------------------------------------
    def __enter__(self) -> ShowerWriter:
        self._context = atomic_output(self.path)
        tmp = self._context.__enter__()
        try:
            self._h5 = h5py.File(tmp, "w")
            self._h5.attrs[GEOMETRY_ATTRIBUTE] = json.dumps(self.geometry.to_dict())
            self._h5.attrs["caloforge_format"] = self.layout.name
            if self.medium is not None:
                self._h5.attrs[MEDIUM_ATTRIBUTE] = self.medium
        except BaseException as error:
            self._context.__exit__(type(error), error, error.__traceback__)
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None,
    ) -> None:
        context, self._context = self._context, None
        if context is None:
            return
        try:
            if exc_type is None:
                if not self._datasets:
                    self._create({})  # an empty but well-formed file
                for ds in self._datasets.values():
                    ds.resize(self.n, axis=0)
            self._h5.close()
        except BaseException as error:
            context.__exit__(type(error), error, error.__traceback__)
            raise
        context.__exit__(exc_type, exc, tb)

    # ---- writing ----------------------------------------------------------------------------------
    def _create(self, dtypes: dict[str, np.dtype[Any]]) -> None:
        item = self._item_shape()
        size = max(self.expected_n or 0, 0)
        rows = max(1, min(4096, _CHUNK_BYTES // max(1, int(np.prod(item)) * self.dtype.itemsize)))
        rows = min(rows, size) if size else rows  # a small file gets no chunk bigger than itself
        self._datasets["showers"] = self._h5.create_dataset(
            self.layout.showers_key, shape=(size, *item), maxshape=(None, *item), dtype=self.dtype,
            chunks=(rows, *item), compression=self.compression,
        )
        for name in self.conditions:
            shape: tuple[int, ...] = (1,) if name == "energy" and self.layout.showers_rank == 2 else ()
            default = np.dtype(np.int64) if name == "detector" else np.dtype(np.float32)
            self._datasets[name] = self._h5.create_dataset(
                self.layout.key(name), shape=(size, *shape), maxshape=(None, *shape),
                dtype=dtypes.get(name, default), chunks=(max(rows, 1024), *shape),
            )
        self._capacity = size

    def _item_shape(self) -> tuple[int, ...]:
        if self.layout.showers_rank == 2:
            return (self.geometry.n_voxels,)
        n_layers, n_alpha, n_radial = self.geometry.grid_shape
        return (n_radial, n_alpha, n_layers)

    def _stored(self, showers: ShowerSet) -> NDArray[Any]:
        """The showers as they go into the file: storage dtype, flat or (N, R, PHI, Z)."""
        values = showers.showers
        if self.dtype == np.float16 and values.size and float(np.max(values)) > _FLOAT16_MAX:
            raise InputError(self.path, "showers", f"has deposits up to {float(np.max(values)):.4g} MeV, "
                             "beyond float16's 65504", "float32 storage for these showers")
        values = values.astype(self.dtype, copy=False)
        return values if self.layout.showers_rank == 2 else self.geometry.to_par04(values)

    def append(self, showers: ShowerSet) -> None:
        """Add a set of showers at the end of the file."""
        if self._context is None:
            raise RuntimeError("ShowerWriter.append needs an open writer: use it in a 'with' block")
        if showers.geometry.layers != self.geometry.layers:
            raise InputError(showers.source, "showers", f"are in geometry '{showers.geometry.name}'",
                             f"showers in the writer's geometry '{self.geometry.name}'")
        values: dict[str, NDArray[Any]] = {}
        for name in self.conditions:
            value = getattr(showers, name)
            if value is None:
                raise InputError(showers.source, name, "is missing from the showers being written",
                                 f"every appended set to carry {', '.join(self.conditions)}")
            values[name] = np.asarray(value).reshape(-1)
        stored = self._stored(showers)
        if not self._datasets:
            self._create({name: v.dtype for name, v in values.items()})
        start, stop = self.n, self.n + len(showers)
        if stop > self._capacity:
            self._capacity = max(stop, int(self._capacity * 1.5))
            for ds in self._datasets.values():
                ds.resize(self._capacity, axis=0)
        self._datasets["showers"][start:stop] = stored
        for name, value in values.items():
            ds = self._datasets[name]
            ds[start:stop] = value.reshape(-1, *ds.shape[1:])
        self.n = stop


def write_showers(
    path: str | os.PathLike[str],
    showers: ShowerSet,
    format: str = "calochallenge",
    dtype: DTypeLike = np.float32,
    compression: str | None = None,
) -> None:
    """Write a whole ``ShowerSet`` atomically, with every condition it carries.

    Args:
        path: output file.
        showers: showers (N, n_voxels) in MeV and their conditions.
        format: ``"calochallenge"`` or ``"par04"``.
        dtype: storage dtype of the showers (float16, float32, float64); conditions keep theirs.
        compression: HDF5 filter for the showers (``"gzip"``, ``"lzf"`` or ``None``).
    """
    present = [name for name in CONDITION_NAMES if getattr(showers, name) is not None]
    with ShowerWriter(path, showers.geometry, format, dtype, present, len(showers), compression) as writer:
        writer.append(showers)
