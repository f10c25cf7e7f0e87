"""Method study (issue #9): which BaLoRA options make α(x) move, and which defaults to choose.

One command runs (or resumes) the whole study on the offline default text task
(all-MiniLM-L6-v2, Rotten Tomatoes, query/value adapters) under one reduced budget:

    python benchmarks/method_study.py --output runs/method-study
    python benchmarks/method_study.py --output /tmp/ms-quick --quick      # smoke test, ~1 min
    python benchmarks/method_study.py --output runs/method-study --summarize-only

Two phases, so that the choice of configuration never looks at the test set:

    screen    every arm, seed 0, evaluated on the VALIDATION split (passed to `compare` as its
              evaluation set); arms are ranked by validation ECE and NLL at the screen's S
    confirm   the references (lora, mc_dropout, full_ft), the current default and the screened
              BaLoRA arm with the best validation ECE (calibration is what BaLoRA is for), seeds
              0, 1, 2 (seed-major, so an interrupted study has whole seeds), evaluated on the
              TEST split at every S

Training options that live in `TrainConfig` (β, its warm-up, the α learning rate) are shared by
every method of one `compare` call, so arms are grouped by their training overrides and each
group has its own output folder (``<phase>/<group>``). Every folder resumes per (arm, seed):
rerunning the command skips what is on disk. At the end (and with ``--summarize-only``) the
study writes ``summary.md``, ``summary.json`` and two plots that pool all groups.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from balora.config import BaLoRAConfig
from balora.experiments import compare
from balora.experiments.results import MethodRun, Results
from balora.experiments.specs import MethodSpec
from balora.methods import TrainConfig
from balora.tasks.text import TextTaskConfig, load_text_task

# ── the budget ──────────────────────────────────────────────────────────────────────────────

TASK = {"max_train": 1500, "max_eval": 400, "max_length": 48}
# alpha_lr=None (α at the shared lr) is pinned so that the arms keep their meaning when the
# library's default changes; arms that want the faster α learning rate say so.
TRAIN = {"epochs": 2, "batch_size": 32, "lr": 1e-3, "alpha_lr": None}
SCREEN_SAMPLES = (8,)
CONFIRM_SAMPLES = (1, 4, 8)
CONFIRM_SEEDS = (0, 1, 2)
QUICK_TASK = {"max_train": 64, "max_eval": 32, "max_length": 24}
QUICK_TRAIN = {"epochs": 1, "batch_size": 16, "lr": 1e-3, "alpha_lr": None}
FULL_FT_LR = 5e-5
DEFAULT_ARM = "balora-default"


@dataclass(frozen=True)
class Arm:
    """One configuration: a method, changes to the adapter config and to the training budget."""

    label: str
    method: str = "balora"
    adapter: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    why: str = ""

    @property
    def group(self) -> str:
        """The output sub-folder of this arm's training overrides."""
        if not self.train:
            return "base"
        return "_".join(f"{k}={v}" for k, v in sorted(self.train.items()))

    def spec(self) -> MethodSpec:
        opts = dict(self.options)
        if self.adapter:
            opts["adapter"] = dict(self.adapter)
        return MethodSpec(self.method, opts, label=self.label)


# p 0.1 was the library's default when this study ran; pinned so the arms keep their meaning
ELEMENT = {"kl_reduction": "element", "prior_p": 0.1}
LAYER = {"kl_reduction": "layer", "prior_p": 0.1}
LAYER_P5 = {"kl_reduction": "layer", "prior_p": 0.5}
FAST_ALPHA = {"alpha_lr": 1e-2}

# The references: run in the confirm phase only (lora also in the screen, as the bar to beat).
REFERENCES: tuple[Arm, ...] = (
    Arm("lora", "lora", why="point estimate"),
    Arm("mc_dropout", "mc_dropout", options={"dropout": 0.1}, why="MC dropout p=0.1 on A's input"),
    Arm("full_ft", "full_ft", options={"lr": FULL_FT_LR}, why="every weight trains, lr 5e-5"),
)

