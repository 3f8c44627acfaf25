"""ONNX export of any family's sampler (``graphs``) and the metadata every graph carries (``metadata``)."""

from caloforge.export.graphs import (
    CONDITION_INPUTS,
    Par04Graph,
    example_inputs,
    export_checkpoint,
    export_extras,
    export_par04,
    export_sampler,
    par04_permutation,
    write_onnx,
)
from caloforge.export.metadata import (
    METADATA_FORMAT,
    METADATA_KEY,
    ONNX_OPSET,
    PAR04_DETECTOR_SLOTS,
    PAR04_GEV,
)

__all__ = [
    "CONDITION_INPUTS",
    "METADATA_FORMAT",
    "METADATA_KEY",
    "ONNX_OPSET",
    "PAR04_DETECTOR_SLOTS",
    "PAR04_GEV",
    "Par04Graph",
    "example_inputs",
    "export_checkpoint",
    "export_extras",
    "export_par04",
    "export_sampler",
    "par04_permutation",
    "write_onnx",
]
