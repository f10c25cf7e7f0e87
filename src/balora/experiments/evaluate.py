"""From predictions to metrics: the evaluation protocol of a comparison, as pure functions.

    classification  classification_metrics(p̄, y, uncertainty = total entropy)
                    + mean total / aleatoric / epistemic (nats)
                    + with an OOD set: AUROC / AUPR of "is OOD" scored by the total entropy
                      and by the epistemic part (test = 0, OOD = 1)
    regression      regression_metrics(mean, std = sqrt(total + noise variance), y)
                    + Spearman(epistemic std, |error|), mean variances, OOD AUROC / AUPR

NaN from the metric functions (undefined entries) become ``None`` with a reason.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from balora.metrics import aupr, auroc, classification_metrics, regression_metrics, spearman
from balora.predict import Prediction

Metrics = dict[str, float | None]
Reasons = dict[str, str]

# Why a metric can be undefined; any other NaN gets a generic reason.
UNDEFINED_REASONS = {
    "auroc_error": "every test prediction is correct, or every one is wrong: no errors to rank",
    "aupr_error": "every test prediction is correct, or every one is wrong: no errors to rank",
    "spearman_std_abs_error": "the predicted std or the absolute error is constant",
    "pearson_std_abs_error": "the predicted std or the absolute error is constant",
    "spearman_epistemic_abs_error": (
        "the epistemic std or the absolute error is constant (e.g. a method that does not sample)"
    ),
}

# The variance floor of regression predictions: regression_metrics needs std > 0.
VARIANCE_FLOOR = 1e-12


def _np(x: Tensor) -> np.ndarray:
    return x.detach().to(device="cpu", dtype=torch.float64).numpy()


def _clean(metrics: dict[str, float]) -> tuple[Metrics, Reasons]:
    out: Metrics = {}
    reasons: Reasons = {}
    for key, value in metrics.items():
        if value is None or not math.isfinite(value):
            out[key] = None
            reasons[key] = UNDEFINED_REASONS.get(key, "undefined (NaN or infinite) for this input")
        else:
            out[key] = float(value)
    return out, reasons


def _ood_scores(in_dist: np.ndarray, ood: np.ndarray, name: str) -> dict[str, float]:
    scores = np.concatenate([in_dist, ood])
    is_ood = np.concatenate([np.zeros(in_dist.shape[0]), np.ones(ood.shape[0])])
    return {f"auroc_ood_{name}": auroc(scores, is_ood), f"aupr_ood_{name}": aupr(scores, is_ood)}


def _ood_metrics(pred: Prediction, ood: Prediction) -> dict[str, float]:
    total, epistemic = _np(pred.total).reshape(-1), _np(pred.epistemic).reshape(-1)
    ood_total, ood_epistemic = _np(ood.total).reshape(-1), _np(ood.epistemic).reshape(-1)
    return {
        **_ood_scores(total, ood_total, "total"),
        **_ood_scores(epistemic, ood_epistemic, "epistemic"),
        "mean_total_ood": float(ood_total.mean()),
        "mean_epistemic_ood": float(ood_epistemic.mean()),
    }


def classification_evaluation(
    pred: Prediction, labels: Tensor, ood: Prediction | None = None
) -> tuple[Metrics, Reasons]:
    """Metrics of class probabilities `pred.mean` (n, C) against `labels` (n,).

    Keys: ``accuracy, nll, brier, ece, mce, auroc_error, aupr_error, aurc`` (from
    `classification_metrics` with the total predictive entropy as the uncertainty),
    ``mean_total, mean_aleatoric, mean_epistemic`` and, with `ood`, ``auroc_ood_total,
    aupr_ood_total, auroc_ood_epistemic, aupr_ood_epistemic, mean_total_ood,
    mean_epistemic_ood``. Returns the metrics (``None`` where undefined) and the reasons.
    """
    total = _np(pred.total)
    metrics = classification_metrics(_np(pred.mean), labels.cpu(), uncertainty=total)
    metrics["mean_total"] = float(total.mean())
    metrics["mean_aleatoric"] = float(_np(pred.aleatoric).mean())
    metrics["mean_epistemic"] = float(_np(pred.epistemic).mean())
    if ood is not None:
        metrics.update(_ood_metrics(pred, ood))
    return _clean(metrics)


def regression_std(pred: Prediction, noise_variance: float = 0.0) -> np.ndarray:
    """The predictive std used by the regression metrics, flattened: sqrt(total + noise)."""
    var = _np(pred.total).reshape(-1) + noise_variance
    return np.sqrt(np.maximum(var, VARIANCE_FLOOR))


def regression_evaluation(
    pred: Prediction,
    targets: Tensor,
    ood: Prediction | None = None,
    noise_variance: float = 0.0,
) -> tuple[Metrics, Reasons]:
    """Metrics of a Gaussian predictive N(pred.mean, pred.total + noise_variance) against
    `targets` (every output dimension pooled).

    Keys: ``mae, rmse, nll, crps, spearman_std_abs_error, pearson_std_abs_error,
    miscalibration_area, coverage_68, coverage_95`` (from `regression_metrics`),
    ``spearman_epistemic_abs_error`` (how well the epistemic std alone ranks the error),
    ``mean_total, mean_aleatoric, mean_epistemic`` (variances), ``noise_variance`` and, with
    `ood`, the OOD AUROC / AUPR of the total and the epistemic variance.
    """
    mean = _np(pred.mean).reshape(-1)
    target = _np(targets).reshape(-1)
    if mean.shape != target.shape:
        raise ValueError(
            f"predictions ({tuple(pred.mean.shape)}) and targets ({tuple(targets.shape)}) "
            "hold different numbers of values"
        )
    metrics = regression_metrics(mean, regression_std(pred, noise_variance), target)
    epistemic = _np(pred.epistemic).reshape(-1)
    abs_err = np.abs(target - mean)
    try:
        metrics["spearman_epistemic_abs_error"] = spearman(np.sqrt(epistemic), abs_err)
    except ValueError:  # constant: undefined
        metrics["spearman_epistemic_abs_error"] = math.nan
    metrics["mean_total"] = float(_np(pred.total).mean())
    metrics["mean_aleatoric"] = float(_np(pred.aleatoric).mean())
    metrics["mean_epistemic"] = float(epistemic.mean())
    metrics["noise_variance"] = float(noise_variance)
    if ood is not None:
        metrics.update(_ood_metrics(pred, ood))
    return _clean(metrics)


def alpha_values(per_batch: list[dict[str, Tensor]]) -> dict[str, np.ndarray]:
    """Concatenate `last_alpha` records (name -> (b, k)) of consecutive batches per layer."""
    names = list(per_batch[0]) if per_batch else []
    return {n: np.concatenate([_np(b[n]).reshape(-1) for b in per_batch]) for n in names}
