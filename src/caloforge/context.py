"""What a trained model needs besides its weights and config: geometry, fitted preprocessing, condition
spec and the span of the training conditions. Fitted once from the training showers, saved in every
checkpoint and every exported graph, shared by all families.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from caloforge.conditioning import ConditionRanges, ConditionSpec, ConditionTable
from caloforge.data import ShowerChunks
from caloforge.geometry import CylindricalGeometry
from caloforge.preprocess import PreprocessConfig, ShowerPreprocessor

__all__ = ["RunContext"]


@dataclass(frozen=True)
class RunContext:
    """Geometry, preprocessing (fitted), condition spec and training ranges of a run."""

    geometry: CylindricalGeometry
    preprocessor: ShowerPreprocessor
    spec: ConditionSpec
    ranges: ConditionRanges

    @classmethod
    def fit(
        cls, showers: ShowerChunks, preprocess: PreprocessConfig | None = None, detector_slots: int = 0
    ) -> RunContext:
        """Fit the preprocessing and the condition spec to ``showers`` (a ``ShowerSet`` or an
        ``io.ShowerSource``; three passes over its chunks, none holding more than a chunk) with at least
        ``detector_slots`` one-hot detector slots, and record their condition ranges."""
        table = ConditionTable.of(showers)
        spec = ConditionSpec.fit(table)
        if detector_slots > spec.n_detectors:
            spec = replace(spec, n_detectors=detector_slots)
        return cls(
            geometry=showers.geometry,
            preprocessor=ShowerPreprocessor.fit(showers, preprocess),
            spec=spec,
            ranges=ConditionRanges.from_showers(table),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain types only, so a checkpoint holding it loads with ``torch.load(weights_only=True)``."""
        return {
            "geometry": self.geometry.to_dict(),
            "preprocess": self.preprocessor.to_dict(),
            "conditions": self.spec.to_dict(),
            "ranges": self.ranges.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunContext:
        return cls(
            geometry=CylindricalGeometry.from_dict(data["geometry"]),
            preprocessor=ShowerPreprocessor.from_dict(data["preprocess"]),
            spec=ConditionSpec.from_dict(data["conditions"]),
            ranges=ConditionRanges.from_dict(data["ranges"]),
        )
