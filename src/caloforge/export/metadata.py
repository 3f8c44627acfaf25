"""What every exported graph carries: the ``caloforge`` metadata entry and the format constants.

The entry (JSON in the ONNX file's ``metadata_props``) holds::

    {"format": 2, "graph": "sampler" | "par04" | <extra graph name>, "family": ..., "context": {geometry,
     preprocess, conditions, ranges}, "noise": [NoiseSpec dicts], "options": {n_steps, sampler, ...},
     "training_steps": ..., ...family extras}

so ``caloforge.onnx_runtime`` generates from the file alone. Graphs of format 1 (edm-dit only, before the
family contract) are read too.
"""

from __future__ import annotations

from typing import Any

__all__ = ["METADATA_FORMAT", "METADATA_KEY", "ONNX_OPSET", "PAR04_DETECTOR_SLOTS", "PAR04_GEV", "metadata"]

ONNX_OPSET = 17  # onnxruntime >= 1.14 runs it; the TorchScript exporter supports it fully
METADATA_KEY = "caloforge"
METADATA_FORMAT = 2
# Par04InferenceSetup.cc (CaloDiT-2): genVector.assign(8, 0) = E, phi, theta + 5 detector slots
# (Par04SiW, Par04SciPb, ODD, FCCeeCLD, one free slot for an adapted detector).
PAR04_DETECTOR_SLOTS = 5
PAR04_GEV = 1000.0  # MeV per GeV: the C++ multiplies the output by 1000 (GeV -> Geant4's MeV)


def metadata(generator: Any, sampler: Any, graph: str, **extra: Any) -> dict[str, Any]:
    """The entry for ``graph`` exported from ``generator`` (a ``ShowerGenerator``) with ``sampler``."""
    content = generator.content
    return {
        "format": METADATA_FORMAT,
        "graph": graph,
        "family": content.family,
        "context": content.context.to_dict(),
        "noise": [spec.to_dict() for spec in sampler.noise],
        "options": dict(sampler.options),
        "training_steps": content.step,
        **sampler.metadata(),
        **extra,
    }
