"""Atomic outputs: write to a temporary path next to the target, rename on success, delete on failure.

Every writer in caloforge (shower files, reports, checkpoints, ONNX graphs) goes through
``atomic_output``, so an interrupted or failed run never leaves a half-written file where a finished
one is expected. The temporary path sits in the target's directory because ``os.replace`` is atomic
only within one file system.

A process killed outright (SIGKILL, the out-of-memory killer, a batch system's time limit, a power cut)
cannot delete its temporary, and the hidden file may be many GB. So the temporary's name records who
wrote it, ``.{stem}.tmp-{pid}-{host}-{random}{suffix}`` (``host``: 8 hex digits of a hash of the host
name), and the next ``atomic_output`` of the same target removes the temporaries of that target whose
writer is gone (see ``remove_stale_temporaries``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_output", "remove_stale_temporaries"]

logger = logging.getLogger(__name__)

# Temporaries in the naming of caloforge before the writer's PID was recorded carry no owner; they are
# removed once nothing has modified them for this long (see remove_stale_temporaries).
UNOWNED_STALE_AFTER_S = 15 * 60


def _host_tag(hostname: str | None = None) -> str:
    """8 hex digits naming this host (PIDs only mean something on the host that issued them)."""
    name = socket.gethostname() if hostname is None else hostname
    return hashlib.sha256(name.encode()).hexdigest()[:8]


def _temporary_sibling(target: Path, tag: str) -> Path:
    # Keep the suffix so that tools which infer a format from it (matplotlib, onnx) still work.
    owner = f"{os.getpid()}-{_host_tag()}"
    return target.with_name(f".{target.stem}.{tag}-{owner}-{secrets.token_hex(4)}{target.suffix}")


def _pattern(target: Path) -> re.Pattern[str]:
    """Names of ``target``'s temporaries, this naming and the former pid-less one, and nothing else."""
    return re.compile(
        rf"\.{re.escape(target.stem)}\.(?:tmp|old)-(?:(?P<pid>[0-9]+)-(?P<host>[0-9a-f]{{8}})-)?"
        rf"[0-9a-f]{{8}}{re.escape(target.suffix)}"
    )


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (when unsure, say yes: nothing is then removed)."""
    if os.name != "posix":
        return True  # os.kill(pid, 0) would terminate the process on Windows
    if pid <= 0:
        return False  # no writer has such a PID; os.kill would address a process group
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OverflowError:
        return False  # beyond any PID the system can issue
    except OSError:
        return True  # e.g. PermissionError: it exists and belongs to another user
    return True


def _size(path: Path) -> int:
    """Bytes of a file, or of the files in a directory tree."""
    if path.is_symlink() or not path.is_dir():
        return path.lstat().st_size
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _megabytes(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.1f} MB"


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries an earlier ``atomic_output`` of ``path`` left behind when it was killed.

    Only names ``atomic_output`` gives to ``path``'s own temporaries are considered, in ``path``'s
    directory: ``.{stem}.tmp-...{suffix}`` and ``.{stem}.old-...{suffix}`` with exactly ``path``'s stem
    and suffix. Of those, one is removed when

    - it names its writer (``{pid}-{host}-{8 hex}``), the host is this one and no process ``pid`` exists
      here any more. A write in progress in a live process is never touched. A temporary of another
      host (a shared file system) is treated as one without an owner, below, since its PID cannot be
      checked from here.
    - it names no writer (``{8 hex}`` only: caloforge before the PID was recorded, or another host) and
      nothing has modified it for ``UNOWNED_STALE_AFTER_S`` (15 minutes). Not unconditionally: such a
      file may be a write still going on elsewhere, and an HDF5 file being written is modified at
      least every few minutes (every chunk of showers), so a quarter of an hour without a change
      means nobody is writing it.

    A reused PID only keeps a stale temporary a little longer. What is removed is logged (warning, with
    its size); failures to remove are logged and ignored, since the new write does not depend on them.

    Returns:
        the paths removed.
    """
    target = Path(path)
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return []
    pattern = _pattern(target)
    here = _host_tag()
    removed: list[Path] = []
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None:
            continue
        candidate = Path(entry.path)
        try:
            pid, host = match.group("pid"), match.group("host")
            if pid is not None and host == here:
                if _alive(int(pid)):
                    continue
                why = f"left by process {pid}, which no longer runs"
            else:
                age = time.time() - candidate.lstat().st_mtime
                if age < UNOWNED_STALE_AFTER_S:
                    continue
                owner = "another host's process" if pid is not None else "a writer that recorded no PID"
                why = f"left by {owner}, unchanged for {age / 60:.0f} min"
            size = _size(candidate)
            _remove(candidate)
        except OSError as error:
            logger.warning("could not remove stale temporary %s: %s", candidate, error)
            continue
        if candidate.exists() or candidate.is_symlink():
            logger.warning("could not remove stale temporary %s (%s)", candidate, _megabytes(size))
            continue
        logger.warning("removed stale temporary %s (%s), %s", candidate, _megabytes(size), why)
        removed.append(candidate)
    return removed


@contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``: renamed to ``path`` on success, removed on any exception.

    The body may create a file or a directory at the yielded path. An existing file at ``path`` is
    replaced in one ``os.replace``; an existing directory is moved aside first and deleted after the
    new one is in place. Missing parent directories are created. Temporaries of ``path`` that a killed
    process left behind are removed first (``remove_stale_temporaries``).

    Example::

        with atomic_output("report.html") as tmp:
            tmp.write_text(html)
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    tmp = _temporary_sibling(target, "tmp")
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written for {target} (expected {tmp} to exist)")
        if tmp.is_dir() and target.is_dir():
            old = _temporary_sibling(target, "old")
            os.replace(target, old)
            os.replace(tmp, target)
            _remove(old)
        else:
            os.replace(tmp, target)
    except BaseException:
        # BaseException: a Ctrl-C must not leave the temporary file behind either.
        _remove(tmp)
        raise
