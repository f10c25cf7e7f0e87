"""One markdown summary of a task of the regime study (issue 15), from its compare folders.

    python benchmarks/regime_summary.py runs/regime/text > runs/regime/text/summary.md

Every ``results.json`` below the task folder (except the lever screen) is one comparison;
folders are grouped by their first path component (the head mode: ``adapted``, ``new``,
``probe``; or the split for MOF), and folders outside a group (full fine-tuning, which has no
head to handle) are shown in every group as a reference. Per group: every method at S = 0
(the posterior mean) and S = 10, the noise diagnostics on test data, costs, each sampling
method against S, and BaLoRA against LoRA seed by seed. Nothing is computed here beyond
averages over seeds and ratios: every number is read from the comparisons' results.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from balora.experiments.results import FailedRun, MethodRun, Results

CLASSIFICATION = (
    ("accuracy", "accuracy ↑"),
    ("ece", "ECE ↓"),
    ("nll", "NLL ↓"),
    ("brier", "Brier ↓"),
    ("auroc_error", "AUROC error ↑"),
    ("mean_epistemic", "epistemic (nats)"),
)
OOD = (
    ("auroc_ood_total", "AUROC OOD (total) ↑"),
    ("auroc_ood_epistemic", "AUROC OOD (epistemic) ↑"),
)
REGRESSION = (
    ("mae", "MAE ↓"),
    ("nll", "NLL ↓"),
    ("spearman_std_abs_error", "Spearman(std, \\|err\\|) ↑"),
    ("spearman_epistemic_abs_error", "Spearman(epistemic std, \\|err\\|) ↑"),
    ("coverage_95", "cov. 95%"),
    ("mean_epistemic", "epistemic var."),
)
AT = 10
Record = TypeVar("Record", MethodRun, FailedRun)


def _folders(task_dir: Path) -> dict[str, list[Path]]:
    groups: dict[str, list[Path]] = {}
    for path in sorted(task_dir.rglob("results.json")):
        rel = path.parent.relative_to(task_dir)
        if rel.parts and rel.parts[0] == "screen":
            continue
        key = rel.parts[0] if len(rel.parts) > 1 else ""
        groups.setdefault(key, []).append(path.parent)
    references = groups.pop("", [])
    if not groups and not references:
        raise SystemExit(f"no comparison (results.json) under {task_dir}")
    if not groups:
        return {"all": references}
    return {k: v + references for k, v in groups.items()}


def _fmt(values: Sequence[float | None], digits: int = 3) -> str:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{np.mean(vals):.{digits}f} ± {np.std(vals, ddof=1):.{digits}f}"


def _metric(run: MethodRun, key: str, s: int) -> float | None:
    try:
        value = run.at(s).metrics.get(key)
    except KeyError:
        return None
    return None if value is None else float(value)


def _layer_ratio(run: MethodRun, top: str, bottom: str) -> float | None:
    layers = (run.noise or {}).get("layers", [])
    ratios = [ly[top] / ly[bottom] for ly in layers if ly.get(top) is not None and ly[bottom]]
    return float(np.mean(ratios)) if ratios else None


def _seconds(run: MethodRun) -> float | None:
    try:
        return run.at(AT if run.stochastic else 0).predict_seconds
    except KeyError:
        return None


def _with_files(listed: list[Record], records: Path, read: Callable[[Any], Record]) -> list[Record]:
    """`listed` (a folder's results.json) and the records in `records`/*.json it lacks (by
    method and seed): those of earlier `compare` calls with other method lists."""
    out = list(listed)
    seen = {(r.method, r.seed) for r in out}
    for path in sorted(records.glob("*.json")):
        record = read(json.loads(path.read_text()))
        if (record.method, record.seed) not in seen:
            seen.add((record.method, record.seed))
            out.append(record)
    return out


def _runs(folders: list[Path], loaded: list[Results]) -> dict[str, list[MethodRun]]:
    """Every finished run of each folder by method label: those in its ``results.json`` and
    any other in its ``runs/*.json``. A folder's runs may come from several `compare` calls
    with different method lists (one configuration: `compare` refuses to resume under
    another), so a study stopped part-way shows what finished; methods in the order of each
    folder's last call, seeds ascending. A method already shown by an earlier folder (the
    same method under other options, e.g. a second BaLoRA arm) is labelled with its folder:
    ``balora (balora-p0.1-layer)``."""
    out: dict[str, list[MethodRun]] = {}
    for folder, res in zip(folders, loaded, strict=True):
        found = _with_files(res.runs, folder / "runs", MethodRun.from_dict)
        order = {m: i for i, m in enumerate(res.methods)}
        found.sort(key=lambda r: (order.get(r.method, len(order)), r.method, r.seed))
        taken = set(out)
        for run in found:
            label = f"{run.method} ({folder.name})" if run.method in taken else run.method
            out.setdefault(label, []).append(run)
    return out


def _table(header: Sequence[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def summarize_group(name: str, folders: list[Path]) -> list[str]:
    loaded = [Results.load(f) for f in folders]
    runs = _runs(folders, loaded)
    regression = loaded[0].task == "regression"
    columns = REGRESSION if regression else CLASSIFICATION
    if any(r.has_ood for r in loaded):
        columns += OOD
    lines = [f"## {name or 'all'}", ""]
    lines += [f"Folders: {', '.join(f'`{f.name}`' for f in folders)}.", ""]
    rows = []
    for method, rs in runs.items():
        for s in (0, AT) if rs[0].stochastic else (0,):
            label = f"{method} (S = {s})" if rs[0].stochastic else method
            cells = [label, str(len(rs))]
            cells += [_fmt([_metric(r, k, s) for r in rs]) for k, _ in columns]
            rows.append(cells)
    lines += _table(["method", "seeds", *(t for _, t in columns)], rows)
    failed = [
        f
        for folder, res in zip(folders, loaded, strict=True)
        for f in _with_files(res.failed, folder / "failed", FailedRun.from_dict)
    ]
    if failed:
        lines += ["", "Failed (training diverged; not in the means):", ""]
        lines += [f"- {f.method}, seed {f.seed}: {f.error}" for f in failed]
    lines += ["", "Noise diagnostics on test data (S = 10) and costs (seconds, one thread):", ""]
    rows = []
    for method, rs in runs.items():
        noise = [r.noise or {} for r in rs]
        rows.append(
            [
                method,
                _fmt([n.get("output_std") for n in noise], 4),
                _fmt([n.get("nll_gap") for n in noise], 4),
                _fmt([_layer_ratio(r, "noise_std", "update_norm") for r in rs]),
                _fmt([_layer_ratio(r, "update_norm", "base_norm") for r in rs], 4),
                _fmt([r.train_seconds for r in rs], 0),
                _fmt([_seconds(r) for r in rs], 1),
            ]
        )
    header = ["method", "output std", "NLL gap S=0 − S=10", "noise/update", "update/base"]
    lines += _table([*header, "train s", f"predict s (S={AT})"], rows)
    sampling = {m: rs for m, rs in runs.items() if rs[0].stochastic}
    # classification: ECE and NLL; regression: NLL and both Spearman correlations
    for key, title in columns[1:4] if regression else columns[1:3]:
        # the S values some sampling method was evaluated at (a deterministic method's
        # comparison may list others)
        grid = sorted(
            {
                s
                for res in loaded
                for s in res.num_samples
                if any(_metric(r, key, s) is not None for rs in sampling.values() for r in rs)
            }
        )
        rows = [
            [method, *(_fmt([_metric(r, key, s) for r in rs]) for s in [0, *grid])]
            for method, rs in sampling.items()
        ]
        if rows:
            lines += ["", f"{title} against S (S = 0: the posterior mean):", ""]
            lines += _table(["method", *(f"S = {s}" for s in [0, *grid])], rows)
    lines += _against_ensemble(runs) if regression else _against_lora(runs)
    return lines


def _against_ensemble(runs: dict[str, list[MethodRun]]) -> list[str]:
    """Regression (claim 4): each sampling method's epistemic Spearman at S = 10 against the
    deep ensemble's on the same seed (the target: at least the ensemble's on the size-shift
    split), and its MAE against LoRA's."""
    if "ensemble" not in runs:
        return []
    ensemble = {r.seed: r for r in runs["ensemble"]}
    lora = {r.seed: r for r in runs.get("lora", [])}
    key = "spearman_epistemic_abs_error"
    rows = []
    for method in ("balora", "balora_constant", "mc_dropout", "blob"):
        for r in sorted(runs.get(method, []), key=lambda r: r.seed):
            base = ensemble.get(r.seed)
            ours, theirs = _metric(r, key, AT), None if base is None else _metric(base, key, 0)
            if ours is None or theirs is None:
                continue
            mae, lora_mae = _metric(r, "mae", AT), None
            if r.seed in lora:
                lora_mae = _metric(lora[r.seed], "mae", 0)
            rows.append(
                [
                    method,
                    str(r.seed),
                    f"{ours:.3f}",
                    f"{theirs:.3f}",
                    f"{ours - theirs:+.3f}",
                    "–" if mae is None or lora_mae is None else f"{mae - lora_mae:+.3f}",
                ]
            )
    header = ["method", "seed", "Spearman(epistemic)", "ensemble's", "difference", "MAE − LoRA's"]
    title = "Against the deep ensemble, seed by seed (S = 10; Spearman of the epistemic std"
    title += " with |error|):"
    return ["", title, "", *_table(header, rows)] if rows else []


def _against_lora(runs: dict[str, list[MethodRun]]) -> list[str]:
    """BaLoRA at S = 10 against LoRA, seed by seed (the issue's targets for classification:
    ECE ratio ≤ 0.7, NLL below, accuracy within half a point)."""
    if "lora" not in runs:
        return []
    lora = {r.seed: r for r in runs["lora"]}
    lines = ["", "Against LoRA, seed by seed (S = 10):", ""]
    rows = []
    for method in ("balora", "balora_constant", "lora_ts", "mc_dropout", "blob", "laplace"):
        for r in sorted(runs.get(method, []), key=lambda r: r.seed):
            base = lora.get(r.seed)
            if base is None:
                continue
            s = AT if r.stochastic else 0
            ece, nll, acc = (_metric(r, k, s) for k in ("ece", "nll", "accuracy"))
            b_ece, b_nll, b_acc = (_metric(base, k, 0) for k in ("ece", "nll", "accuracy"))
            if None in (ece, nll, acc, b_ece, b_nll, b_acc):
                continue
            rows.append(
                [
                    method,
                    str(r.seed),
                    f"{ece / b_ece:.2f}",
                    f"{nll - b_nll:+.3f}",
                    f"{100 * (acc - b_acc):+.1f}",
                ]
            )
    header = ["method", "seed", "ECE / LoRA's", "NLL − LoRA's", "accuracy − LoRA's (points)"]
    return lines + _table(header, rows) if rows else []


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task_dir", type=Path)
    args = parser.parse_args(argv)
    lines = [f"# Regime study: {args.task_dir.name}", ""]
    selection = args.task_dir / "screen" / "selection.md"
    if selection.is_file():
        lines += ["## The lever screen (validation split)", "", selection.read_text(), ""]
    for name, folders in _folders(args.task_dir).items():
        lines += [*summarize_group(name, folders), ""]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
