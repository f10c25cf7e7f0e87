"""Plots of a comparison, drawn from `Results` and the per-example arrays (nothing is re-run).

    reliability.png            one panel per method: accuracy per confidence bin vs the diagonal
                               (regression: observed vs expected interval coverage)
    uncertainty_vs_error.png   classification: accuracy of the retained examples as the most
                               uncertain are rejected; regression: predicted std vs |error|
    metrics_vs_samples.png     each main metric vs S (log2 axis), mean ± std over seeds
    alpha.png                  box plots of α(x) per adapted layer (methods that sample α)
    training.png               over the training steps, per run: training and validation NLL,
                               and the noise diagnostics recorded at every validation (output
                               spread over samples, S = 0 − S NLL gap, noise / update and
                               update / base ratios averaged over the adapted layers)

All per-example plots use the evaluation at the largest S, pooled over seeds (the retention
curves are averaged over seeds instead). Regenerate with
``plot_results(Results.load(output_dir))``. Figures are built with matplotlib's object API
(`Figure`, rendered by the Agg canvas), never pyplot, so importing this module does not change
the user's matplotlib backend or global state.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import matplotlib
import matplotlib.ticker
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from scipy.stats import norm

from balora.experiments.results import MethodRun, Results
from balora.metrics import selective_accuracy
from balora.predict import Prediction

CLASSIFICATION_PANELS: tuple[tuple[str, str], ...] = (
    ("accuracy", "accuracy"),
    ("nll", "NLL"),
    ("ece", "ECE (15 bins)"),
    ("brier", "Brier"),
    ("auroc_error", "AUROC error detection"),
    ("aurc", "AURC"),
    ("mean_epistemic", "mean epistemic (nats)"),
)
OOD_PANELS: tuple[tuple[str, str], ...] = (
    ("auroc_ood_total", "AUROC OOD (total)"),
    ("auroc_ood_epistemic", "AUROC OOD (epistemic)"),
)
REGRESSION_PANELS: tuple[tuple[str, str], ...] = (
    ("mae", "MAE"),
    ("rmse", "RMSE"),
    ("nll", "Gaussian NLL"),
    ("crps", "CRPS"),
    ("spearman_std_abs_error", "Spearman(std, |err|)"),
    ("spearman_epistemic_abs_error", "Spearman(epistemic std, |err|)"),
    ("miscalibration_area", "miscalibration area"),
    ("coverage_95", "95% coverage"),
)
RETAINED = np.linspace(0.05, 1.0, 20)
"""Retained fractions of the classification uncertainty-vs-error curve."""


def _colors(results: Results) -> dict[str, tuple[float, ...]]:
    cmap = matplotlib.colormaps["tab10"]
    return {m: cmap(i % 10) for i, m in enumerate(results.methods)}


def _grid(n: int, ncols: int = 4, size: float = 3.2) -> tuple[Figure, list[Axes]]:
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(size * ncols, size * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _save(fig: Figure, path: Path, rect: tuple[float, ...] | None = None) -> Path:
    """Save atomically (a temporary file, then a rename) and close the figure."""
    fig.tight_layout(rect=rect)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
    return path


def load_arrays(results: Results, run: MethodRun) -> dict[str, np.ndarray] | None:
    """The per-example arrays of a run (None, with a warning, when the file is missing)."""
    if results.output_dir is None or run.arrays is None:
        return None
    path = results.output_dir / run.arrays
    if not path.is_file():
        warnings.warn(f"missing arrays for {run.method} seed {run.seed}: {path}", stacklevel=2)
        return None
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _pooled(results: Results, method: str) -> dict[str, np.ndarray] | None:
    parts = [a for r in results.runs_of(method) if (a := load_arrays(results, r)) is not None]
    if not parts:
        return None
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# ── reliability ─────────────────────────────────────────────────────────────────────────────


def reliability_bins(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean confidence, accuracy, count) per equal-width confidence bin, the binning of
    `balora.metrics.expected_calibration_error` (bin k = [k/n, (k+1)/n)); a confidence of
    exactly 1 is drawn in the last bin. Empty bins hold NaN."""
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64).numpy()
    idx = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(idx, weights=confidence, minlength=n_bins) / count
        acc = np.bincount(idx, weights=correct.astype(np.float64), minlength=n_bins) / count
    return conf, acc, count


