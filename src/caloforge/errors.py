"""Exceptions raised by caloforge.

Library code raises these; only ``cli.py`` turns them into messages and exit codes. Every error about
input names the file, the field and what was expected, so a user can fix the input without a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from os import PathLike

__all__ = ["CaloforgeError", "InputError", "UnknownNameError"]


class CaloforgeError(Exception):
    """Base class of every error caloforge raises on purpose."""


class InputError(CaloforgeError, ValueError):
    """Bad input data: names the file, the field and what was expected.

    Args:
        path: the file the data came from (``None`` for in-memory arrays).
        field: the HDF5 key, attribute or argument at fault (``None`` for the file as a whole).
        problem: what is wrong, e.g. ``"contains 3 NaN values"``.
        expected: what would have been right, e.g. ``"shape (N, 1)"``.
    """

    def __init__(
        self,
        path: str | PathLike[str] | None,
        field: str | None,
        problem: str,
        expected: str | None = None,
    ) -> None:
        self.path = None if path is None else str(path)
        self.field = field
        self.problem = problem
        self.expected = expected
        where = self.path if self.path is not None else "<in memory>"
        text = f"{where}: {problem}" if field is None else f"{where}: field '{field}': {problem}"
        if expected:
            text += f"; expected {expected}"
        super().__init__(text)


class UnknownNameError(CaloforgeError, KeyError):
    """A name (preset, material, sampler, ...) that is not known; suggests the closest known ones."""

    def __init__(self, kind: str, name: str, known: Iterable[str]) -> None:
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.4)
        text = f"unknown {kind} '{name}'"
        if close:
            text += f"; did you mean {' or '.join(repr(c) for c in close)}?"
        text += f" Known: {', '.join(known)}"
        self.kind, self.name, self.known, self.suggestions = kind, name, known, close
        super().__init__(text)

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0])
