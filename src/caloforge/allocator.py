"""Where the C allocator puts large blocks: a process-wide setting for CPU speed, applied by ``caloforge``'s
command (``cli.main``) and by the speed benchmarks, never implicitly by the library.

PyTorch's CPU tensors come from the C allocator. glibc's serves blocks above its mmap threshold (128 kB,
raised on the fly up to 32 MB) with fresh pages from the kernel and hands them back when freed, so a
generation step that makes and drops tensors of tens of MB pays page faults and zeroing for every one,
every call. With the threshold at its largest (2 GB) they come from the heap and its freed memory is
reused. On this project's 2-core host (docs/benchmarks.md, 2026-12-05) that made the DiT student 22 % faster
a shower at batch 100 and 26 % at batch 10000, and the mdma-gan sampler 42 % at batch 10000; the showers are
the same. Freed heap memory at the top of the heap is still returned to the system.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["LARGEST_HEAP_BLOCK", "heap_for_large_tensors"]

LARGEST_HEAP_BLOCK = 2**31 - 1  # bytes: the largest threshold ``mallopt`` takes (an int)
_M_MMAP_THRESHOLD = -3  # glibc's malloc.h


def heap_for_large_tensors() -> bool:
    """Serve blocks up to ``LARGEST_HEAP_BLOCK`` bytes from the heap (glibc's ``mallopt``; module doc) and
    return whether the setting took. Nothing changes where the C library is not glibc, or where the user
    set the threshold (``MALLOC_MMAP_THRESHOLD_`` or ``GLIBC_TUNABLES``): their setting stays."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ or \
            "mmap_threshold" in tunables:
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and other C libraries: no libc.so.6 or no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, LARGEST_HEAP_BLOCK))