def interval_calibration(
    mean: np.ndarray, std: np.ndarray, target: np.ndarray, n_levels: int = 21
) -> tuple[np.ndarray, np.ndarray]:
    """(expected, observed) proportions of targets inside the central Gaussian intervals, the
    curve under `balora.metrics.miscalibration_area`."""
    expected = np.linspace(0.0, 1.0, n_levels)
    half = norm.ppf(0.5 + expected / 2.0)
    z = np.sort(np.abs(target - mean) / std)
    return expected, np.searchsorted(z, half, side="right") / z.shape[0]


def plot_reliability(results: Results, path: Path, n_bins: int = 15) -> Path | None:
    """Reliability diagrams, one panel per method (largest S, seeds pooled). Classification:
    accuracy per confidence bin; regression: observed vs expected coverage of the central
    Gaussian intervals."""
    methods = [m for m in results.methods if results.runs_of(m)]
    if not methods:
        return None
    if results.task == "regression":
        return _plot_interval_calibration(results, methods, path)
    fig, axes = _grid(len(methods))
    colors = _colors(results)
    width = 1.0 / n_bins
    centres = (np.arange(n_bins) + 0.5) * width
    for ax, m in zip(axes, methods, strict=True):
        arr = _pooled(results, m)
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        if arr is not None:
            probs, labels = arr["probs"], arr["labels"]
            conf = probs.max(axis=1)
            correct = probs.argmax(axis=1) == labels
            mean_conf, acc, _ = reliability_bins(conf, correct, n_bins)
            full = ~np.isnan(acc)
            ax.bar(centres[full], acc[full], width=width, color=colors[m], edgecolor="k", lw=0.5)
            ax.bar(
                centres[full],
                (mean_conf - acc)[full],
                bottom=acc[full],
                width=width,
                color="red",
                alpha=0.25,
                label="gap",
            )
        ece = results.summary(m, "ece").format()
        ax.set_title(f"{m}\nECE {ece}", fontsize=9)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")
    fig.suptitle(f"Reliability (S = {results.max_samples}, seeds pooled)", fontsize=10)
    return _save(fig, path)


def _plot_interval_calibration(results: Results, methods: list[str], path: Path) -> Path:
    fig, axes = _grid(len(methods))
    colors = _colors(results)
    for ax, m in zip(axes, methods, strict=True):
        arr = _pooled(results, m)
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        if arr is not None:
            mean, std, target = (arr[k].reshape(-1) for k in ("mean", "std", "target"))
            expected, observed = interval_calibration(mean, std, target)
            ax.plot(expected, observed, "o-", ms=3, color=colors[m])
            ax.fill_between(expected, expected, observed, color=colors[m], alpha=0.2)
        area = results.summary(m, "miscalibration_area").format()
        ax.set_title(f"{m}\nmiscalibration area {area}", fontsize=9)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="expected proportion", ylabel="observed")
    fig.suptitle(f"Interval calibration (S = {results.max_samples}, seeds pooled)", fontsize=10)
    return _save(fig, path)


# ── uncertainty vs error ────────────────────────────────────────────────────────────────────


