"""Tests for balora.metrics: every metric against an independent reference, in float64.

References: torchmetrics (ECE / MCE), scikit-learn (AUROC, AP, Brier via one-hot, MAE, RMSE),
scipy (Spearman, Pearson, Gaussian log-density, CRPS by numerical integration),
uncertainty-toolbox when installed (miscalibration area), and brute-force loops written here
(accuracy, NLL, calibration bins, AURC and selective accuracy over every order of ties,
coverage, miscalibration area on a fine grid).
"""

from __future__ import annotations

import doctest
import itertools
import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from sklearn.metrics import (
    average_precision_score,
    mean_absolute_error,
    mean_squared_error,
    roc_auc_score,
)
from torchmetrics.functional.classification import multiclass_calibration_error

import balora.metrics.classification as classification_module
import balora.metrics.regression as regression_module
from balora.metrics import (
    accuracy,
    aupr,
    aurc,
    auroc,
    brier_score,
    classification_metrics,
    crps_gaussian,
    expected_calibration_error,
    gaussian_nll,
    interval_coverage,
    mae,
    max_calibration_error,
    miscalibration_area,
    nll,
    pearson,
    regression_metrics,
    rmse,
    selective_accuracy,
    spearman,
)

TOL = {"rel": 1e-12, "abs": 1e-12}


# ── data ────────────────────────────────────────────────────────────────────────────────────


