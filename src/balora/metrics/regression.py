"""Regression metrics: point error, Gaussian proper scores, calibration and uncertainty ranking.

Every function takes 1-D array-likes of length ``n`` (torch tensors, numpy arrays or lists),
validates them, then computes in float64 numpy and returns a Python ``float``. Predictions are
Gaussian, ``N(mean, std^2)``; ``std`` and ``var`` must be strictly positive.

    mean, target ──► mae, rmse
    mean, std/var, target ──► gaussian_nll, crps_gaussian, miscalibration_area, interval_coverage
    any two scores ──► spearman, pearson        (e.g. predicted std vs |error|)
    all of the above ──► regression_metrics (one dict)
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import ndtr
from scipy.stats import norm, rankdata

from balora.metrics._validate import (
    ArrayLike,
    as_float_array,
    check_count,
    check_fraction,
    check_positive,
    check_same_length,
)

__all__ = [
    "crps_gaussian",
    "gaussian_nll",
    "interval_coverage",
    "mae",
    "miscalibration_area",
    "pearson",
    "regression_metrics",
    "rmse",
    "spearman",
]


# ── validation ──────────────────────────────────────────────────────────────────────────────


def _validate(**arrays: ArrayLike) -> list[np.ndarray]:
    """1-D finite float64 arrays of equal length, in the order given."""
    out = {name: as_float_array(x, name, ndim=1) for name, x in arrays.items()}
    check_same_length(**out)
    return list(out.values())


def _validate_gaussian(
    mean: ArrayLike, scale: ArrayLike, target: ArrayLike, scale_name: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    m, s, y = _validate(mean=mean, **{scale_name: scale}, target=target)
    check_positive(s, scale_name)
    return m, s, y


def _validate_pair(a: ArrayLike, b: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    x, y = _validate(a=a, b=b)
    if x.shape[0] < 2:
        raise ValueError(f"a correlation needs at least 2 points, got {x.shape[0]}")
    for name, v in (("a", x), ("b", y)):
        if _is_constant(v):
            raise ValueError(f"`{name}` is constant ({v[0]!r}); the correlation is undefined")
    return x, y


# ── compute (clean float64 input assumed) ───────────────────────────────────────────────────


def _is_constant(v: np.ndarray) -> bool:
    return bool(np.all(v == v[0]))


def _gaussian_nll(m: np.ndarray, var: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(0.5 * (np.log(2.0 * math.pi * var) + (y - m) ** 2 / var)))


def _crps_gaussian(m: np.ndarray, s: np.ndarray, y: np.ndarray) -> float:
    # Gneiting & Raftery (2007), eq. 21: CRPS(N(m, s^2), y) = s [z (2Φ(z) - 1) + 2φ(z) - 1/√π].
    z = (y - m) / s
    pdf = np.exp(-0.5 * z**2) / math.sqrt(2.0 * math.pi)
    return float(np.mean(s * (z * (2.0 * ndtr(z) - 1.0) + 2.0 * pdf - 1.0 / math.sqrt(math.pi))))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    r = np.dot(a, b) / math.sqrt(np.dot(a, a) * np.dot(b, b))
    return float(np.clip(r, -1.0, 1.0))


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    return _pearson(rankdata(a, method="average"), rankdata(b, method="average"))


def _sd_multiples(m: np.ndarray, s: np.ndarray, y: np.ndarray) -> np.ndarray:
    # |residual| / std, written as uncertainty-toolbox does so boundary cases round the same way.
    return np.abs(m - y) / s


def _observed_proportions(sd_multiples: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Fraction of targets inside the central ``levels`` Gaussian intervals (inclusive)."""
    half_widths = norm.ppf(0.5 + levels / 2.0)  # in units of std; ppf(1) = inf
    inside = np.searchsorted(np.sort(sd_multiples), half_widths, side="right")
    return inside / sd_multiples.shape[0]


