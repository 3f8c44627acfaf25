"""Where the C allocator puts large blocks: a process-wide setting for CPU speed, applied by ``caloforge``'s
command (``cli.main``) and by the speed benchmarks, never implicitly by the library.

PyTorch's CPU tensors come from the C allocator. glibc's serves blocks above its mmap threshold (128 kB,
raised on the fly up to 32 MB) with fresh pages from the kernel and hands them back when freed, and gives
the top of its heap back once more than a trim threshold is free there. A generation step that makes and
drops tensors of tens of MB to GB paid page faults and zeroing for every one, every call. With the
threshold at its largest (2 GB) and no trimming, they come from the heap and freed memory is reused: the
process keeps the memory of its largest step until it ends. On this project's 2-core host
(docs/benchmarks.md, 2026-12-05) generation was a quarter to a half faster a shower, the same showers bit
for bit; the trimming alone was half of it (mallopt's largest trim threshold, 2 GB, still trimmed after
the DiT's batches of 2000).
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["LARGEST_HEAP_BLOCK", "heap_for_large_tensors"]

LARGEST_HEAP_BLOCK = 2**31 - 1  # bytes: the largest threshold ``mallopt`` takes (an int)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h


def heap_for_large_tensors() -> bool:
    """Serve blocks up to ``LARGEST_HEAP_BLOCK`` bytes from the heap and never trim it (glibc's ``mallopt``;
    module doc); returns whether the settings took. Nothing changes where the C library is not glibc, or
    where the user set either threshold (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or
    ``GLIBC_TUNABLES``): their settings stay."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if not sys.platform.startswith("linux") or any(
            name in os.environ for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")) or any(
            name in tunables for name in ("mmap_threshold", "trim_threshold")):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and other C libraries: no libc.so.6 or no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    never = -1  # mallopt's int, read as a size_t: SIZE_MAX
    return bool(mallopt(_M_MMAP_THRESHOLD, LARGEST_HEAP_BLOCK) and mallopt(_M_TRIM_THRESHOLD, never))
