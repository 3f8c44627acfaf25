"""Validation: CaloChallenge high-level features, metrics (separation power, classifier AUC/JSD, FPD,
KPD), reference-vs-generated plots and an HTML report.

>>> from caloforge.evaluate import EvaluateConfig, evaluate_files
>>> metrics = evaluate_files("generated.h5", "reference.h5", "report/", EvaluateConfig(seed=1))
>>> metrics["classifier"]["low"]["auc"]
"""

from caloforge.evaluate.classifier import (
    OFFICIAL_CLASSIFIER,
    ClassifierConfig,
    ClassifierResult,
    classifier_test,
    low_level_inputs,
)
from caloforge.evaluate.features import (
    THRESHOLD_MEV,
    FeatureAccumulator,
    Features,
    compute_features,
    high_level_vector,
)
from caloforge.evaluate.histograms import HistogramSpec, histogram_specs, separation_powers
from caloforge.evaluate.metrics import (
    frechet_distance,
    frechet_physics_distance,
    gaussian_frechet_distance,
    histogram_separation,
    kernel_physics_distance,
    mmd_polynomial_unbiased,
    separation_power,
)
from caloforge.evaluate.pipeline import EvaluateConfig, Sample, collect, evaluate_files, evaluate_sets

__all__ = [
    "OFFICIAL_CLASSIFIER",
    "THRESHOLD_MEV",
    "ClassifierConfig",
    "ClassifierResult",
    "EvaluateConfig",
    "FeatureAccumulator",
    "Features",
    "HistogramSpec",
    "Sample",
    "classifier_test",
    "collect",
    "compute_features",
    "evaluate_files",
    "evaluate_sets",
    "frechet_distance",
    "frechet_physics_distance",
    "gaussian_frechet_distance",
    "high_level_vector",
    "histogram_separation",
    "histogram_specs",
    "kernel_physics_distance",
    "low_level_inputs",
    "mmd_polynomial_unbiased",
    "separation_power",
    "separation_powers",
]
