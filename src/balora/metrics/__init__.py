"""Metrics of the standard evaluation protocol: plain typed functions returning Python floats.

``classification``: accuracy, NLL, Brier, expected / maximum calibration error (15 equal-width
bins, torchmetrics' convention), AUROC / AUPR of an uncertainty score, AURC and selective
accuracy. ``regression``: MAE, RMSE, Gaussian NLL, CRPS, Spearman / Pearson correlation,
miscalibration area (uncertainty-toolbox's definition) and interval coverage.
``classification_metrics`` and ``regression_metrics`` bundle each protocol into one dict.

Inputs may be torch tensors, numpy arrays or lists; everything is computed in float64 and bad
input (shape mismatch, empty, NaN/inf, invalid probabilities or labels, non-positive std)
raises ``ValueError`` naming the argument.
"""

from balora.metrics.classification import (
    accuracy,
    aupr,
    aurc,
    auroc,
    brier_score,
    classification_metrics,
    expected_calibration_error,
    max_calibration_error,
    nll,
    selective_accuracy,
)
from balora.metrics.regression import (
    crps_gaussian,
    gaussian_nll,
    interval_coverage,
    mae,
    miscalibration_area,
    pearson,
    regression_metrics,
    rmse,
    spearman,
)

__all__ = [
    "accuracy",
    "aupr",
    "aurc",
    "auroc",
    "brier_score",
    "classification_metrics",
    "crps_gaussian",
    "expected_calibration_error",
    "gaussian_nll",
    "interval_coverage",
    "mae",
    "max_calibration_error",
    "miscalibration_area",
    "nll",
    "pearson",
    "regression_metrics",
    "rmse",
    "selective_accuracy",
    "spearman",
]