def _miscalibration_area(m: np.ndarray, s: np.ndarray, y: np.ndarray, n_levels: int) -> float:
    expected = np.linspace(0.0, 1.0, n_levels)
    d = _observed_proportions(_sd_multiples(m, s, y), expected) - expected
    # Exact integral of |d| for d linear on each segment; a segment on which d changes sign
    # is split at its zero into two triangles, of total area h (dl^2 + dr^2) / (2 (|dl| + |dr|)).
    dl, dr, h = d[:-1], d[1:], np.diff(expected)
    al, ar = np.abs(dl), np.abs(dr)
    crosses = dl * dr < 0
    denom = np.where(crosses, al + ar, 1.0)
    area = np.where(crosses, (dl**2 + dr**2) / (2.0 * denom), (al + ar) / 2.0) * h
    return float(area.sum())


def _interval_coverage(m: np.ndarray, s: np.ndarray, y: np.ndarray, level: float) -> float:
    return float(_observed_proportions(_sd_multiples(m, s, y), np.array([level]))[0])


# ── public API ──────────────────────────────────────────────────────────────────────────────


def mae(pred: ArrayLike, target: ArrayLike) -> float:
    """Mean absolute error, ``mean_i |pred_i - target_i|``.

    >>> mae([1.0, 2.0, 4.0], [1.5, 2.0, 3.0])
    0.5
    """
    p, y = _validate(pred=pred, target=target)
    return float(np.mean(np.abs(p - y)))


def rmse(pred: ArrayLike, target: ArrayLike) -> float:
    """Root mean squared error, ``sqrt(mean_i (pred_i - target_i)^2)``.

    >>> rmse([0.0, 0.0], [3.0, 4.0])  # sqrt((9 + 16) / 2)
    3.5355339059327378
    """
    p, y = _validate(pred=pred, target=target)
    return float(math.sqrt(np.mean((p - y) ** 2)))


def gaussian_nll(mean: ArrayLike, var: ArrayLike, target: ArrayLike) -> float:
    """Mean Gaussian negative log-likelihood, constant included.

    ``mean_i 0.5 * (log(2 pi var_i) + (target_i - mean_i)^2 / var_i)``. The ``0.5 log(2 pi)``
    term is kept (unlike ``torch.nn.GaussianNLLLoss``'s default), so the value is a true NLL
    in nats and comparable across papers that report it. Takes the variance, not the std.

    >>> round(gaussian_nll([0.0], [1.0], [0.0]), 6)  # 0.5 log(2 pi)
    0.918939
    """
    m, v, y = _validate_gaussian(mean, var, target, "var")
    return _gaussian_nll(m, v, y)


def crps_gaussian(mean: ArrayLike, std: ArrayLike, target: ArrayLike) -> float:
    """Mean continuous ranked probability score of Gaussian predictions (closed form).

    ``CRPS(N(mu, s^2), y) = integral (F(x) - 1[x >= y])^2 dx
    = s * (z (2 Phi(z) - 1) + 2 phi(z) - 1 / sqrt(pi))`` with ``z = (y - mu) / s``
    (Gneiting & Raftery, 2007). In the units of the target; it tends to the absolute error as
    ``s -> 0``.

    >>> round(crps_gaussian([0.0], [1.0], [0.0]), 6)  # (sqrt(2) - 1) / sqrt(pi)
    0.233695
    """
    m, s, y = _validate_gaussian(mean, std, target, "std")
    return _crps_gaussian(m, s, y)


def pearson(a: ArrayLike, b: ArrayLike) -> float:
    """Pearson correlation coefficient of two 1-D samples (as ``scipy.stats.pearsonr``).

    Raises:
        ValueError: with fewer than 2 points, or if ``a`` or ``b`` is constant (the
            correlation is undefined there; this function never returns NaN).

    >>> pearson([1.0, 2.0, 3.0], [2.0, 4.0, 7.0])
    0.9933992677987828
    """
    x, y = _validate_pair(a, b)
    return _pearson(x, y)


def spearman(a: ArrayLike, b: ArrayLike) -> float:
    """Spearman rank correlation: Pearson correlation of the averaged ranks (as ``spearmanr``).

    Raises:
        ValueError: with fewer than 2 points, or if ``a`` or ``b`` is constant.

    >>> spearman([1.0, 2.0, 3.0], [2.0, 4.0, 70.0])
    1.0
    """
    x, y = _validate_pair(a, b)
    return _spearman(x, y)