# Screened arms in priority order (an interrupted screen has the most telling arms first).
# Every arm after `layer-p0.5-alr` changes one option of it.
SCREEN: tuple[Arm, ...] = (
    Arm("lora", "lora", why="the bar to beat"),
    Arm(
        DEFAULT_ARM,
        train={"alpha_lr": TrainConfig().alpha_lr},
        why="the library's current defaults (BaLoRAConfig(), TrainConfig())",
    ),
    Arm("el-p0.1", adapter=ELEMENT, why="the first defaults: element KL, p=0.1, β=1"),
    Arm("el-p0.5", adapter={**ELEMENT, "prior_p": 0.5}, why="element KL, α_p=1"),
    Arm(
        "el-p0.1-b0.01-wu0.3",
        adapter=ELEMENT,
        train={"kl_weight": 0.01, "kl_warmup": 0.3},
        why="element KL with a small, warmed-up β",
    ),
    Arm("layer-p0.1", adapter=LAYER, why="one KL term per layer"),
    Arm("layer-p0.5", adapter=LAYER_P5, why="layer KL, α_p=1"),
    Arm("layer-p0.5-alr", adapter=LAYER_P5, train=FAST_ALPHA, why="... α lr 1e-2"),
    Arm(
        "layer-p0.5-alr-token",
        adapter={**LAYER_P5, "noise": "token"},
        train=FAST_ALPHA,
        why="... token noise",
    ),
    Arm(
        "layer-p0.5-alr-backbone",
        adapter={**LAYER_P5, "alpha_source": "backbone"},
        train=FAST_ALPHA,
        why="... backbone α network",
    ),
    Arm(
        "layer-p0.5-alr-constant",
        "balora_constant",
        adapter=LAYER_P5,
        train=FAST_ALPHA,
        why="... constant α (no input dependence)",
    ),
    Arm(
        "layer-p0.5-alr-rank",
        adapter={**LAYER_P5, "alpha_per_rank": True},
        train=FAST_ALPHA,
        why="... one α per rank component",
    ),
    Arm(
        "layer-p0.5-alr-log",
        adapter={**LAYER_P5, "alpha_param": "log"},
        train=FAST_ALPHA,
        why="... α = exp(z)",
    ),
    Arm(
        "layer-p0.1-init1-alr",
        adapter={**LAYER, "alpha_init": 1.0},
        train=FAST_ALPHA,
        why="layer KL, α_p=0.11 but α starts at 1, α lr 1e-2",
    ),
    Arm(
        "layer-p0.5-alr-r16",
        adapter={**LAYER_P5, "r": 16, "lora_alpha": 32.0},
        train=FAST_ALPHA,
        why="... rank 16 (lora_alpha = 2r)",
    ),
)
QUICK_SCREEN = ("lora", DEFAULT_ARM, "layer-p0.5-alr")

# ── running ─────────────────────────────────────────────────────────────────────────────────


def _groups(arms: Iterable[Arm]) -> dict[str, list[Arm]]:
    out: dict[str, list[Arm]] = {}
    for arm in arms:
        out.setdefault(arm.group, []).append(arm)
    return out


def _run_phase(
    task: Any,
    arms: Sequence[Arm],
    *,
    out: Path,
    evaluation: str,
    seeds: Sequence[int],
    num_samples: Sequence[int],
    train: dict[str, Any],
    progress: bool,
) -> None:
    """Run every arm for every seed, seed-major; one resumable `compare` folder per group."""
    adapter = BaLoRAConfig(target_modules=task.target_modules, modules_to_save=task.modules_to_save)
    test = task.val if evaluation == "val" else task.test
    for k in range(len(seeds)):
        for group, members in _groups(arms).items():
            last = k == len(seeds) - 1
            print(f"[{time.strftime('%H:%M:%S')}] {out.name}/{group}: seeds {list(seeds[: k + 1])}")
            compare(
                task.model_factory,
                task.train,
                task.val,
                test,
                [a.spec() for a in members],
                adapter=adapter,
                train_config=TrainConfig(**{**train, **members[0].train}, progress=False),
                seeds=tuple(seeds[: k + 1]),
                num_samples=tuple(num_samples),
                output_dir=out / group,
                resume=True,
                progress=progress,
                name=f"{out.name}/{group}",
                plots=last,
            )


def _load_runs(phase_dir: Path) -> tuple[dict[str, list[MethodRun]], list[int]]:
    """Every finished run under ``phase_dir/<group>/results.json``, by arm label."""
    runs: dict[str, list[MethodRun]] = {}
    samples: set[int] = set()
    for path in sorted(phase_dir.glob("*/results.json")):
        results = Results.load(path.parent)
        samples.update(results.num_samples)
        for run in results.runs:
            runs.setdefault(run.method, []).append(run)
    return runs, sorted(samples)


