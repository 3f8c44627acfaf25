"""Atomic outputs: write to a temporary path next to the target, rename on success, delete on failure.

Every writer in caloforge (shower files, reports, checkpoints, ONNX graphs) goes through
``atomic_output``, so an interrupted or failed run never leaves a half-written file where a finished
one is expected. The temporary path sits in the target's directory because ``os.replace`` is atomic
only within one file system.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_output"]


def _temporary_sibling(target: Path, tag: str) -> Path:
    # Keep the suffix so that tools which infer a format from it (matplotlib, onnx) still work.
    return target.with_name(f".{target.stem}.{tag}-{secrets.token_hex(4)}{target.suffix}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``: renamed to ``path`` on success, removed on any exception.

    The body may create a file or a directory at the yielded path. An existing file at ``path`` is
    replaced in one ``os.replace``; an existing directory is moved aside first and deleted after the
    new one is in place. Missing parent directories are created.

    Example::

        with atomic_output("report.html") as tmp:
            tmp.write_text(html)
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
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
