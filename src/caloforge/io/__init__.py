"""Shower files: CaloChallenge and Par04/LEMURS HDF5, whole or streamed, written atomically.

>>> from caloforge.io import read_showers, iter_showers, write_showers
>>> showers = read_showers("dataset_2_1.hdf5")            # geometry found from the file
>>> for chunk in iter_showers("big.h5", chunk_size=5000):  # never more than one chunk in memory
...     ...
>>> write_showers("out.h5", showers, format="par04", dtype="float16")
"""

from caloforge.io.atomic import atomic_output
from caloforge.io.convert import convert_file
from caloforge.io.formats import FORMAT_NAMES, FORMATS, GEOMETRY_ATTRIBUTE, Layout, detect_format
from caloforge.io.reader import FileInfo, inspect_file, iter_showers, read_sample, read_showers
from caloforge.io.summary import FileSummary, summarize_file
from caloforge.io.writer import ShowerWriter, write_showers

__all__ = [
    "FORMATS",
    "FORMAT_NAMES",
    "GEOMETRY_ATTRIBUTE",
    "FileInfo",
    "FileSummary",
    "Layout",
    "ShowerWriter",
    "atomic_output",
    "convert_file",
    "detect_format",
    "inspect_file",
    "iter_showers",
    "read_sample",
    "read_showers",
    "summarize_file",
    "write_showers",
]
