"""Models and reference showers shipped inside the package, usable offline.

``index.json`` beside this file lists each shipped model: its checkpoint file (a slim format-2 checkpoint:
the ``caloforge`` entry and the step count only, ``caloforge.checkpoint.write_sampler_checkpoint``), what it
was trained on, its conditions and its measured fidelity, with the command that measured it. Reference
samples (e.g. Geant4 showers for the demo) are listed under ``samples``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from caloforge.errors import UnknownNameError

__all__ = ["PretrainedModel", "ReferenceSample", "list_models", "list_samples", "model_path", "sample_path"]


@dataclass(frozen=True)
class PretrainedModel:
    """A shipped model (an entry of ``index.json``).

    Attributes:
        name: what ``--pretrained`` takes.
        file: the checkpoint's file name in this package.
        family: the model family.
        description: one line.
        training_data: what it was trained on (source, particle, energies, number of showers).
        conditions: the conditions it takes and their training ranges (energy in MeV, angles in radians).
        metrics: measured fidelity (e.g. ``auc_low``, ``auc_high``) and speed, against what, by which command.
    """

    name: str
    file: str
    family: str
    description: str
    training_data: str
    conditions: str
    metrics: dict[str, Any]


@dataclass(frozen=True)
class ReferenceSample:
    """A shipped shower sample (an entry of ``index.json``'s ``samples``)."""

    name: str
    file: str
    description: str


def _root() -> Path:
    return Path(str(resources.files(__package__)))


def _index() -> dict[str, Any]:
    path = _root() / "index.json"
    return json.loads(path.read_text()) if path.exists() else {"models": [], "samples": []}


def list_models() -> list[PretrainedModel]:
    """The shipped models, in the index's order."""
    return [PretrainedModel(**entry) for entry in _index()["models"]]


def list_samples() -> list[ReferenceSample]:
    """The shipped reference samples."""
    return [ReferenceSample(**entry) for entry in _index()["samples"]]


def model_path(name: str) -> Path:
    """The checkpoint file of shipped model ``name``."""
    models = {m.name: m for m in list_models()}
    if name not in models:
        raise UnknownNameError("pretrained model", name, models)
    return _root() / models[name].file


def sample_path(name: str) -> Path:
    """The HDF5 file of shipped reference sample ``name``."""
    samples = {s.name: s for s in list_samples()}
    if name not in samples:
        raise UnknownNameError("reference sample", name, samples)
    return _root() / samples[name].file