def miscalibration_area(
    mean: ArrayLike, std: ArrayLike, target: ArrayLike, n_levels: int = 100
) -> float:
    """Area between the observed and the expected coverage curves of centred Gaussian intervals.

    The uncertainty-toolbox definition (``uct.miscalibration_area``, ``prop_type="interval"``):
    for ``n_levels`` expected proportions ``p = linspace(0, 1, n_levels)`` the observed
    proportion ``obs(p)`` is the fraction of targets with
    ``|target - mean| / std <= Phi^{-1}(0.5 + p / 2)``; the result is the exact area between
    the piecewise-linear curve ``(p, obs(p))`` and the diagonal, ``integral_0^1 |obs - p| dp``.
    0 is perfect, 0.5 is the worst.

    Args:
        n_levels: number of expected proportions, both ends included (>= 2).

    >>> mean, target = [0.0, 0.0, 0.0, 0.0], [0.1, -0.2, 0.3, -0.1]
    >>> round(miscalibration_area(mean, [10.0] * 4, target), 2)  # far too wide: all inside
    0.49
    """
    m, s, y = _validate_gaussian(mean, std, target, "std")
    n_levels = check_count(n_levels, "n_levels", minimum=2)
    return _miscalibration_area(m, s, y, n_levels)


def interval_coverage(mean: ArrayLike, std: ArrayLike, target: ArrayLike, level: float) -> float:
    """Fraction of targets inside the central ``level`` Gaussian interval (ends included).

    The interval is ``mean ± Phi^{-1}(0.5 + level / 2) * std`` (``level = 0.95`` gives about
    ``± 1.96 std``), ``0 < level <= 1``.

    >>> interval_coverage([0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.5, -1.5, 2.5], level=0.95)
    0.6666666666666666
    """
    m, s, y = _validate_gaussian(mean, std, target, "std")
    level = check_fraction(level, "level")
    return _interval_coverage(m, s, y, level)


def regression_metrics(
    mean: ArrayLike,
    std: ArrayLike,
    target: ArrayLike,
    var_for_nll: ArrayLike | None = None,
) -> dict[str, float]:
    """The standard evaluation protocol for Gaussian regression in one dict.

    Keys: ``mae``, ``rmse``, ``nll`` (:func:`gaussian_nll` with ``var_for_nll``, by default
    ``std ** 2``), ``crps``, ``spearman_std_abs_error`` and ``pearson_std_abs_error`` (how well
    the predicted std ranks / tracks ``|target - mean|``), ``miscalibration_area``,
    ``coverage_68`` and ``coverage_95`` (:func:`interval_coverage` at ``level`` 0.68 and 0.95,
    i.e. ``± 0.994 std`` and ``± 1.960 std``). Where the std or the absolute error is constant (a
    homoscedastic baseline) the two correlations are undefined and set to ``nan`` rather than
    raising, so a sweep survives them.

    >>> m = regression_metrics([0.0, 1.0], [1.0, 2.0], [0.5, 3.0])
    >>> m["mae"], m["spearman_std_abs_error"], m["coverage_95"]
    (1.25, 1.0, 1.0)
    """
    m, s, y = _validate_gaussian(mean, std, target, "std")
    if var_for_nll is None:
        var = s**2
    else:
        var = as_float_array(var_for_nll, "var_for_nll", ndim=1)
        check_same_length(mean=m, var_for_nll=var)
        check_positive(var, "var_for_nll")
    abs_err = np.abs(y - m)
    undefined = m.shape[0] < 2 or _is_constant(s) or _is_constant(abs_err)
    sd_mult = _sd_multiples(m, s, y)
    coverage_68, coverage_95 = _observed_proportions(sd_mult, np.array([0.68, 0.95]))
    return {
        "mae": float(np.mean(abs_err)),
        "rmse": float(math.sqrt(np.mean(abs_err**2))),
        "nll": _gaussian_nll(m, var, y),
        "crps": _crps_gaussian(m, s, y),
        "spearman_std_abs_error": math.nan if undefined else _spearman(s, abs_err),
        "pearson_std_abs_error": math.nan if undefined else _pearson(s, abs_err),
        "miscalibration_area": _miscalibration_area(m, s, y, 100),
        "coverage_68": float(coverage_68),
        "coverage_95": float(coverage_95),
    }
