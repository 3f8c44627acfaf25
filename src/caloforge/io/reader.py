"""Reading shower files: whole, in chunks (files larger than memory), or just their description.

Every problem with a file is an ``InputError`` naming the file, the HDF5 key and what was expected:
missing or unreadable files, missing keys, wrong ranks or lengths, shapes no geometry fits, and values
no shower can have (checked chunk by chunk, so a 40 GB file is validated without being loaded whole).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from numpy.typing import DTypeLike, NDArray

from caloforge.data import ShowerSet
from caloforge.errors import InputError
from caloforge.geometry import PRESETS, CylindricalGeometry, get_geometry
from caloforge.io.formats import FORMATS, GEOMETRY_ATTRIBUTE, MEDIUM_ATTRIBUTE, Layout, detect_format

__all__ = ["FileInfo", "GeometryLike", "inspect_file", "iter_showers", "read_sample", "read_showers"]

GeometryLike = str | CylindricalGeometry | None
PathLike = str | os.PathLike[str]
_OPTIONAL = ("theta", "phi", "detector")
_ANGLE_TOLERANCE = 1e-5  # radians; float32 rounding of pi and 2 pi


@dataclass(frozen=True)
class FileInfo:
    """What a shower file holds, read from shapes and attributes only (no shower data).

    Attributes:
        path: the file.
        format: ``"calochallenge"`` or ``"par04"``.
        geometry: the readout the voxels belong to.
        geometry_source: how it was found: ``"argument"``, ``"file attribute"`` or ``"preset match"``.
        n_showers: number of showers N.
        showers_dtype: storage dtype of the showers (compares equal to ``"float32"`` and ``np.float32``).
        showers_shape: stored shape, (N, n_voxels) or (N, R, PHI, Z).
        conditions: conditions present in the file, always starting with ``"energy"``.
        condition_dtypes: storage dtype of each present condition.
        compression: HDF5 compression filter of the showers, or ``None``.
        size_bytes: file size on disk.
        medium: the medium the showers were made in, when the file says it is not the geometry's own
            (the ``caloforge_medium`` attribute, written by ``simulate --material``); else None.
    """

    path: str
    format: str
    geometry: CylindricalGeometry = field(repr=False)
    geometry_source: str
    n_showers: int
    showers_dtype: np.dtype[Any]
    showers_shape: tuple[int, ...]
    conditions: tuple[str, ...]
    condition_dtypes: dict[str, np.dtype[Any]]
    compression: str | None
    size_bytes: int
    medium: str | None = None


def _open(path: PathLike) -> h5py.File:
    """Open read-only, turning every way a path can fail to be an HDF5 file into an ``InputError``."""
    p = Path(path)
    if not p.exists():
        raise InputError(p, None, "file does not exist", "an HDF5 shower file")
    if p.is_dir():
        raise InputError(p, None, "is a directory", "an HDF5 shower file")
    if not h5py.is_hdf5(p):
        raise InputError(p, None, "is not an HDF5 file (no HDF5 signature)",
                         "an HDF5 shower file (CaloChallenge or Par04/LEMURS layout)")
    try:
        return h5py.File(p, "r")
    except OSError as error:
        raise InputError(p, None, f"is a truncated or corrupt HDF5 file ({error})",
                         "a complete HDF5 file") from None


def _fits(geometry: CylindricalGeometry, layout: Layout, item_shape: tuple[int, ...]) -> bool:
    """Whether one stored shower of shape ``item_shape`` belongs to ``geometry`` in ``layout``."""
    if layout.showers_rank == 2:
        return item_shape == (geometry.n_voxels,)
    if not geometry.is_regular:
        return False
    n_layers, n_alpha, n_radial = geometry.grid_shape
    return item_shape == (n_radial, n_alpha, n_layers)


def _expected_shape(geometry: CylindricalGeometry, layout: Layout) -> str:
    if layout.showers_rank == 2:
        return f"(N, {geometry.n_voxels}) for geometry '{geometry.name}'"
    if not geometry.is_regular:
        return f"a regular geometry for the par04 layout ('{geometry.name}' has per-layer binning)"
    n_layers, n_alpha, n_radial = geometry.grid_shape
    return f"(N, R, PHI, Z) = (N, {n_radial}, {n_alpha}, {n_layers}) for geometry '{geometry.name}'"


class _ShowerFile:
    """An open, validated shower file: layout, geometry and datasets, read by row ranges."""

    def __init__(self, path: PathLike, geometry: GeometryLike) -> None:
        self.path = str(path)
        self.h5 = _open(path)
        try:
            self._validate(geometry)
        except BaseException:
            self.h5.close()
            raise

    def __enter__(self) -> _ShowerFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.h5.close()

    # ---- structure --------------------------------------------------------------------------------
    def _dataset(self, key: str) -> Any:
        node = self.h5.get(key)
        if node is None:
            raise InputError(self.path, key, "is missing", f"a '{key}' dataset")
        if not isinstance(node, h5py.Dataset):
            raise InputError(self.path, key, "is a group", "a dataset")
        return node

    def _validate(self, geometry: GeometryLike) -> None:
        self.format = detect_format(self.h5, self.path)
        self.layout = layout = FORMATS[self.format]
        self.showers = self._dataset(layout.showers_key)
        shape = tuple(self.showers.shape)
        if len(shape) != layout.showers_rank:
            expected = "(N, n_voxels)" if layout.showers_rank == 2 else "(N, R, PHI, Z)"
            raise InputError(self.path, layout.showers_key, f"has rank {len(shape)} (shape {shape})",
                             f"rank {layout.showers_rank}, {expected}, for a {self.format} file")
        if self.showers.dtype.kind != "f":
            raise InputError(self.path, layout.showers_key, f"has dtype {self.showers.dtype}",
                             "floating-point energies in MeV (float16, float32 or float64)")
        self.n = shape[0]
        self.conditions: dict[str, Any] = {"energy": self._condition("energy", energy=True)}
        for name in _OPTIONAL:
            if layout.key(name) in self.h5:
                self.conditions[name] = self._condition(name)
        self.geometry, self.geometry_source = self._geometry(geometry, shape[1:])

    def _condition(self, name: str, energy: bool = False) -> Any:
        key = self.layout.key(name)
        ds = self._dataset(key)
        shape = tuple(ds.shape)
        # Energies are (N, 1) in CaloChallenge files and (N,) in Par04's root2h5 output; accept both.
        ok = len(shape) == 1 or (energy and len(shape) == 2 and shape[1] == 1)
        if not ok:
            raise InputError(self.path, key, f"has shape {shape}",
                             "(N,) or (N, 1)" if energy else "(N,), one value per shower")
        if shape[0] != self.n:
            raise InputError(self.path, key, f"has {shape[0]} entries but '{self.layout.showers_key}' "
                             f"has {self.n} showers", "one entry per shower")
        kind = "iu" if name == "detector" else "fiu"
        if ds.dtype.kind not in kind:
            raise InputError(self.path, key, f"has dtype {ds.dtype}",
                             "integer detector indices" if name == "detector" else "numbers")
        return ds

    def _geometry(
        self, requested: GeometryLike, item_shape: tuple[int, ...],
    ) -> tuple[CylindricalGeometry, str]:
        key = self.layout.showers_key
        if requested is not None:
            geometry = get_geometry(requested) if isinstance(requested, str) else requested
            if not _fits(geometry, self.layout, item_shape):
                raise InputError(self.path, key, f"has shape (N, {', '.join(map(str, item_shape))})",
                                 _expected_shape(geometry, self.layout))
            return geometry, "argument"
        stored = self.h5.attrs.get(GEOMETRY_ATTRIBUTE)
        if stored is not None:
            field = f"attribute {GEOMETRY_ATTRIBUTE}"
            try:
                text = stored.decode() if isinstance(stored, bytes) else str(stored)
                geometry = CylindricalGeometry.from_dict(json.loads(text))
            except (ValueError, KeyError, TypeError) as error:
                raise InputError(self.path, field, f"is not a valid geometry ({error})",
                                 "the JSON caloforge writes") from None
            if not _fits(geometry, self.layout, item_shape):
                raise InputError(self.path, key, f"has shape (N, {', '.join(map(str, item_shape))})",
                                 f"{_expected_shape(geometry, self.layout)} (from the file's {field})")
            return geometry, "file attribute"
        return self._match_preset(item_shape), "preset match"

    def _match_preset(self, item_shape: tuple[int, ...]) -> CylindricalGeometry:
        key = self.layout.showers_key
        matches = [g for g in PRESETS.values() if _fits(g, self.layout, item_shape)]
        if len(matches) > 1:
            # Prefer the presets named after the file's own layout: a CaloChallenge file with 40500 voxels
            # is dataset 3, even though Par04 SiW and SciPb meshes have as many voxels.
            own = [g for g in matches if g.name.startswith(self.format)]
            matches = own or matches
        if len(matches) == 1:
            return matches[0]
        described = ", ".join(map(str, item_shape))
        if not matches:
            if self.layout.showers_rank == 2:
                tried = ", ".join(f"{g.name} ({g.n_voxels})" for g in PRESETS.values())
                problem = f"has {described} voxels per shower, which matches no known geometry"
            else:
                tried = ", ".join(
                    f"{g.name} ({g.n_radial}, {g.n_alpha}, {g.n_layers})"
                    for g in PRESETS.values() if g.is_regular
                )
                problem = f"has (R, PHI, Z) = ({described}), which matches no known geometry"
            raise InputError(self.path, key, f"{problem}; tried {tried}",
                             "a known geometry, or the geometry named explicitly (--geometry NAME)")
        names = ", ".join(g.name for g in matches)
        raise InputError(self.path, key, f"shape ({described}) fits several geometries: {names}",
                         "the geometry named explicitly (--geometry NAME)")

    def info(self) -> FileInfo:
        return FileInfo(
            path=self.path, format=self.format, geometry=self.geometry,
            geometry_source=self.geometry_source, n_showers=self.n,
            showers_dtype=self.showers.dtype, showers_shape=tuple(self.showers.shape),
            conditions=tuple(self.conditions), compression=self.showers.compression,
            condition_dtypes={name: ds.dtype for name, ds in self.conditions.items()},
            size_bytes=os.path.getsize(self.path),
            medium=str(self.h5.attrs[MEDIUM_ATTRIBUTE]) if MEDIUM_ATTRIBUTE in self.h5.attrs else None,
        )

    def require_showers(self) -> None:
        """Raise ``InputError`` when the file holds no showers."""
        if self.n == 0:
            raise InputError(self.path, self.layout.showers_key,
                             f"holds no showers (shape {tuple(self.showers.shape)})", "at least one shower")

    # ---- data -------------------------------------------------------------------------------------
    def _read(self, ds: Any, start: int, stop: int) -> NDArray[Any]:
        try:
            return np.asarray(ds[start:stop])
        except OSError as error:
            raise InputError(self.path, ds.name.lstrip("/"), f"could not be read in rows {start}:{stop} "
                             f"({error})", "an intact file (it may be truncated or corrupt)") from None

    def read(self, start: int, stop: int, dtype: DTypeLike | None = None) -> ShowerSet:
        """Rows ``start:stop`` as a checked ``ShowerSet`` (showers flat, in MeV)."""
        raw = self._read(self.showers, start, stop)
        flat = raw if self.layout.showers_rank == 2 else self.geometry.from_par04(raw)
        if dtype is not None:
            flat = flat.astype(dtype, copy=False)
        values = {name: self._read(ds, start, stop).reshape(-1) for name, ds in self.conditions.items()}
        showers = ShowerSet(
            showers=flat, geometry=self.geometry, energy=values["energy"], theta=values.get("theta"),
            phi=values.get("phi"), detector=values.get("detector"), source=self.path,
        )
        self._check(showers, start, stop)
        return showers

    def _check(self, showers: ShowerSet, start: int, stop: int) -> None:
        rows = f" (rows {start}:{stop})"
        try:
            showers.check()
        except InputError as error:
            field = self.layout.key(error.field) if error.field else None
            raise InputError(self.path, field, error.problem + rows, error.expected) from None
        # Angles in degrees are the likeliest unit mix-up; a polar angle above pi cannot be radians.
        limits = {"theta": (0.0, math.pi), "phi": (-2 * math.pi, 2 * math.pi)}
        for name, (low, high) in limits.items():
            values = getattr(showers, name)
            if values is None or len(values) == 0:
                continue
            vmin, vmax = float(np.min(values)), float(np.max(values))
            if vmin < low - _ANGLE_TOLERANCE or vmax > high + _ANGLE_TOLERANCE:
                raise InputError(self.path, self.layout.key(name), f"has values from {vmin:.4g} to "
                                 f"{vmax:.4g}{rows}", f"radians within [{low:.4g}, {high:.4g}] "
                                 "(degrees must be converted)")


def inspect_file(path: PathLike, geometry: GeometryLike = None) -> FileInfo:
    """Describe a shower file from its shapes and attributes, without reading shower data.

    Args:
        path: an HDF5 file in CaloChallenge or Par04/LEMURS layout.
        geometry: preset name or geometry to use; by default the file's ``caloforge_geometry``
            attribute, else the one preset whose shape fits.
    """
    with _ShowerFile(path, geometry) as f:
        return f.info()


def read_showers(path: PathLike, geometry: GeometryLike = None, dtype: DTypeLike | None = None) -> ShowerSet:
    """Read a whole shower file into memory as a checked ``ShowerSet``.

    Args:
        path: an HDF5 file in CaloChallenge or Par04/LEMURS layout.
        geometry: as in ``inspect_file``.
        dtype: cast the showers to this dtype; by default they keep their storage dtype. Conditions
            always keep theirs.
    Returns:
        showers (N, n_voxels) in MeV, flat in caloforge's voxel order, with every condition in the file.
    Raises:
        InputError: the file cannot be read as showers, or holds none (N = 0): whoever reads a whole
            file wants showers to train or evaluate on, and an empty set would only fail later, further
            from its cause. ``inspect_file`` describes an empty file; ``iter_showers`` yields nothing.
    """
    with _ShowerFile(path, geometry) as f:
        f.require_showers()
        return f.read(0, f.n, dtype)


def read_sample(
    path: PathLike, n_showers: int | None = None, seed: int = 0, geometry: GeometryLike = None,
    progress: bool = False,
) -> ShowerSet:
    """``n_showers`` showers of a file as float32 (a seeded random choice, in file order; all when None
    or more than the file holds), streamed so that memory holds only the chosen ones. Progress (rows
    read) goes to stderr when ``progress``. Raises ``InputError`` for a file with no showers."""
    from caloforge.progress import progress_bar

    info = inspect_file(path, geometry)
    if info.n_showers == 0:
        raise InputError(path, "showers", "holds no showers", "at least one shower")
    n = info.n_showers if n_showers is None else min(n_showers, info.n_showers)
    keep = np.zeros(info.n_showers, dtype=bool)
    keep[np.random.default_rng(seed).choice(info.n_showers, n, replace=False)] = True
    parts = []
    start = 0
    with progress_bar(info.n_showers, "read", unit="shower", enabled=progress) as bar:
        for chunk in _chunks(path, info.geometry, 0, info.n_showers, 5000, np.float32):
            mask = keep[start : start + len(chunk)]
            if mask.any():
                parts.append(chunk[mask])
            start += len(chunk)
            bar.update(len(chunk))
    showers = ShowerSet.concatenate(parts)
    showers.source = str(path)
    return showers


def iter_showers(
    path: PathLike,
    chunk_size: int = 10_000,
    geometry: GeometryLike = None,
    start: int = 0,
    stop: int | None = None,
    dtype: DTypeLike | None = None,
) -> Iterator[ShowerSet]:
    """Stream rows ``start:stop`` of a shower file in chunks of at most ``chunk_size`` showers.

    Only one chunk is in memory at a time (h5py reads the slice), so files larger than memory can be
    processed. The file is opened and validated when this is called; each chunk is checked for values
    no shower can have, with the rows at fault in the error. A file with no showers yields no chunks
    (streaming consumers decide whether that is an error; ``read_showers`` refuses it).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if start < 0 or (stop is not None and stop < start):
        raise ValueError(f"need 0 <= start <= stop, got start={start}, stop={stop}")
    info = inspect_file(path, geometry)  # fail now, not at the first next()
    end = info.n_showers if stop is None else min(stop, info.n_showers)
    return _chunks(path, info.geometry, min(start, end), end, chunk_size, dtype)


def _chunks(
    path: PathLike, geometry: CylindricalGeometry, start: int, stop: int, chunk_size: int,
    dtype: DTypeLike | None,
) -> Iterator[ShowerSet]:
    with _ShowerFile(path, geometry) as f:
        for begin in range(start, stop, chunk_size):
            yield f.read(begin, min(begin + chunk_size, stop), dtype)