def _metric(run: MethodRun, s: int, key: str) -> float:
    value = run.at(s).metrics.get(key)
    return math.nan if value is None else float(value)


def select(screen_dir: Path) -> list[str]:
    """The screened BaLoRA arm (not lora, not the default) to confirm: the lowest validation ECE
    at the largest screen S (ties: validation NLL); written to ``selection.json`` with the
    rankings by ECE and by NLL."""
    runs, samples = _load_runs(screen_dir)
    s = max(samples)
    screened = {a.label for a in SCREEN if a.method != "lora" and a.label != DEFAULT_ARM}
    scores = {
        label: (_metric(r[0], s, "ece"), _metric(r[0], s, "nll")) for label, r in runs.items()
    }
    candidates = [label for label in scores if label in screened]
    chosen = [min(candidates, key=lambda k: scores[k])] if candidates else []

    def ranking(key: Any) -> list[dict[str, Any]]:
        return [
            {"arm": k, "val_ece": scores[k][0], "val_nll": scores[k][1]}
            for k in sorted(scores, key=key)
        ]

    record = {
        "criterion": f"lowest validation ECE at S={s} (seed 0) among the screened BaLoRA arms",
        "ranking_by_ece": ranking(lambda k: scores[k]),
        "ranking_by_nll": ranking(lambda k: scores[k][::-1]),
        "chosen": chosen,
    }
    (screen_dir.parent / "selection.json").write_text(json.dumps(record, indent=2) + "\n")
    return chosen


# ── summary ─────────────────────────────────────────────────────────────────────────────────

METRICS = (("accuracy", "acc"), ("ece", "ECE"), ("nll", "NLL"), ("brier", "Brier"))
METRICS += (("auroc_error", "AUROC err"), ("mean_epistemic", "epistemic"))


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=float)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def _fmt(mean: float, std: float, n: int, digits: int = 3) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def alpha_stats(run: MethodRun) -> dict[str, float] | None:
    """α(x) over the evaluation inputs, summarised over layers: the median α / α_p, the median
    and the largest relative spread (q95 − q05) / q50 per layer, and the largest range."""
    if not run.alpha or run.prior_alpha is None:
        return None
    layers = list(run.alpha.values())
    rel = [(a.q95 - a.q05) / a.q50 for a in layers]
    return {
        "median_alpha_over_prior": float(np.median([a.q50 for a in layers]) / run.prior_alpha),
        "alpha_median": float(np.median([a.q50 for a in layers])),
        "rel_spread_median": float(np.median(rel)),
        "rel_spread_max": float(np.max(rel)),
        "range_max": float(max(a.spread for a in layers)),
    }


