"""Pick BaLoRA's lever from the regime study's screen (issue 15), on validation data only.

Each screen arm is one ``balora compare --evaluate-on validation`` folder (seed 0, BaLoRA
with one set of options, evaluated on the validation split). The arm with the lowest
validation NLL at S = `--at` wins (the NLL is a proper score; ECE, reported beside it, is
not). Prints the winner's options (its folder name maps to them through ARMS) and writes
``selection.json`` and ``selection.md`` into the screen folder::

    python benchmarks/regime_select.py runs/regime/text/screen --at 10
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

from balora.experiments.results import Results

ARMS: dict[str, list[str]] = {
    "p0.1-layer": ["--prior-p", "0.1", "--kl-reduction", "layer"],
    "p0.3-layer": ["--prior-p", "0.3", "--kl-reduction", "layer"],
    "p0.5-layer": ["--prior-p", "0.5", "--kl-reduction", "layer"],
    "p0.1-element": ["--prior-p", "0.1", "--kl-reduction", "element"],
    "p0.3-element": ["--prior-p", "0.3", "--kl-reduction", "element"],
    "p0.5-element": ["--prior-p", "0.5", "--kl-reduction", "element"],
    "p0.5-element-warmup0.3": ["--prior-p", "0.5", "--kl-reduction", "element",
                               "--noise-warmup", "0.3"],
    "p0.5-element-alphalr1e-3": ["--prior-p", "0.5", "--kl-reduction", "element",
                                 "--alpha-lr", "1e-3"],
    "p0.5-element-kl0.1": ["--prior-p", "0.5", "--kl-reduction", "element",
                           "--kl-weight", "0.1"],
}  # fmt: skip
"""Screen arm → its options (the lever: the prior's p, the KL's reduction, a deterministic
warm-up, the α learning rate, KL tempering)."""


METRICS = ("nll", "ece", "accuracy", "mae", "mean_epistemic")
"""Recorded per arm (ECE and accuracy for classification, MAE for regression)."""


def _value(results: Results, method: str, key: str, at: int) -> float | None:
    return results.summary(method, key, at).mean


def select(screen: Path, at: int) -> tuple[str, list[dict[str, object]]]:
    """The winning arm and every arm's validation metrics (lowest NLL first)."""
    rows = []
    for arm in ARMS:
        folder = screen / arm
        if not (folder / "results.json").is_file():
            continue
        res = Results.load(folder)
        method = res.methods[0]
        row: dict[str, object] = {"arm": arm, "options": " ".join(ARMS[arm])}
        for key in METRICS:
            row[key] = _value(res, method, key, at)
            row[f"{key}_mean"] = _value(res, method, key, 0)
        if row["nll"] is not None:  # an arm still training has no NLL yet
            rows.append(row)
    if not rows:
        raise SystemExit(f"no finished screen arm under {screen}")
    rows.sort(key=lambda r: r["nll"])  # type: ignore[arg-type, return-value]
    return str(rows[0]["arm"]), rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("screen", type=Path, nargs="?")
    parser.add_argument(
        "--list",
        action="store_true",
        help="print ARM=OPTIONS lines of the arms in $SCREEN_ARMS (default: all) and stop",
    )
    parser.add_argument("--at", type=int, default=10, help="S of the comparison (default 10)")
    args = parser.parse_args(argv)
    if args.list:
        wanted = os.environ.get("SCREEN_ARMS", "").split() or list(ARMS)
        print("\n".join(f"{arm}={' '.join(ARMS[arm])}" for arm in wanted))
        return 0
    if args.screen is None:
        parser.error("give the screen folder")
    best, rows = select(args.screen, args.at)
    (args.screen / "selection.json").write_text(
        json.dumps({"selected": best, "options": ARMS[best], "at": args.at, "arms": rows},
                   indent=1) + "\n"
    )  # fmt: skip
    regression = rows[0]["mae"] is not None
    columns = {"nll": "NLL", "mae": "MAE"} if regression else {"nll": "NLL", "ece": "ECE"}
    if not regression:
        columns["accuracy"] = "accuracy"
    columns["mean_epistemic"] = "mean epistemic"
    columns.update({f"{k}_mean": f"{columns[k]} (S=0)" for k in list(columns)[:2]})
    lines = [
        f"Screen on the validation split, seed 0, S = {args.at} (S = 0: posterior mean); "
        f"lowest validation NLL wins: **{best}**.",
        "",
        "| arm | options | " + " | ".join(columns.values()) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for r in rows:
        cells = [r["arm"], f"`{r['options']}`"]
        for key in columns:
            v = r[key]
            cells.append("–" if v is None else f"{v:.4f}")
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    (args.screen / "selection.md").write_text("\n".join(lines) + "\n")
    print(" ".join(ARMS[best]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
