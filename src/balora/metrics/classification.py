"""Classification metrics: accuracy, proper scores, calibration and uncertainty quality.

Every function takes array-likes (torch tensors, numpy arrays or lists), validates them, then
computes in float64 numpy and returns a Python ``float``. Shapes: ``probs`` is ``(n, C)`` with
rows summing to 1, ``labels`` is ``(n,)`` with integer class indices in ``[0, C)``; the
ranking metrics take ``(n,)`` scores and ``(n,)`` binary targets.

    probs, labels ──► accuracy, nll, brier_score, expected/max_calibration_error
    score, target ──► auroc, aupr                  (e.g. uncertainty vs "is an error")
    confidence, correct ──► aurc, selective_accuracy
    all of the above ──► classification_metrics (one dict)

Ties in the score or confidence never depend on the input order: the ranking metrics follow
scikit-learn (averaged ranks, one threshold per distinct score) and the selective metrics
average over all orderings of tied examples.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import rankdata

from balora.metrics._validate import (
    ArrayLike,
    as_float_array,
    as_int_array,
    check_binary,
    check_both_classes,
    check_count,
    check_fraction,
    check_labels,
    check_probs,
    check_same_length,
)

__all__ = [
    "NLL_EPS",
    "accuracy",
    "aupr",
    "aurc",
    "auroc",
    "brier_score",
    "classification_metrics",
    "expected_calibration_error",
    "max_calibration_error",
    "nll",
    "selective_accuracy",
]

NLL_EPS = 1e-12
"""Probabilities are clamped to at least this in :func:`nll` (caps one example's NLL at ~27.6)."""


# ── validation ──────────────────────────────────────────────────────────────────────────────


def _validate_probs_labels(probs: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p = as_float_array(probs, "probs", ndim=2)
    y = as_int_array(labels, "labels")
    check_same_length(probs=p, labels=y)
    check_probs(p, "probs")
    check_labels(y, p.shape[1], "labels")
    return p, y


def _validate_binary_pair(
    x: ArrayLike, x_name: str, t: ArrayLike, t_name: str
) -> tuple[np.ndarray, np.ndarray]:
    xs = as_float_array(x, x_name, ndim=1)
    ts = as_int_array(t, t_name)
    check_same_length(**{x_name: xs, t_name: ts})
    check_binary(ts, t_name)
    return xs, ts


# ── compute (clean float64 input assumed) ───────────────────────────────────────────────────


def _correct(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    # np.argmax takes the first index among tied maxima.
    return (np.argmax(p, axis=1) == y).astype(np.float64)


def _nll(p: np.ndarray, y: np.ndarray) -> float:
    p_true = p[np.arange(y.shape[0]), y]
    return float(-np.mean(np.log(np.maximum(p_true, NLL_EPS))))


def _brier(p: np.ndarray, y: np.ndarray) -> float:
    onehot = np.zeros_like(p)
    onehot[np.arange(y.shape[0]), y] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def _calibration_gaps(p: np.ndarray, y: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """|accuracy - confidence| and size of each non-empty top-label confidence bin."""
    conf = p.max(axis=1)
    correct = _correct(p, y)
    # torchmetrics' convention: edges = torch.linspace(0, 1, n_bins + 1) (not np.linspace, whose
    # edges differ in the last bit), bin k = [edge_k, edge_{k+1}) via bucketize(right=True), so
    # a confidence of exactly 1.0 lands in an extra bin of its own, index n_bins.
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64).numpy()
    idx = np.searchsorted(edges, conf, side="right") - 1
    count = np.bincount(idx, minlength=n_bins + 1)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins + 1)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins + 1)
    full = count > 0
    gaps = np.abs(acc_sum[full] - conf_sum[full]) / count[full]
    return gaps, count[full]


def _auroc(s: np.ndarray, t: np.ndarray) -> float:
    # Mann-Whitney U with averaged ranks == trapezoidal ROC area with ties (as sklearn).
    n_pos = t.sum()
    n_neg = t.shape[0] - n_pos
    rank_sum = rankdata(s, method="average")[t == 1].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _aupr(s: np.ndarray, t: np.ndarray) -> float:
    order = np.argsort(-s, kind="stable")
    s, t = s[order], t[order].astype(np.float64)
    tp = np.cumsum(t)
    fp = np.cumsum(1.0 - t)
    # One threshold per distinct score: keep the last position of each block of tied scores.
    last = np.r_[np.flatnonzero(np.diff(s)), s.shape[0] - 1]
    tp, fp = tp[last], fp[last]
    precision = tp / (tp + fp)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def _expected_topk_sums(confidence: np.ndarray, values: np.ndarray) -> np.ndarray:
    """E[sum of ``values`` over the k most confident examples], k = 1..n.

    Examples are sorted by confidence, descending; within a block of tied confidences the
    expectation is over a uniformly random order, which makes the cumulative sum linear
    inside the block.
    """
    n = confidence.shape[0]
    order = np.argsort(-confidence, kind="stable")
    c, v = confidence[order], values[order]
    starts = np.r_[0, np.flatnonzero(np.diff(c)) + 1]
    sizes = np.diff(np.r_[starts, n])
    block_sum = np.add.reduceat(v, starts)
    before = np.cumsum(block_sum) - block_sum
    block = np.repeat(np.arange(starts.shape[0]), sizes)  # (n,) block index of each position
    k = np.arange(1, n + 1)
    return before[block] + (k - starts[block]) * (block_sum / sizes)[block]


def _aurc(confidence: np.ndarray, correct: np.ndarray) -> float:
    n = confidence.shape[0]
    errors = _expected_topk_sums(confidence, 1.0 - correct.astype(np.float64))
    return float(np.mean(errors / np.arange(1, n + 1)))


def _selective_accuracy(confidence: np.ndarray, correct: np.ndarray, coverage: float) -> float:
    n = confidence.shape[0]
    # ceil(coverage * n) without float noise: 0.1 * 30 is 3.0000000000000004, which means 3.
    m = max(1, math.ceil(coverage * n - 1e-9))
    hits = _expected_topk_sums(confidence, correct.astype(np.float64))
    return float(hits[m - 1] / m)


# ── public API ──────────────────────────────────────────────────────────────────────────────


def accuracy(probs: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of examples whose most probable class (first one among ties) is the label.

    Args:
        probs: ``(n, C)`` class probabilities, rows summing to 1.
        labels: ``(n,)`` integer class indices in ``[0, C)``.

    >>> accuracy([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]], [0, 1, 1])
    0.6666666666666666
    """
    p, y = _validate_probs_labels(probs, labels)
    return float(np.mean(_correct(p, y)))


def nll(probs: ArrayLike, labels: ArrayLike) -> float:
    """Mean negative log-likelihood of the labels, ``-mean_i log max(p[i, y_i], NLL_EPS)``.

    The probability of the true class is clamped at ``NLL_EPS = 1e-12`` so that a confident
    mistake with probability 0 costs ``-log(1e-12) ≈ 27.6`` instead of infinity.

    >>> round(nll([[0.5, 0.5], [0.25, 0.75]], [0, 1]), 6)
    0.490415
    >>> round(nll([[1.0, 0.0]], [1]), 2)  # clamped
    27.63
    """
    p, y = _validate_probs_labels(probs, labels)
    return _nll(p, y)


def brier_score(probs: ArrayLike, labels: ArrayLike) -> float:
    """Multi-class Brier score: ``mean_i sum_c (p[i, c] - 1[y_i = c])^2``, in ``[0, 2]``.

    This is the original (Brier, 1950) multi-class form, summed over classes; for two classes
    it is twice the binary ``sklearn.metrics.brier_score_loss`` of the positive class.

    >>> brier_score([[0.75, 0.25], [0.5, 0.5]], [0, 1])
    0.3125
    """
    p, y = _validate_probs_labels(probs, labels)
    return _brier(p, y)


def expected_calibration_error(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> float:
    """Top-label expected calibration error with equal-width bins (L1, weighted by bin size).

    ``ECE = sum_b (|B_b| / n) * |acc(B_b) - conf(B_b)|`` where the confidence of an example is
    its largest probability, ``acc``/``conf`` are the mean correctness/confidence in a bin, and
    bins are the ``n_bins`` intervals ``[k / n_bins, (k + 1) / n_bins)`` on [0, 1]. This is the
    convention of torchmetrics' ``multiclass_calibration_error(norm="l1")`` (and of BLoB)
    exactly, including its edge case: a confidence of exactly 1.0 falls in an extra bin of its
    own rather than in the last interval.

    Args:
        probs: ``(n, C)`` class probabilities, rows summing to 1.
        labels: ``(n,)`` integer class indices in ``[0, C)``.
        n_bins: number of equal-width bins (>= 1); 15 is the field's standard.

    >>> probs = [[0.9, 0.1], [0.85, 0.15], [0.3, 0.7]]  # confidences 0.9, 0.85, 0.7
    >>> round(expected_calibration_error(probs, [0, 1, 1], n_bins=5), 6)  # 2/3 * 0.375 + 1/3 * 0.3
    0.35
    """
    p, y = _validate_probs_labels(probs, labels)
    n_bins = check_count(n_bins, "n_bins")
    gaps, counts = _calibration_gaps(p, y, n_bins)
    return float(np.sum(gaps * counts) / y.shape[0])


def max_calibration_error(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> float:
    """Top-label maximum calibration error: ``max_b |acc(B_b) - conf(B_b)|`` over non-empty bins.

    Bins as in :func:`expected_calibration_error` (torchmetrics ``norm="max"``).

    >>> probs = [[0.9, 0.1], [0.85, 0.15], [0.3, 0.7]]
    >>> round(max_calibration_error(probs, [0, 1, 1], n_bins=5), 6)  # bin [0.8, 1): |0.5 - 0.875|
    0.375
    """
    p, y = _validate_probs_labels(probs, labels)
    n_bins = check_count(n_bins, "n_bins")
    gaps, _ = _calibration_gaps(p, y, n_bins)
    return float(np.max(gaps))


def auroc(scores: ArrayLike, targets: ArrayLike) -> float:
    """Area under the ROC curve of ``scores`` for binary ``targets`` (1 = positive).

    Equal to the probability that a random positive scores higher than a random negative, ties
    counting one half (``sklearn.metrics.roc_auc_score``). Typical use: ``scores`` is an
    uncertainty and ``targets`` marks errors or out-of-distribution inputs.

    Raises:
        ValueError: if ``targets`` holds only one class.

    >>> auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    0.75
    """
    s, t = _validate_binary_pair(scores, "scores", targets, "targets")
    check_both_classes(t, "targets")
    return _auroc(s, t)


def aupr(scores: ArrayLike, targets: ArrayLike) -> float:
    """Area under the precision-recall curve as average precision, ``sum_k (R_k - R_{k-1}) P_k``.

    One threshold per distinct score, highest first, exactly as
    ``sklearn.metrics.average_precision_score`` (no interpolation).

    Raises:
        ValueError: if ``targets`` holds only one class.

    >>> round(aupr([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]), 6)
    0.833333
    """
    s, t = _validate_binary_pair(scores, "scores", targets, "targets")
    check_both_classes(t, "targets")
    return _aupr(s, t)


def aurc(confidence: ArrayLike, correct: ArrayLike) -> float:
    """Area under the risk-coverage curve (lower is better).

    Sort the ``n`` examples by ``confidence``, descending. The selective risk at coverage
    ``k / n`` is the error rate among the ``k`` most confident examples, and
    ``AURC = (1 / n) * sum_{k=1..n} risk_k``. Among tied confidences the risk is averaged over
    every order of the tied examples, so the result does not depend on the input order.

    Args:
        confidence: ``(n,)`` confidence scores (higher = more confident).
        correct: ``(n,)`` 1 for a correct prediction, 0 for an error (bools accepted).

    >>> round(aurc([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 1]), 6)  # (0 + 1/2 + 1/3 + 1/4) / 4
    0.270833
    """
    c, ok = _validate_binary_pair(confidence, "confidence", correct, "correct")
    return _aurc(c, ok)


def selective_accuracy(confidence: ArrayLike, correct: ArrayLike, coverage: float) -> float:
    """Accuracy on the ``ceil(coverage * n)`` most confident examples, ``0 < coverage <= 1``.

    Ties at the cut-off are averaged over every order of the tied examples (see :func:`aurc`).

    >>> selective_accuracy([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 1], coverage=0.5)
    0.5
    """
    c, ok = _validate_binary_pair(confidence, "confidence", correct, "correct")
    coverage = check_fraction(coverage, "coverage")
    return _selective_accuracy(c, ok, coverage)


def classification_metrics(
    probs: ArrayLike,
    labels: ArrayLike,
    uncertainty: ArrayLike | None = None,
    n_bins: int = 15,
) -> dict[str, float]:
    """The standard evaluation protocol for classification in one dict.

    Keys: ``accuracy``, ``nll``, ``brier``, ``ece``, ``mce``; with an ``(n,)`` ``uncertainty``
    (higher = less certain) also ``auroc_error`` and ``aupr_error`` (uncertainty as a score
    for "the prediction is wrong") and ``aurc`` (confidence = ``-uncertainty``). When every
    prediction is right, or every one wrong, ``auroc_error`` and ``aupr_error`` are undefined
    and set to ``nan`` rather than raising, so a sweep survives a perfect model.

    >>> m = classification_metrics([[0.9, 0.1], [0.2, 0.8]], [0, 0], uncertainty=[0.1, 0.3])
    >>> m["accuracy"], m["auroc_error"], m["aurc"]
    (0.5, 1.0, 0.25)
    """
    p, y = _validate_probs_labels(probs, labels)
    n_bins = check_count(n_bins, "n_bins")
    gaps, counts = _calibration_gaps(p, y, n_bins)
    correct = _correct(p, y)
    out = {
        "accuracy": float(np.mean(correct)),
        "nll": _nll(p, y),
        "brier": _brier(p, y),
        "ece": float(np.sum(gaps * counts) / y.shape[0]),
        "mce": float(np.max(gaps)),
    }
    if uncertainty is not None:
        u = as_float_array(uncertainty, "uncertainty", ndim=1)
        check_same_length(probs=p, uncertainty=u)
        is_error = (1.0 - correct).astype(np.int64)
        one_class = is_error.min() == is_error.max()
        out["auroc_error"] = math.nan if one_class else _auroc(u, is_error)
        out["aupr_error"] = math.nan if one_class else _aupr(u, is_error)
        out["aurc"] = _aurc(-u, correct)
    return out