def make_classification(n: int = 400, c: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities of random logits (float32-exact, so torchmetrics sees the same
    confidences) and labels that agree with the argmax about two times in three."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(n, c)).astype(np.float32)
    probs = torch.softmax(torch.from_numpy(logits), dim=1).numpy().astype(np.float64)
    labels = np.where(rng.random(n) < 0.65, probs.argmax(1), rng.integers(0, c, n))
    return probs, labels


def make_regression(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Heteroscedastic Gaussian predictions whose std is somewhat too small."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=n)
    std = rng.uniform(0.2, 2.0, size=n)
    target = mean + 1.3 * std * rng.normal(size=n)
    return mean, std, target


def make_ranking(n: int = 300, seed: int = 0, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 2, n)
    scores = rng.normal(size=n) + 0.8 * targets
    if ties:
        scores = np.round(scores, 1)  # many tied scores, across both classes
    return scores, targets


# ── brute-force references ──────────────────────────────────────────────────────────────────


def ece_loop(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> tuple[float, float]:
    """ECE and MCE with bins [k/B, (k+1)/B) and 1.0 in a bin of its own, one example at a time."""
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64).tolist()
    bins: dict[int, list[tuple[float, float]]] = {}
    for p, y in zip(probs, labels, strict=True):
        conf = float(p.max())
        k = max(i for i, e in enumerate(edges) if e <= conf)
        bins.setdefault(k, []).append((conf, float(int(np.argmax(p)) == y)))
    gaps = {
        k: abs(sum(a for _, a in v) / len(v) - sum(c for c, _ in v) / len(v))
        for k, v in bins.items()
    }
    ece = sum(gaps[k] * len(v) for k, v in bins.items()) / len(labels)
    return ece, max(gaps.values())


def selective_risks_one_order(confidence: np.ndarray, correct: np.ndarray) -> list[float]:
    order = sorted(range(len(confidence)), key=lambda i: -confidence[i])
    errors = 0
    risks = []
    for k, i in enumerate(order, start=1):
        errors += 1 - correct[i]
        risks.append(errors / k)
    return risks


def risks_over_tie_orders(confidence: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Selective risks averaged over every permutation of the inputs (hence of the ties)."""
    runs = [
        selective_risks_one_order(confidence[list(perm)], correct[list(perm)])
        for perm in itertools.permutations(range(len(confidence)))
    ]
    return np.mean(runs, axis=0)


def crps_integral(mu: float, sigma: float, y: float) -> float:
    """CRPS as the integral of (F(x) - 1[x >= y])^2, split at y."""
    cdf = stats.norm(mu, sigma).cdf
    lo = min(mu - 12 * sigma, y)
    hi = max(mu + 12 * sigma, y)
    left, _ = integrate.quad(lambda x: cdf(x) ** 2, lo, y, epsabs=1e-13, epsrel=1e-12)
    right, _ = integrate.quad(lambda x: (1 - cdf(x)) ** 2, y, hi, epsabs=1e-13, epsrel=1e-12)
    return left + right


def miscalibration_area_grid(
    mean: np.ndarray, std: np.ndarray, target: np.ndarray, n_levels: int, n_grid: int = 200_001
) -> float:
    """Integral of |obs - p| for the piecewise-linear observed curve, on a fine grid."""
    levels = np.linspace(0, 1, n_levels)
    sd_mult = np.abs(mean - target) / std
    obs = np.array([np.mean(sd_mult <= stats.norm.ppf(0.5 + p / 2)) for p in levels])
    grid = np.linspace(0, 1, n_grid)
    return float(integrate.trapezoid(np.abs(np.interp(grid, levels, obs) - grid), grid))


# ── classification against references ──────────────────────────────────────────────────────


def test_accuracy_nll_brier_match_references() -> None:
    probs, labels = make_classification()
    n, c = probs.shape
    hits = sum(int(np.argmax(p)) == y for p, y in zip(probs, labels, strict=True))
    assert accuracy(probs, labels) == pytest.approx(hits / n, **TOL)
    nll_ref = -sum(math.log(p[y]) for p, y in zip(probs, labels, strict=True)) / n
    assert nll(probs, labels) == pytest.approx(nll_ref, **TOL)
    # Multi-class Brier = C * mean squared error against the one-hot labels.
    onehot = np.eye(c)[labels]
    assert brier_score(probs, labels) == pytest.approx(c * mean_squared_error(onehot, probs), **TOL)


def test_nll_clamps_zero_probability() -> None:
    assert nll([[1.0, 0.0]], [1]) == pytest.approx(-math.log(classification_module.NLL_EPS))


def test_accuracy_breaks_ties_by_first_class() -> None:
    assert accuracy([[0.5, 0.5], [0.25, 0.75]], [0, 1]) == 1.0
    assert accuracy([[0.5, 0.5]], [1]) == 0.0


@pytest.mark.parametrize("n_bins", [1, 5, 10, 15, 37])
def test_calibration_errors_match_torchmetrics(n_bins: int) -> None:
    probs, labels = make_classification(seed=n_bins)
    p, y = torch.from_numpy(probs).float(), torch.from_numpy(labels)
    c = probs.shape[1]
    ece_tm = multiclass_calibration_error(p, y, num_classes=c, n_bins=n_bins, norm="l1").item()
    mce_tm = multiclass_calibration_error(p, y, num_classes=c, n_bins=n_bins, norm="max").item()
    ece = expected_calibration_error(probs, labels, n_bins=n_bins)
    mce = max_calibration_error(probs, labels, n_bins=n_bins)
    # torchmetrics accumulates in float32.
    assert ece == pytest.approx(ece_tm, abs=1e-6)
    assert mce == pytest.approx(mce_tm, abs=1e-6)
    ece_ref, mce_ref = ece_loop(probs, labels, n_bins)
    assert ece == pytest.approx(ece_ref, **TOL)
    assert mce == pytest.approx(mce_ref, **TOL)


def test_calibration_bin_edges_follow_torchmetrics() -> None:
    # Confidences on bin edges (exact in float32 and float64): each edge opens its bin, and a
    # confidence of exactly 1.0 sits in a bin of its own, apart from [0.75, 1).
    probs = np.array(
        [[0.5, 0.5], [0.75, 0.25], [0.25, 0.75], [1.0, 0.0], [0.0, 1.0], [0.875, 0.125]]
    )
    labels = np.array([0, 1, 1, 0, 0, 0])
    p, y = torch.from_numpy(probs).float(), torch.from_numpy(labels)
    for n_bins in (2, 4, 8):
        for norm, fn in (("l1", expected_calibration_error), ("max", max_calibration_error)):
            ref = multiclass_calibration_error(p, y, num_classes=2, n_bins=n_bins, norm=norm)
            assert fn(probs, labels, n_bins=n_bins) == pytest.approx(ref.item(), abs=1e-7)
    # By hand for 4 bins: [0.5, 0.75) {0.5 ok}, [0.75, 1) {0.75 wrong, 0.75 ok, 0.875 ok},
    # {1.0}: {1.0 ok, 1.0 wrong}.
    by_hand = (1 * 0.5 + 3 * abs(2 / 3 - 2.375 / 3) + 2 * 0.5) / 6
    assert expected_calibration_error(probs, labels, n_bins=4) == pytest.approx(by_hand, **TOL)


@pytest.mark.parametrize("ties", [False, True])
def test_auroc_aupr_match_sklearn(ties: bool) -> None:
    scores, targets = make_ranking(ties=ties)
    assert auroc(scores, targets) == pytest.approx(roc_auc_score(targets, scores), **TOL)
    assert aupr(scores, targets) == pytest.approx(average_precision_score(targets, scores), **TOL)


def test_auroc_aupr_all_tied_and_perfect() -> None:
    targets = [0, 1, 0, 1, 1]
    assert auroc([0.3] * 5, targets) == 0.5
    assert aupr([0.3] * 5, targets) == pytest.approx(0.6, **TOL)
    assert auroc([0.1, 0.9, 0.2, 0.8, 0.7], targets) == 1.0
    assert aupr([0.1, 0.9, 0.2, 0.8, 0.7], targets) == 1.0


def test_aurc_and_selective_accuracy_match_loop() -> None:
    rng = np.random.default_rng(3)
    confidence = rng.random(200)
    correct = (rng.random(200) < confidence).astype(int)
    risks = selective_risks_one_order(confidence, correct)
    assert aurc(confidence, correct) == pytest.approx(np.mean(risks), **TOL)
    for coverage in (0.01, 0.1, 0.33, 0.5, 0.999, 1.0):
        k = math.ceil(round(coverage * 200, 9))
        ref = 1.0 - risks[k - 1]
        assert selective_accuracy(confidence, correct, coverage) == pytest.approx(ref, **TOL)
    assert selective_accuracy(confidence, correct, 1.0) == pytest.approx(np.mean(correct), **TOL)


def test_aurc_and_selective_accuracy_average_over_tie_orders() -> None:
    confidence = np.array([0.9, 0.5, 0.9, 0.2, 0.5, 0.9, 0.5])
    correct = np.array([1, 0, 0, 1, 1, 1, 0])
    risks = risks_over_tie_orders(confidence, correct)
    assert aurc(confidence, correct) == pytest.approx(np.mean(risks), **TOL)
    for k in range(1, 8):
        acc = selective_accuracy(confidence, correct, k / 7)
        assert acc == pytest.approx(1.0 - risks[k - 1], **TOL)
    # The input order of tied examples does not matter.
    perm = np.array([6, 2, 4, 0, 3, 5, 1])
    assert aurc(confidence[perm], correct[perm]) == pytest.approx(aurc(confidence, correct))


def test_selective_accuracy_coverage_ignores_float_noise() -> None:
    # 0.1 * 30 == 3.0000000000000004 must select 3 examples, not 4.
    confidence = np.linspace(1.0, 0.0, 30)
    correct = np.r_[np.ones(3), np.zeros(27)].astype(int)
    assert selective_accuracy(confidence, correct, 0.1) == 1.0


def test_classification_metrics_bundles_the_functions() -> None:
    probs, labels = make_classification(seed=7)
    rng = np.random.default_rng(7)
    uncertainty = 1.0 - probs.max(1) + 0.05 * rng.random(len(labels))
    out = classification_metrics(probs, labels, uncertainty=uncertainty, n_bins=10)
    is_error = (probs.argmax(1) != labels).astype(int)
    expected = {
        "accuracy": accuracy(probs, labels),
        "nll": nll(probs, labels),
        "brier": brier_score(probs, labels),
        "ece": expected_calibration_error(probs, labels, n_bins=10),
        "mce": max_calibration_error(probs, labels, n_bins=10),
        "auroc_error": roc_auc_score(is_error, uncertainty),
        "aupr_error": average_precision_score(is_error, uncertainty),
        "aurc": aurc(-uncertainty, 1 - is_error),
    }
    assert out.keys() == expected.keys()
    for key, value in expected.items():
        assert isinstance(out[key], float)
        assert out[key] == pytest.approx(value, **TOL), key
    assert set(classification_metrics(probs, labels)) == {"accuracy", "nll", "brier", "ece", "mce"}


def test_classification_metrics_perfect_model_gives_nan_error_detection() -> None:
    out = classification_metrics([[0.9, 0.1], [0.2, 0.8]], [0, 1], uncertainty=[0.1, 0.2])
    assert math.isnan(out["auroc_error"])
    assert math.isnan(out["aupr_error"])
    assert out["aurc"] == 0.0


# ── regression against references ───────────────────────────────────────────────────────────


def test_mae_rmse_match_sklearn() -> None:
    mean, _, target = make_regression()
    assert mae(mean, target) == pytest.approx(mean_absolute_error(target, mean), **TOL)
    ref = math.sqrt(mean_squared_error(target, mean))
    assert rmse(mean, target) == pytest.approx(ref, **TOL)


def test_gaussian_nll_matches_scipy_and_torch() -> None:
    mean, std, target = make_regression()
    var = std**2
    ref = -np.mean(stats.norm.logpdf(target, loc=mean, scale=std))
    assert gaussian_nll(mean, var, target) == pytest.approx(ref, **TOL)
    loss = torch.nn.GaussianNLLLoss(full=True, eps=0.0)
    as_t = [torch.from_numpy(a) for a in (mean, target, var)]
    assert gaussian_nll(mean, var, target) == pytest.approx(loss(*as_t).item(), **TOL)


def test_crps_gaussian_matches_numerical_integral() -> None:
    mean, std, target = make_regression(n=25, seed=1)
    ref = np.mean([crps_integral(*args) for args in zip(mean, std, target, strict=True)])
    assert crps_gaussian(mean, std, target) == pytest.approx(ref, rel=1e-9, abs=1e-10)
    # As the std shrinks, CRPS tends to the absolute error.
    assert crps_gaussian([0.0], [1e-9], [2.0]) == pytest.approx(2.0, rel=1e-8)


@pytest.mark.parametrize("ties", [False, True])
def test_spearman_pearson_match_scipy(ties: bool) -> None:
    _, std, target = make_regression(seed=2)
    a, b = (np.round(std, 1), np.round(target, 1)) if ties else (std, target)
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, **TOL)
    assert pearson(a, b) == pytest.approx(stats.pearsonr(a, b).statistic, **TOL)


def test_two_point_correlations() -> None:
    assert pearson([0.0, 1.0], [3.0, 1.0]) == pytest.approx(-1.0)
    assert spearman([0.0, 1.0], [1.0, 3.0]) == pytest.approx(1.0)


@pytest.mark.parametrize("n_levels", [2, 11, 100])
def test_miscalibration_area_matches_fine_grid(n_levels: int) -> None:
    mean, std, target = make_regression(seed=n_levels)
    ref = miscalibration_area_grid(mean, std, target, n_levels)
    assert miscalibration_area(mean, std, target, n_levels) == pytest.approx(ref, abs=1e-9)


def test_targets_on_the_interval_edge_count_as_inside() -> None:
    # Level -> 0 is the zero-width interval [mean, mean]: exact hits are inside, as in
    # uncertainty-toolbox, so the observed curve starts at the fraction of exact hits.
    mean, std, target = make_regression(n=40, seed=9)
    target[:10] = mean[:10]
    ref = miscalibration_area_grid(mean, std, target, 100)
    assert miscalibration_area(mean, std, target) == pytest.approx(ref, abs=1e-9)
    assert interval_coverage([0.0, 0.0], [1.0, 1.0], [0.0, 5.0], 1e-12) == 0.5
    assert interval_coverage([0.0, 0.0], [1.0, 1.0], [0.0, 1e300], 1.0) == 1.0


@pytest.mark.parametrize("scale", [0.5, 1.0, 1.3, 3.0])
def test_miscalibration_area_matches_uncertainty_toolbox(scale: float) -> None:
    uct = pytest.importorskip("uncertainty_toolbox")
    mean, std, target = make_regression(seed=4)
    target[:20] = mean[:20]  # exact hits exercise the inclusive interval ends
    ref = uct.miscalibration_area(mean, scale * std, target)
    assert miscalibration_area(mean, scale * std, target) == pytest.approx(ref, **TOL)


@pytest.mark.parametrize("level", [0.1, 0.5, 0.68, 0.95, 0.99, 1.0])
def test_interval_coverage_matches_loop(level: float) -> None:
    mean, std, target = make_regression(seed=5)
    inside = 0
    for m, s, y in zip(mean, std, target, strict=True):
        lo, hi = stats.norm.interval(level, loc=m, scale=s)
        inside += lo <= y <= hi
    assert interval_coverage(mean, std, target, level) == pytest.approx(inside / len(mean))


def test_interval_coverage_of_a_calibrated_model() -> None:
    rng = np.random.default_rng(6)
    std = rng.uniform(0.5, 2.0, 20_000)
    target = std * rng.normal(size=std.shape)
    mean = np.zeros_like(std)
    assert interval_coverage(mean, std, target, 0.95) == pytest.approx(0.95, abs=0.005)
    assert miscalibration_area(mean, std, target) < 0.01


def test_regression_metrics_bundles_the_functions() -> None:
    mean, std, target = make_regression(seed=8)
    out = regression_metrics(mean, std, target)
    abs_err = np.abs(target - mean)
    expected = {
        "mae": mae(mean, target),
        "rmse": rmse(mean, target),
        "nll": gaussian_nll(mean, std**2, target),
        "crps": crps_gaussian(mean, std, target),
        "spearman_std_abs_error": stats.spearmanr(std, abs_err).statistic,
        "pearson_std_abs_error": stats.pearsonr(std, abs_err).statistic,
        "miscalibration_area": miscalibration_area(mean, std, target),
        "coverage_68": interval_coverage(mean, std, target, 0.68),
        "coverage_95": interval_coverage(mean, std, target, 0.95),
    }
    assert out.keys() == expected.keys()
    for key, value in expected.items():
        assert isinstance(out[key], float)
        assert out[key] == pytest.approx(value, **TOL), key
    var = 2.0 * std**2
    ref = gaussian_nll(mean, var, target)
    assert regression_metrics(mean, std, target, var_for_nll=var)["nll"] == pytest.approx(ref)


def test_regression_metrics_constant_std_gives_nan_correlations() -> None:
    out = regression_metrics([0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.1, -0.5, 2.0])
    assert math.isnan(out["spearman_std_abs_error"])
    assert math.isnan(out["pearson_std_abs_error"])
    assert out["mae"] == pytest.approx(2.6 / 3)


# ── input types ──────────────────────────────────────────────────────────────────────────────


def test_tensors_arrays_and_lists_give_the_same_floats() -> None:
    probs, labels = make_classification(n=50)
    as_tensor = torch.tensor(probs, requires_grad=True)
    values = {
        expected_calibration_error(probs, labels),
        expected_calibration_error(as_tensor, torch.from_numpy(labels)),
        expected_calibration_error(probs.tolist(), labels.tolist()),
        expected_calibration_error(probs, labels.astype(np.float32)),  # whole-valued floats
    }
    assert len(values) == 1
    assert isinstance(values.pop(), float)
    mean, std, target = make_regression(n=50)
    a = crps_gaussian(mean, std, target)
    b = crps_gaussian(*(torch.from_numpy(x) for x in (mean, std, target)))
    assert a == b
    assert aurc([0.9, 0.1, 0.5], [True, False, True]) == aurc([0.9, 0.1, 0.5], [1, 0, 1])


def test_low_precision_tensors_are_upcast() -> None:
    probs = torch.tensor([[0.75, 0.25], [0.5, 0.5]], dtype=torch.bfloat16)
    assert brier_score(probs, torch.tensor([0, 1])) == pytest.approx(0.3125)


# ── bad input ────────────────────────────────────────────────────────────────────────────────

P = [[0.7, 0.3], [0.4, 0.6]]
Y = [0, 1]
V = [0.1, 0.2, 0.3]
T3 = [0.0, 1.0, 2.0]

BAD_CLASSIFICATION = [
    ("probs 1-D", accuracy, ([0.5, 0.5], Y), "`probs` must be 2-dimensional"),
    ("length mismatch", nll, (P, [0, 1, 1]), "length mismatch"),
    ("empty", brier_score, (np.zeros((0, 2)), []), "`probs` is empty"),
    ("NaN", accuracy, ([[0.5, 0.5], [math.nan, 1.0]], Y), r"`probs` contains 1 NaN/inf"),
    ("inf", nll, ([[math.inf, 0.0], [0.5, 0.5]], Y), "NaN/inf"),
    ("negative prob", accuracy, ([[1.2, -0.2], [0.5, 0.5]], Y), r"\[0, 1\].*row 0"),
    ("row sum", nll, ([[0.5, 0.5], [0.5, 0.6]], Y), "row 1 sums to"),
    ("label too big", accuracy, (P, [0, 2]), r"`labels` must lie in \[0, 2\).*index 1"),
    ("label negative", brier_score, (P, [-1, 0]), "`labels` must lie in"),
    ("label fraction", nll, (P, [0, 0.5]), "`labels` must hold integers"),
    ("label 2-D", nll, (P, [[0], [1]]), "`labels` must be 1-dimensional"),
    ("label strings", nll, (P, ["a", "b"]), "`labels` must be numeric"),
    ("ragged", accuracy, ([[0.5, 0.5], [1.0]], Y), "`probs`"),
    ("n_bins 0", expected_calibration_error, (P, Y, 0), "`n_bins` must be an integer >= 1"),
    ("n_bins float", max_calibration_error, (P, Y, 2.5), "`n_bins`"),
    ("n_bins bool", expected_calibration_error, (P, Y, True), "`n_bins`"),
    ("auroc one class", auroc, (V, [1, 1, 1]), "only positives"),
    ("aupr one class", aupr, (V, [0, 0, 0]), "only negatives"),
    ("auroc non-binary", auroc, (V, [0, 1, 2]), "`targets` must be binary"),
    ("auroc mismatch", auroc, (V, [0, 1]), "length mismatch"),
    ("aurc NaN", aurc, ([0.1, math.nan], [0, 1]), "`confidence` contains"),
    ("aurc non-binary", aurc, (V, [0, 1, 3]), "`correct` must be binary"),
    ("coverage 0", selective_accuracy, (V, [0, 1, 1], 0.0), r"`coverage` must lie in \(0, 1\]"),
    ("coverage >1", selective_accuracy, (V, [0, 1, 1], 1.5), "`coverage`"),
    ("coverage nan", selective_accuracy, (V, [0, 1, 1], math.nan), "`coverage`"),
    ("coverage str", selective_accuracy, (V, [0, 1, 1], "1"), "`coverage`"),
    ("uncertainty", classification_metrics, (P, Y, [0.1]), "length mismatch"),
    ("uncert. inf", classification_metrics, (P, Y, [0.1, math.inf]), "`uncertainty`"),
]

BAD_REGRESSION = [
    ("mismatch", mae, ([1.0, 2.0], T3), "length mismatch"),
    ("empty", rmse, ([], []), "`pred` is empty"),
    ("2-D", mae, ([[1.0]], [[1.0]]), "`pred` must be 1-dimensional"),
    ("NaN target", rmse, (T3, [0.0, math.nan, 1.0]), "`target` contains 1 NaN/inf"),
    ("var 0", gaussian_nll, (T3, [1.0, 0.0, 1.0], T3), "`var` must be > 0.*index 1"),
    ("std < 0", crps_gaussian, (T3, [1.0, 1.0, -1.0], T3), "`std` must be > 0"),
    ("std inf", crps_gaussian, (T3, [1.0, 1.0, math.inf], T3), "`std` contains"),
    ("1 point", pearson, ([1.0], [2.0]), "at least 2 points"),
    ("const a", spearman, ([1.0, 1.0, 1.0], T3), "`a` is constant"),
    ("const b", pearson, (T3, [2.0, 2.0, 2.0]), "`b` is constant"),
    ("corr mismatch", spearman, (T3, [1.0, 2.0]), "length mismatch"),
    ("levels 1", miscalibration_area, (T3, V, T3, 1), "`n_levels` must be an integer >= 2"),
    ("std 0 area", miscalibration_area, (T3, [0.0, 1.0, 1.0], T3), "`std` must be > 0"),
    ("level 0", interval_coverage, (T3, V, T3, 0.0), r"`level` must lie in \(0, 1\]"),
    ("level >1", interval_coverage, (T3, V, T3, 1.01), "`level`"),
    ("bad var", regression_metrics, (T3, V, T3, [1.0, -1.0, 1.0]), "`var_for_nll` must be > 0"),
    ("var len", regression_metrics, (T3, V, T3, [1.0]), "length mismatch"),
    ("reg std 0", regression_metrics, (T3, [0.1, 0.0, 0.1], T3), "`std` must be > 0"),
]


@pytest.mark.parametrize(
    ("fn", "args", "match"),
    [case[1:] for case in BAD_CLASSIFICATION + BAD_REGRESSION],
    ids=[case[0] for case in BAD_CLASSIFICATION + BAD_REGRESSION],
)
def test_bad_input_raises_value_error(fn, args, match) -> None:
    with pytest.raises(ValueError, match=match):
        fn(*args)


# ── doctests ─────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("module", [classification_module, regression_module])
def test_docstring_examples_run(module) -> None:
    result = doctest.testmod(module, verbose=False)
    assert result.attempted > 0
    assert result.failed == 0