def retention_curve(uncertainty: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Accuracy of the `RETAINED` fractions of examples with the lowest uncertainty."""
    return np.array(
        [selective_accuracy(-uncertainty, correct.astype(np.int64), float(f)) for f in RETAINED]
    )


def plot_uncertainty_vs_error(results: Results, path: Path) -> Path | None:
    """Classification: accuracy vs the retained fraction when the most uncertain (total
    entropy) are rejected, mean ± std over seeds. Regression: predicted std vs |error| per
    method (seeds pooled, log-log)."""
    methods = [m for m in results.methods if results.runs_of(m)]
    if not methods:
        return None
    colors = _colors(results)
    if results.task == "classification":
        fig = Figure(figsize=(6, 4.5))
        ax = fig.subplots()
        for m in methods:
            curves = []
            for r in results.runs_of(m):
                arr = load_arrays(results, r)
                if arr is not None:
                    correct = arr["probs"].argmax(axis=1) == arr["labels"]
                    curves.append(retention_curve(arr["total"], correct))
            if not curves:
                continue
            c = np.stack(curves)
            mean, std = c.mean(0), c.std(0)
            ax.plot(RETAINED, mean, color=colors[m], label=m)
            ax.fill_between(RETAINED, mean - std, mean + std, color=colors[m], alpha=0.15)
        ax.set(
            xlabel="fraction retained (most uncertain rejected first)",
            ylabel="accuracy of the retained",
            title=f"Uncertainty vs error (total entropy, S = {results.max_samples})",
        )
        ax.legend(fontsize=8)
        return _save(fig, path)
    return _std_vs_error(results, methods, "std", "spearman_std_abs_error", path)


def _std_vs_error(
    results: Results, methods: list[str], key: str, metric: str, path: Path
) -> Path | None:
    """Per method (seeds pooled, log-log): the std in arrays[`key`] against |error|."""
    if key == "epistemic":  # stored as a variance; methods that do not sample have none
        methods = [m for m in methods if results.summary(m, metric).defined > 0]
        if not methods:
            return None
    colors = _colors(results)
    fig, axes = _grid(len(methods))
    for ax, m in zip(axes, methods, strict=True):
        arr = _pooled(results, m)
        if arr is not None:
            err = np.abs(arr["target"] - arr["mean"]).reshape(-1)
            std = arr[key].reshape(-1)
            std = np.sqrt(np.maximum(std, 0.0)) if key == "epistemic" else std
            ax.scatter(std, err, s=6, alpha=0.5, color=colors[m])
            lo = max(min(std.min(), err[err > 0].min() if (err > 0).any() else 1e-6), 1e-8)
            hi = max(std.max(), err.max())
            ax.plot([lo, hi], [lo, hi], "k--", lw=1)
            ax.set(xscale="log", yscale="log")
        rho = results.summary(m, metric).format(2)
        ax.set_title(f"{m}\nSpearman {rho}", fontsize=9)
        ax.set(
            xlabel=f"predicted {'epistemic ' if key == 'epistemic' else ''}std", ylabel="|error|"
        )
    what = "Epistemic std" if key == "epistemic" else "Predicted std"
    fig.suptitle(f"{what} vs |error| (S = {results.max_samples})", fontsize=10)
    return _save(fig, path)


def plot_epistemic_vs_error(results: Results, path: Path) -> Path | None:
    """Regression: the epistemic std alone (the spread over posterior samples or ensemble
    members) vs |error| per method that has one (seeds pooled, log-log)."""
    methods = [m for m in results.methods if results.runs_of(m)]
    if results.task == "classification" or not methods:
        return None
    return _std_vs_error(results, methods, "epistemic", "spearman_epistemic_abs_error", path)


# ── metrics vs S ────────────────────────────────────────────────────────────────────────────


def plot_metrics_vs_samples(results: Results, path: Path) -> Path | None:
    """Each main metric vs S on a log2 axis: sampling methods as lines with a ± std band over
    seeds and their posterior mean (S = 0) as a marker at "mean"; methods that do not sample
    as dashed horizontal lines."""
    panels = CLASSIFICATION_PANELS if results.task == "classification" else REGRESSION_PANELS
    panels += OOD_PANELS if results.has_ood else ()
    methods = [m for m in results.methods if results.runs_of(m)]
    if not methods:
        return None
    s = np.array(results.num_samples, dtype=np.float64)
    x_mean = s[0] / 2  # where the posterior mean (S = 0) is drawn
    colors = _colors(results)
    fig, axes = _grid(len(panels))
    for ax, (key, title) in zip(axes, panels, strict=True):
        for m in methods:
            stochastic = results.runs_of(m)[0].stochastic
            if stochastic:
                stats = [results.summary(m, key, int(k)) for k in s]
                mean = np.array([np.nan if t.mean is None else t.mean for t in stats])
                std = np.array([np.nan if t.std is None else t.std for t in stats])
                ax.plot(s, mean, "o-", ms=3, color=colors[m], label=m)
                ax.fill_between(s, mean - std, mean + std, color=colors[m], alpha=0.15)
                pe = results.summary(m, key, 0)
                if pe.mean is not None:
                    ax.errorbar(
                        [x_mean],
                        [pe.mean],
                        yerr=[pe.std or 0.0],
                        fmt="s",
                        mfc="none",
                        color=colors[m],
                        ms=5,
                    )
            else:
                t = results.summary(m, key)
                if t.mean is None:
                    continue
                xs = [x_mean, s[-1]]
                ax.plot(xs, [t.mean] * 2, "--", color=colors[m], label=f"{m} (no sampling)")
                sd = t.std or 0.0
                ax.fill_between(xs, t.mean - sd, t.mean + sd, color=colors[m], alpha=0.1)
        ax.set_xscale("log", base=2)
        ax.set_xlim(x_mean / 1.4, s[-1] * 1.4)
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ticks = [x_mean, *s]
        ax.set_xticks(ticks, ["mean", *(str(int(k)) for k in s)], fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("S (posterior samples)", fontsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8)
    fig.suptitle("Metrics vs number of samples (mean ± std over seeds)", fontsize=10)
    return _save(fig, path, rect=(0, 0.08, 1, 0.96))


# ── training curves ─────────────────────────────────────────────────────────────────────────


def _layer_ratio(noise: dict, top: str, bottom: str) -> float:
    ratios = [
        layer[top] / layer[bottom]
        for layer in noise.get("layers", [])
        if layer.get(top) is not None and layer.get(bottom)
    ]
    return float(np.mean(ratios)) if ratios else math.nan


TRAINING_PANELS: tuple[tuple[str, str], ...] = (
    ("train_nll", "training NLL"),
    ("val_nll", "validation NLL (S = 0)"),
    ("output_std", "output spread over samples"),
    ("nll_gap", "val. NLL at S = 0 − at S = 10"),
    ("noise_over_update", "noise std / ‖update‖ (layers)"),
    ("update_over_base", "‖update‖ / ‖W₀x‖ (layers)"),
)


def _training_value(record: dict, key: str) -> float:
    noise = record.get("noise") or {}
    if key == "noise_over_update":
        return _layer_ratio(noise, "noise_std", "update_norm")
    if key == "update_over_base":
        return _layer_ratio(noise, "update_norm", "base_norm")
    value = record.get(key, noise.get(key))
    return math.nan if value is None else float(value)


def _first_segment(history: list[dict]) -> list[dict]:
    """One training's records (an ensemble lists its members one after another)."""
    out = []
    for record in history:
        if out and record.get("step", 0) <= out[-1].get("step", 0):
            break
        out.append(record)
    return out


def plot_training(results: Results, path: Path) -> Path | None:
    """The training history of every run (thin lines, one per seed; an ensemble's first
    member) and its noise diagnostics, against the optimisation step."""
    runs = [r for r in results.runs if r.history and "step" in r.history[0]]
    if not runs:
        return None
    colors = _colors(results)
    fig, axes = _grid(len(TRAINING_PANELS), ncols=3)
    labelled: set[str] = set()
    for run in runs:
        records = _first_segment(run.history)
        steps = [r["step"] for r in records]
        for ax, (key, _) in zip(axes, TRAINING_PANELS, strict=True):
            values = [_training_value(r, key) for r in records]
            if all(math.isnan(v) for v in values):
                continue
            label = run.method if run.method not in labelled and ax is axes[0] else None
            ax.plot(
                steps, values, "o-", ms=2, lw=1, alpha=0.8, color=colors[run.method], label=label
            )
        labelled.add(run.method)
    for ax, (key, title) in zip(axes, TRAINING_PANELS, strict=True):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("optimisation step", fontsize=8)
        if key in ("train_nll", "update_over_base"):
            ax.set_yscale("log")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(5, len(labels)), fontsize=8)
    fig.suptitle("Training and noise diagnostics (one line per seed)", fontsize=10)
    return _save(fig, path, rect=(0, 0.07, 1, 0.96))


