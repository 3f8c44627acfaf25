"""The C allocator setting (``caloforge.allocator``): large blocks come from the heap once it is applied."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

from caloforge.allocator import heap_for_large_tensors


def _glibc() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


# In a fresh interpreter: bytes in mmapped blocks while a 64 MB array lives, before and after the setting.
_PROBE = """
import ctypes, json, sys
import numpy as np
from caloforge.allocator import heap_for_large_tensors

class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info

def mapped_while_held():
    block = np.ones(64 * 2**20, dtype=np.uint8)
    held = libc.mallinfo2().hblkhd
    del block
    return held

before = mapped_while_held()
took = heap_for_large_tensors()
print(json.dumps({"before": before, "took": took, "after": mapped_while_held()}))
"""


@pytest.mark.skipif(not _glibc(), reason="the setting is glibc's (mallopt, mallinfo2)")
def test_large_blocks_come_from_the_heap_once_applied() -> None:
    import json

    result = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True,
                            env={"PATH": "/usr/bin:/bin"})
    probe = json.loads(result.stdout)
    assert probe["took"] is True
    assert probe["before"] >= 64 * 2**20  # glibc's default: a 64 MB block is mapped on its own
    assert probe["after"] < 2**20  # from the heap now


def test_a_threshold_the_user_set_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
    assert heap_for_large_tensors() is False
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=1048576")
    assert heap_for_large_tensors() is False
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1048576")
    assert heap_for_large_tensors() is False
