"""Typed configuration dataclasses from plain dicts and YAML files.

Every config in caloforge is a dataclass of plain types (numbers, strings, tuples, nested dataclasses).
``from_dict`` builds one from a dict, checking every key: an unknown or misspelled key is an error
naming the key and the known ones, never silently ignored. ``to_dict`` is its inverse, so a config can
be saved in a checkpoint and rebuilt from it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from os import PathLike
from pathlib import Path
from typing import Any, TypeVar

import yaml

from caloforge.errors import InputError

__all__ = ["from_dict", "load_yaml", "read_yaml_mapping", "set_dotted", "to_dict"]

T = TypeVar("T")


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as nested plain dicts/lists (tuples become lists), for YAML or checkpoints."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    result = plain(config)
    if not isinstance(result, dict):
        raise TypeError(f"{type(config).__name__} is not a dataclass instance")
    return result


def _convert(hint: Any, value: Any, where: str, path: str | None) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(value, dict):
            raise InputError(path, where, f"is {value!r}", "a mapping of the section's keys")
        return _build(hint, value, where, path)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, where, path) if len(inner) == 1 else value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise InputError(path, where, f"is {value!r}", "a list")
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, where, path) for v in value)
        if len(args) != len(value):
            raise InputError(path, where, f"has {len(value)} entries", f"{len(args)} entries")
        return tuple(_convert(a, v, where, path) for a, v in zip(args, value, strict=True))
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is float:
        # YAML 1.1 reads '2e-4' (no dot in the mantissa) as a string: take it as the number it spells.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise InputError(path, where, f"is {value!r}", "a number")
    if hint in (int, str, bool) and not isinstance(value, hint):
        raise InputError(path, where, f"is {value!r}", f"a value of type {hint.__name__}")
    if hint is int and isinstance(value, bool):
        raise InputError(path, where, f"is {value!r}", "an integer")
    return value


def _build(cls: type[T], data: dict[str, Any], prefix: str, path: str | None) -> T:
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        name = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise InputError(path, name, "is not a known key", f"one of {', '.join(sorted(fields))}")
    kwargs = {
        key: _convert(hints[key], value, f"{prefix}.{key}" if prefix else key, path)
        for key, value in data.items()
    }
    return cls(**kwargs)


def from_dict(
    cls: type[T], data: dict[str, Any] | None, path: str | PathLike[str] | None = None, prefix: str = ""
) -> T:
    """Build config ``cls`` from ``data``; missing keys take the dataclass defaults.

    Raises ``InputError`` (naming ``path`` and the dotted key, after ``prefix`` when ``data`` is a section
    of a larger file) for unknown keys and wrongly typed values.
    """
    if data is not None and not isinstance(data, dict):
        raise InputError(path, prefix or None, f"is {data!r}", "a mapping of the section's keys")
    return _build(cls, dict(data or {}), prefix, None if path is None else str(path))


def read_yaml_mapping(path: str | PathLike[str]) -> dict[str, Any]:
    """The mapping a YAML config file holds (an empty file gives ``{}``)."""
    text = Path(path).read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise InputError(path, None, f"is not valid YAML ({error})", "a YAML mapping") from None
    if data is not None and not isinstance(data, dict):
        raise InputError(path, None, f"holds a {type(data).__name__}", "a YAML mapping of config sections")
    return dict(data or {})


def load_yaml(cls: type[T], path: str | PathLike[str]) -> T:
    """Read config ``cls`` from a YAML file (a mapping; an empty file gives the defaults)."""
    return from_dict(cls, read_yaml_mapping(path), path)


def set_dotted(data: dict[str, Any], key: str, value: Any, option: str = "--set") -> None:
    """Set ``SECTION.KEY`` (dotted, creating sections) in a nested config dict; ``option`` names where the
    key came from in errors."""
    *sections, last = key.strip().split(".")
    if not last:
        raise InputError(None, option, f"has an empty key in '{key}'", "SECTION.KEY")
    node = data
    for name in sections:
        child = node.setdefault(name, {})
        if not isinstance(child, dict):
            raise InputError(None, option, f"'{key}' goes below '{name}', which is not a section",
                             "SECTION.KEY")
        node = child
    node[last] = value