# ── α ───────────────────────────────────────────────────────────────────────────────────────


def plot_alpha(results: Results, path: Path) -> Path | None:
    """Box plots of α(x) over the test set per adapted layer (whiskers: 5 % and 95 %, dots:
    min and max), one panel per method that samples α, one box per seed; the dashed line is
    the prior's α_p."""
    methods = [m for m in results.methods if any(r.alpha for r in results.runs_of(m))]
    if not methods:
        return None
    fig, axes = _grid(len(methods), ncols=2, size=4.5)
    for ax, m in zip(axes, methods, strict=True):
        runs = [r for r in results.runs_of(m) if r.alpha]
        layers = list(runs[0].alpha)
        width = 0.8 / len(runs)
        cmap = matplotlib.colormaps["Set2"]
        for j, r in enumerate(runs):
            stats = [
                {
                    "med": a.q50,
                    "q1": a.q25,
                    "q3": a.q75,
                    "whislo": a.q05,
                    "whishi": a.q95,
                    "fliers": [a.min, a.max],
                    "label": name,
                }
                for name, a in r.alpha.items()
            ]
            pos = np.arange(len(stats)) + (j - (len(runs) - 1) / 2) * width
            box = ax.bxp(
                stats, positions=pos, widths=width * 0.9, patch_artist=True, showfliers=True
            )
            for patch in box["boxes"]:
                patch.set_facecolor(cmap(j % 8))
        handles = [
            Patch(facecolor=cmap(j % 8), edgecolor="k", label=f"seed {r.seed}")
            for j, r in enumerate(runs)
        ]
        if runs[0].prior_alpha is not None:
            handles.append(ax.axhline(runs[0].prior_alpha, color="k", ls="--", lw=1, label="α_p"))
        ax.set_xticks(np.arange(len(layers)), layers, rotation=30, ha="right", fontsize=7)
        ax.set_yscale("log")
        ax.set_title(f"{m}: α(x) over the test set, per layer", fontsize=9)
        ax.set_ylabel("α")
        ax.legend(handles=handles, fontsize=7)
    return _save(fig, path)


