"""``ShowerSource``: showers left on disk (one or several files of one geometry), read in blocks of rows.

Training sets can be larger than memory (about 1M showers per detector in the Par04/LEMURS production,
40,500 voxels a shower in CaloChallenge dataset 3). A source splits its files into blocks of at most
``block_rows`` consecutive rows, never crossing a file, and reads any list of blocks as one ``ShowerSet``
(one contiguous HDF5 slice per block, so reads are fast on any chunking). The streaming data module
(``caloforge.datamodule``) shuffles blocks and rows within a few blocks; fitting the preprocessing walks
``chunks()``. Only the blocks asked for are ever in memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import DTypeLike, NDArray

from caloforge.data import ShowerSet
from caloforge.errors import InputError
from caloforge.geometry import CylindricalGeometry
from caloforge.io.reader import FileInfo, GeometryLike, _ShowerFile, inspect_file

__all__ = ["ShowerSource"]


@dataclass(frozen=True)
class ShowerSource:
    """Showers in files, addressed by blocks.

    Attributes:
        files: the files' descriptions (``inspect_file``), all of one geometry.
        blocks: (B, 3) int64 rows of (file index, first row, end row), end exclusive.
        block_rows: the most rows a block holds.
        dtype: dtype showers are read as (``None``: their storage dtype, e.g. float16).
    """

    files: tuple[FileInfo, ...]
    blocks: NDArray[np.int64]
    block_rows: int
    dtype: DTypeLike | None = None

    @classmethod
    def open(
        cls,
        paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        block_rows: int = 4096,
        geometry: GeometryLike = None,
        dtype: DTypeLike | None = None,
    ) -> ShowerSource:
        """Describe ``paths`` (no shower data read) and cut them into blocks of ``block_rows`` rows.

        Raises ``InputError`` naming the file when one cannot be read as showers, holds none, or has
        another geometry than the first.
        """
        if block_rows < 1:
            raise ValueError(f"block_rows must be >= 1, got {block_rows}")
        names = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        if not names:
            raise ValueError("a ShowerSource needs at least one file")
        files: list[FileInfo] = []
        for name in names:
            info = inspect_file(name, geometry if geometry is not None or not files else files[0].geometry)
            if info.n_showers == 0:
                raise InputError(name, "showers", "holds no showers", "at least one shower")
            if files and info.geometry != files[0].geometry:
                raise InputError(name, "geometry", f"is '{info.geometry.name}'",
                                 f"'{files[0].geometry.name}', the geometry of {files[0].path}")
            files.append(info)
        rows = [
            (index, start, min(start + block_rows, info.n_showers))
            for index, info in enumerate(files)
            for start in range(0, info.n_showers, block_rows)
        ]
        return cls(tuple(files), np.asarray(rows, dtype=np.int64).reshape(-1, 3), block_rows, dtype)

    @property
    def geometry(self) -> CylindricalGeometry:
        return self.files[0].geometry

    @property
    def source(self) -> str:
        """The files, for messages."""
        return ", ".join(info.path for info in self.files)

    def __len__(self) -> int:
        return int((self.blocks[:, 2] - self.blocks[:, 1]).sum())

    @property
    def n_bytes(self) -> int:
        """Bytes of shower data read for all rows, in the read dtype."""
        itemsize = np.dtype(self.dtype or self.files[0].showers_dtype).itemsize
        return len(self) * self.geometry.n_voxels * itemsize

    def subset(self, blocks: NDArray[np.integer]) -> ShowerSource:
        """The source restricted to the blocks at these indices (e.g. a validation split)."""
        return ShowerSource(self.files, self.blocks[np.asarray(blocks, dtype=np.int64)], self.block_rows,
                            self.dtype)

    def read(self, blocks: Sequence[int] | NDArray[np.integer]) -> ShowerSet:
        """The rows of the blocks at these indices, block after block, as one checked ``ShowerSet``, filled
        into one array as blocks are read (no list of parts and second copy). A condition some files lack
        takes its default in their rows; the condition columns are those of the whole source."""
        wanted = self.blocks[np.asarray(blocks, dtype=np.int64)].reshape(-1, 3)
        if not len(wanted):
            raise ValueError("no blocks to read")
        n = int((wanted[:, 2] - wanted[:, 1]).sum())
        dtype = np.dtype(self.dtype or self.files[0].showers_dtype)
        showers = np.empty((n, self.geometry.n_voxels), dtype=dtype)
        energy = np.empty(n, dtype=np.float64)
        present = [c for c in ("theta", "phi", "detector") if any(c in f.conditions for f in self.files)]
        columns: dict[str, NDArray[Any]] = {
            c: np.empty(n, dtype=np.int64 if c == "detector" else np.float64) for c in present
        }
        opened: dict[int, _ShowerFile] = {}
        position = 0
        try:
            for file_index, start, stop in wanted.tolist():
                if file_index not in opened:
                    opened[file_index] = _ShowerFile(self.files[file_index].path, self.geometry)
                part = opened[file_index].read(start, stop, self.dtype)
                rows = slice(position, position + len(part))
                showers[rows], energy[rows] = part.showers, part.energy
                for name, column in columns.items():
                    column[rows] = part.condition(name)
                position += len(part)
        finally:
            for f in opened.values():
                f.h5.close()
        return ShowerSet(showers, self.geometry, energy, columns.get("theta"), columns.get("phi"),
                         columns.get("detector"), source=self.source)

    def block_detectors(self) -> NDArray[np.int64]:
        """Each block's detector index (n_blocks,), that of its first row (0 in files without a ``detector``
        dataset), read from the detector datasets alone."""
        labels = np.zeros(len(self.blocks), dtype=np.int64)
        columns: dict[int, NDArray[np.int64]] = {}
        for block, (file_index, start, _) in enumerate(self.blocks.tolist()):
            if "detector" not in self.files[file_index].conditions:
                continue
            if file_index not in columns:
                with _ShowerFile(self.files[file_index].path, self.geometry) as f:
                    columns[file_index] = np.asarray(f.conditions["detector"][:], dtype=np.int64)
            labels[block] = columns[file_index][start]
        return labels

    def load(self) -> ShowerSet:
        """Every row in memory, in file order, in one array."""
        return self.read(np.arange(len(self.blocks)))

    def chunks(self) -> Iterator[ShowerSet]:
        """Every row, one block at a time, in file order."""
        for index in range(len(self.blocks)):
            yield self.read([index])
