"""One markdown summary of several `balora compare --task mof` folders (issue 6).

The MOF study runs the methods in more than one comparison (the sampling baselines at one S,
BaLoRA over the whole S grid); this prints, from their ``results.json`` files, one table of
every method at a common S and one table of each method against S (mean ± std over seeds)::

    python benchmarks/mof_summary.py runs/mof-random runs/mof-random-s32 --at 32

Nothing is computed here beyond averaging over seeds: every number is read from the
comparisons' results.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from balora.experiments.results import Results

COLUMNS = (
    ("mae", "MAE ↓"),
    ("rmse", "RMSE ↓"),
    ("nll", "NLL ↓"),
    ("spearman_std_abs_error", "Spearman(std, |err|) ↑"),
    ("pearson_std_abs_error", "Pearson(std, |err|) ↑"),
    ("spearman_epistemic_abs_error", "Spearman(epistemic std, |err|) ↑"),
    ("miscalibration_area", "miscal. area ↓"),
    ("coverage_68", "cov. 68%"),
    ("coverage_95", "cov. 95%"),
)


def _row(results: Results, method: str, s: int) -> list[str]:
    return [results.summary(method, key, s).format(3).replace("|", "\\|") for key, _ in COLUMNS]


def _header(first: Sequence[str]) -> list[str]:
    names = [*first, *(title.replace("|", "\\|") for _, title in COLUMNS)]
    return ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]


def summarize(folders: Sequence[Path], at: int) -> str:
    """The markdown text: every method at S = `at`, then each method over its S grid."""
    loaded = [Results.load(f) for f in folders]
    lines = [f"## All methods at S = {at} (mean ± std over seeds)", ""]
    lines += _header(["method", "seeds", "from"])
    for res in loaded:
        for m in res.methods:
            runs = res.runs_of(m)
            if runs and (at in res.num_samples or not runs[0].stochastic):
                cells = [m, str(len(runs)), f"`{res.output_dir.name}`", *_row(res, m, at)]
                lines.append("| " + " | ".join(cells) + " |")
    for res in loaded:
        for m in res.methods:
            runs = res.runs_of(m)
            if not runs or not runs[0].stochastic or len(res.num_samples) < 2:
                continue
            lines += ["", f"## {m} against S (`{res.output_dir.name}`)", ""]
            lines += _header(["S"])
            for s in (0, *res.num_samples):  # 0: the posterior mean, one deterministic pass
                label = "0 (mean)" if s == 0 else str(s)
                lines.append("| " + " | ".join([label, *_row(res, m, s)]) + " |")
    lines += ["", "## Cost (mean over seeds)", "", "| method | from | train s | predict s |"]
    lines.append("|---|---|---|---|")
    for res in loaded:
        for m in res.methods:
            runs = res.runs_of(m)
            if runs:
                train = sum(r.train_seconds for r in runs) / len(runs)
                ev = [r.evaluations[-1] for r in runs]
                pred = sum(e.predict_seconds for e in ev) / len(ev)
                s = ev[0].num_samples
                where = "" if s is None else f" (S = {s})"
                lines.append(f"| {m} | `{res.output_dir.name}` | {train:.1f} | {pred:.1f}{where} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="compare output folders")
    parser.add_argument("--at", type=int, default=32, help="the S of the common table")
    args = parser.parse_args(argv)
    print(summarize(args.folders, args.at), end="")


if __name__ == "__main__":
    main()