def plot_results(results: Results, output_dir: Path | None = None) -> dict[str, Path]:
    """Draw every plot that applies into `output_dir` (default: the results' folder)."""
    out = Path(output_dir) if output_dir is not None else results.output_dir
    if out is None:
        raise ValueError("no output folder: pass output_dir")
    out.mkdir(parents=True, exist_ok=True)
    drawn: dict[str, Path | None] = {
        "metrics_vs_samples": plot_metrics_vs_samples(results, out / "metrics_vs_samples.png"),
        "uncertainty_vs_error": plot_uncertainty_vs_error(
            results, out / "uncertainty_vs_error.png"
        ),
        "epistemic_vs_error": plot_epistemic_vs_error(results, out / "epistemic_vs_error.png"),
        "alpha": plot_alpha(results, out / "alpha.png"),
        "training": plot_training(results, out / "training.png"),
    }
    drawn["reliability"] = plot_reliability(results, out / "reliability.png")
    return {k: v for k, v in drawn.items() if v is not None}


# ── one trained model (balora evaluate) ─────────────────────────────────────────────────────


def plot_evaluation(
    pred: Prediction,
    labels: torch.Tensor,
    metrics_by_samples: dict[int, dict[str, float | None]],
    path: Path,
    n_bins: int = 15,
) -> Path:
    """One model's classification evaluation in three panels: the reliability diagram and the
    accuracy of the retained examples (both for `pred`, the largest S) and each main metric
    against the number of samples (S = 0 is the posterior mean)."""
    probs = pred.mean.detach().cpu().double().numpy()
    y = labels.cpu().numpy()
    conf, correct = probs.max(axis=1), probs.argmax(axis=1) == y
    fig = Figure(figsize=(13, 4))
    ax_rel, ax_ret, ax_s = fig.subplots(1, 3)
    mean_conf, acc, _ = reliability_bins(conf, correct, n_bins)
    full = ~np.isnan(acc)
    centres = (np.arange(n_bins) + 0.5) / n_bins
    ax_rel.plot([0, 1], [0, 1], "k--", lw=1)
    ax_rel.bar(centres[full], acc[full], width=1 / n_bins, edgecolor="k", lw=0.5)
    ax_rel.bar(
        centres[full],
        (mean_conf - acc)[full],
        bottom=acc[full],
        width=1 / n_bins,
        color="red",
        alpha=0.25,
        label="gap",
    )
    ax_rel.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="confidence",
        ylabel="accuracy",
        title=f"Reliability (S = {pred.num_samples})",
    )
    ax_ret.plot(RETAINED, retention_curve(pred.total.cpu().double().numpy(), correct), "o-", ms=3)
    ax_ret.set(
        xlabel="fraction retained (most uncertain rejected first)",
        ylabel="accuracy of the retained",
        title="Uncertainty vs error",
    )
    counts = sorted(metrics_by_samples)
    x = [max(s, 0.5) for s in counts]  # S = 0 (posterior mean) drawn at 0.5 on the log axis
    for key, name in CLASSIFICATION_PANELS[:3]:
        values = [metrics_by_samples[s].get(key) for s in counts]
        ax_s.plot(x, [math.nan if v is None else v for v in values], "o-", label=name)
    ax_s.set_xscale("log", base=2)
    ax_s.set_xticks(x, ["mean" if s == 0 else str(s) for s in counts])
    ax_s.set(xlabel="posterior samples S", title="Metrics vs S")
    ax_s.legend(fontsize=8)
    return _save(fig, path)