def summarize_phase(phase_dir: Path, arms: Sequence[Arm]) -> tuple[str, dict[str, Any]]:
    """Markdown tables and a JSON summary (mean ± std over seeds) of one phase."""
    runs, samples = _load_runs(phase_dir)
    order = [a.label for a in arms if a.label in runs] + sorted(set(runs) - {a.label for a in arms})
    why = {a.label: a.why for a in (*REFERENCES, *SCREEN)}
    smax = max(samples) if samples else 0
    data: dict[str, Any] = {"num_samples": samples, "arms": {}}
    head = "| arm | seeds | " + " | ".join(h for _, h in METRICS) + " | train s |"
    lines = [f"### Metrics at S = {smax} (S = 0 / one pass for lora and full_ft)", "", head]
    lines.append("|" + "---|" * (len(METRICS) + 3))
    for label in order:
        rs = runs[label]
        entry: dict[str, Any] = {
            "seeds": [r.seed for r in rs],
            "why": why.get(label, ""),
            "stochastic": rs[0].stochastic,
        }
        cells = []
        for key, _ in METRICS:
            per_s = {}
            for s in [0, *samples]:
                try:
                    m, sd = _mean_std([_metric(r, s, key) for r in rs])
                except KeyError:
                    continue
                per_s[str(s)] = {"mean": m, "std": sd}
            entry[key] = per_s
            m, sd = per_s[str(smax)]["mean"], per_s[str(smax)]["std"]
            cells.append(_fmt(m, sd, len(rs), 4 if key == "mean_epistemic" else 3))
        tm, tsd = _mean_std([r.train_seconds for r in rs])
        entry["train_seconds"] = {"mean": tm, "std": tsd}
        data["arms"][label] = entry
        lines.append(f"| {label} | {len(rs)} | " + " | ".join(cells) + f" | {tm:.0f} |")

    lines += ["", "### S = 0 (posterior mean) vs S = max: NLL and ECE", ""]
    lines += ["| arm | NLL S=0 | NLL S=max | ECE S=0 | ECE S=max |", "|---|---|---|---|---|"]
    for label in order:
        e = data["arms"][label]
        if not e["stochastic"]:
            continue
        n = len(e["seeds"])
        cells = [
            _fmt(e[k][s]["mean"], e[k][s]["std"], n)
            for k in ("nll", "ece")
            for s in ("0", str(smax))
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    lines += ["", "### α(x) over the evaluation inputs (layer medians; mean over seeds)", ""]
    lines += [
        "| arm | α_p | median α | median α / α_p | rel. spread (q95−q05)/q50, median layer "
        "| same, widest layer | widest range |",
        "|---|---|---|---|---|---|---|",
    ]
    for label in order:
        rs = [r for r in runs[label] if r.alpha]
        if not rs:
            continue
        stats = [alpha_stats(r) for r in rs]
        avg = {k: float(np.mean([s[k] for s in stats])) for k in stats[0]}
        data["arms"][label]["alpha"] = avg
        data["arms"][label]["alpha_per_layer_seed0"] = {
            name: {"q05": a.q05, "q50": a.q50, "q95": a.q95, "min": a.min, "max": a.max}
            for name, a in rs[0].alpha.items()
        }
        lines.append(
            f"| {label} | {rs[0].prior_alpha:.3g} | {avg['alpha_median']:.4g} | "
            f"{avg['median_alpha_over_prior']:.3f} | {avg['rel_spread_median']:.3f} | "
            f"{avg['rel_spread_max']:.3f} | {avg['range_max']:.4g} |"
        )
    return "\n".join(lines) + "\n", data


def plot_metrics_vs_samples(data: dict[str, Any], path: Path) -> None:
    """Each metric vs S for every arm of the confirm phase (mean ± std over seeds)."""
    samples = [0, *data["num_samples"]]
    fig = Figure(figsize=(4.0 * len(METRICS), 3.4))
    axes = fig.subplots(1, len(METRICS))
    for ax, (key, title) in zip(axes, METRICS, strict=True):
        for label, entry in data["arms"].items():
            per_s = entry[key]
            if not entry["stochastic"]:  # lora / full_ft: one evaluation for every S
                m = per_s["0"]["mean"]
                ax.axhline(m, ls="--", lw=1, label=label, color=f"C{hash(label) % 10}")
                continue
            xs = [s for s in samples if str(s) in per_s]
            m = np.array([per_s[str(s)]["mean"] for s in xs])
            sd = np.array([per_s[str(s)]["std"] for s in xs])
            x = np.array([max(s, 0.5) for s in xs])
            ax.errorbar(x, m, yerr=sd, marker="o", ms=3, capsize=2, label=label)
        ax.set_xscale("log", base=2)
        ax.set_title(title)
        ax.set_xlabel("S (0 plotted at 0.5: posterior mean)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def plot_alpha(data: dict[str, Any], path: Path) -> None:
    """q05–q95 of α(x) / α_p per adapted layer (seed 0) for every arm that samples α."""
    arms = {k: v for k, v in data["arms"].items() if "alpha_per_layer_seed0" in v}
    if not arms:
        return
    fig = Figure(figsize=(11, 0.5 + 0.45 * len(arms) * 1.6))
    ax = fig.subplots()
    for i, entry in enumerate(arms.values()):
        layers = entry["alpha_per_layer_seed0"]
        prior = entry["alpha"]["alpha_median"] / entry["alpha"]["median_alpha_over_prior"]
        for j, a in enumerate(layers.values()):
            y = i + (j - len(layers) / 2) / (len(layers) + 2)
            ax.plot([a["q05"] / prior, a["q95"] / prior], [y, y], color=f"C{i % 10}", lw=2)
            ax.plot([a["min"] / prior, a["max"] / prior], [y, y], color=f"C{i % 10}", lw=0.5)
    ax.set_yticks(range(len(arms)), list(arms))
    ax.axvline(1.0, color="k", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel(
        "α(x) / α_p over the evaluation inputs, one line per adapted layer (thick q05–q95)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def summarize(out: Path, confirm_arms: Sequence[Arm]) -> None:
    parts = ["# Method study: summary (generated by benchmarks/method_study.py)", ""]
    summary: dict[str, Any] = {}
    for phase, arms, title in (
        ("screen", SCREEN, "Screen: seed 0, evaluated on the VALIDATION split"),
        ("confirm", confirm_arms, "Confirm: evaluated on the TEST split"),
    ):
        if not any((out / phase).glob("*/results.json")):
            continue
        text, data = summarize_phase(out / phase, arms)
        summary[phase] = data
        parts += [f"## {title}", "", text]
        plot_metrics_vs_samples(data, out / f"{phase}_metrics_vs_samples.png")
        plot_alpha(data, out / f"{phase}_alpha.png")
    selection = out / "selection.json"
    if selection.is_file():
        summary["selection"] = json.loads(selection.read_text())
    (out / "summary.md").write_text("\n".join(parts))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=True) + "\n")
    print("\n".join(parts))


# ── the command ─────────────────────────────────────────────────────────────────────────────


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path("runs/method-study"))
    parser.add_argument("--quick", action="store_true", help="tiny budget, 3 arms, 1 seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(CONFIRM_SEEDS))
    parser.add_argument(
        "--screen-arms", nargs="+", default=None, help="screen only these arm labels"
    )
    parser.add_argument(
        "--confirm-extra", nargs="+", default=[], help="screened arms to confirm as well"
    )
    parser.add_argument("--skip-screen", action="store_true", help="confirm from selection.json")
    parser.add_argument(
        "--no-references",
        action="store_true",
        help="confirm without lora / mc_dropout / full_ft (already on disk from an earlier run)",
    )
    parser.add_argument("--summarize-only", action="store_true")
    parser.add_argument("--progress", action="store_true", help="progress bars")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    out: Path = args.output
    out.mkdir(parents=True, exist_ok=True)

    by_label = {a.label: a for a in SCREEN}
    screen = [by_label[k] for k in QUICK_SCREEN] if args.quick else list(SCREEN)
    unknown = sorted(set(args.confirm_extra) - set(by_label))
    if unknown:
        parser.error(f"unknown arm(s) {unknown}; known: {list(by_label)}")
    if args.screen_arms is not None:
        unknown = sorted(set(args.screen_arms) - set(by_label))
        if unknown:
            parser.error(f"unknown arm(s) {unknown}; known: {list(by_label)}")
        screen = [a for a in screen if a.label in args.screen_arms]
    seeds = args.seeds[:1] if args.quick else args.seeds
    selection = out / "selection.json"

    def confirm_arms(chosen: Sequence[str]) -> list[Arm]:
        labels = dict.fromkeys([*chosen, *args.confirm_extra])
        refs = () if args.no_references else REFERENCES
        return [*refs, by_label[DEFAULT_ARM], *(by_label[c] for c in labels)]

    if args.summarize_only:
        chosen = json.loads(selection.read_text())["chosen"] if selection.is_file() else []
        summarize(out, confirm_arms(chosen))
        return 0

    task_cfg = TextTaskConfig(**(QUICK_TASK if args.quick else TASK))
    train = QUICK_TRAIN if args.quick else TRAIN
    task = load_text_task(task_cfg)
    (out / "study.json").write_text(
        json.dumps(
            {
                "task": dataclasses.asdict(task_cfg),
                "train": train,
                "screen_samples": SCREEN_SAMPLES,
                "confirm_samples": CONFIRM_SAMPLES,
                "seeds": seeds,
            },
            indent=2,
        )
        + "\n"
    )
    common = {"train": train, "progress": args.progress}
    if not args.skip_screen:
        _run_phase(
            task, screen, out=out / "screen", evaluation="val", seeds=seeds[:1],
            num_samples=SCREEN_SAMPLES, **common,
        )  # fmt: skip
        chosen = select(out / "screen")
    else:
        chosen = json.loads(selection.read_text())["chosen"]
    print(f"[{time.strftime('%H:%M:%S')}] confirming {chosen} against the references")
    arms = confirm_arms(chosen)
    _run_phase(
        task, arms, out=out / "confirm", evaluation="test", seeds=seeds,
        num_samples=CONFIRM_SAMPLES, **common,
    )  # fmt: skip
    summarize(out, arms)
    print(f"method study done in {time.perf_counter() - start:.0f} s; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
