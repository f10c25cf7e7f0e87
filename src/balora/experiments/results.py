"""The typed results of a comparison and their files: ``results.json`` and ``results.md``.

    Results                      one comparison (config, fingerprint, every run)
      └─ MethodRun               one method trained with one seed
           ├─ Evaluation         its test metrics at one number of samples S
           ├─ PeakMemory         what training / prediction cost in memory
           └─ AlphaSummary       per adapted layer: the distribution of α(x) over the test set

Undefined metrics (the metric functions return NaN, e.g. the error-detection AUROC of a model
that makes no error) are ``None`` here and ``null`` in JSON, with the reason in
`Evaluation.undefined`; the JSON files never hold NaN or infinity. Every file is written
atomically (a temporary file beside the target, then `os.replace`), so a crash leaves the
previous version intact.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from balora.io import write_atomic, write_json, write_text

SCHEMA_VERSION = 1
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"

MemoryKind = Literal["cuda_max_memory_allocated", "cpu_peak_rss_increase"]

# The columns of results.md: (metric key, header). The OOD columns appear when an OOD set was
# given. "↓" / "↑": lower / higher is better.
CLASSIFICATION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("accuracy", "accuracy ↑"),
    ("ece", "ECE ↓"),
    ("nll", "NLL ↓"),
    ("brier", "Brier ↓"),
    ("auroc_error", "AUROC error ↑"),
)
OOD_COLUMNS: tuple[tuple[str, str], ...] = (
    ("auroc_ood_total", "AUROC OOD (total) ↑"),
    ("auroc_ood_epistemic", "AUROC OOD (epistemic) ↑"),
)
REGRESSION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("mae", "MAE ↓"),
    ("rmse", "RMSE ↓"),
    ("nll", "NLL ↓"),
    ("spearman_std_abs_error", "Spearman(std, |err|) ↑"),
    ("pearson_std_abs_error", "Pearson(std, |err|) ↑"),
    ("miscalibration_area", "miscal. area ↓"),
    ("coverage_68", "coverage 68%"),
    ("coverage_95", "coverage 95%"),
)


# ── the result types ────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Evaluation:
    """Test metrics of one method and seed at one number of posterior samples.

    `num_samples` is S; 0 is the posterior mean (one deterministic pass); ``None`` marks the one
    evaluation of a method that does not sample (LoRA, full fine-tuning, the ensemble), which
    stands for every S. `metrics` maps a metric name to its value, ``None`` where undefined
    (the reason is in `undefined`). `predict_seconds`: wall time of predicting the test set.
    """

    num_samples: int | None
    metrics: dict[str, float | None]
    predict_seconds: float
    undefined: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Evaluation:
        return cls(
            num_samples=data["num_samples"],
            metrics=dict(data["metrics"]),
            predict_seconds=float(data["predict_seconds"]),
            undefined=dict(data.get("undefined", {})),
        )


@dataclass(frozen=True)
class PeakMemory:
    """Peak memory of training and of prediction (all evaluations together), in bytes.

    `kind` says what was measured: ``cuda_max_memory_allocated`` is
    `torch.cuda.max_memory_allocated` over the phase (tensors only, absolute); on CPU,
    ``cpu_peak_rss_increase`` is the process's peak resident set size during the phase minus
    its resident set size at the start of the phase (Linux ``VmHWM`` after resetting it through
    ``/proc/self/clear_refs``). The CPU number includes every allocation of the process (Python
    objects, allocator caches) and misses memory that an earlier phase freed to the allocator
    but did not return to the OS, so compare it between methods of one run only. ``None``: not
    measurable on this platform.
    """

    kind: MemoryKind
    train_bytes: int | None
    predict_bytes: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PeakMemory:
        return cls(data["kind"], data["train_bytes"], data["predict_bytes"])


@dataclass(frozen=True)
class AlphaSummary:
    """The distribution of α(x) of one adapted layer over the test set.

    Quantiles over all test examples (and all α components, with per-rank α), from one
    posterior-sampling pass; `spread` is ``max - min`` (0 for the ``constant`` α source).
    """

    min: float
    q05: float
    q25: float
    q50: float
    q75: float
    q95: float
    max: float
    mean: float
    std: float
    spread: float
    count: int

    @classmethod
    def of(cls, values: np.ndarray) -> AlphaSummary:
        """Summarise an array of α values (any shape)."""
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        if v.size == 0:
            raise ValueError("no α values to summarise")
        q = np.quantile(v, [0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0])
        return cls(
            min=float(q[0]),
            q05=float(q[1]),
            q25=float(q[2]),
            q50=float(q[3]),
            q75=float(q[4]),
            q95=float(q[5]),
            max=float(q[6]),
            mean=float(v.mean()),
            std=float(v.std()),
            spread=float(q[6] - q[0]),
            count=int(v.size),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AlphaSummary:
        return cls(**dict(data))


@dataclass(frozen=True)
class MethodRun:
    """One method trained with one seed and evaluated on the test set.

    `method` is the label in the comparison (the method name unless two entries share a name),
    `name` the registry name and `options` the constructor options. `train_seconds`: wall time
    of `Method.fit` (building the model, training, validation). `history`: per epoch
    ``train_nll``, ``train_kl`` (the KL term per example, before β and 1/N; 0 without one) and
    ``val_nll`` (the posterior mean's); an ensemble lists its members' epochs one after another.
    `alpha` (per layer) and `prior_alpha` (α_p) are set for methods that sample α.
    `arrays` is the path, relative to the output folder, of the per-example arrays of the
    evaluation at the largest S (for the plots). `best_step`: the step of the weights kept
    (``TrainConfig.checkpoint``). `noise`: `balora.noise_diagnostics` on the first test
    examples once training ended; each history record carries them on validation data too.
    `environment`: where the run was computed (`balora.experiments.measure.environment`;
    None in files written before it was recorded). `revision`: `Method.revision` of the code
    that made it (1 in files written before revisions were recorded).
    """

    method: str
    name: str
    options: dict[str, Any]
    seed: int
    stochastic: bool
    fingerprint: str
    train_seconds: float
    trainable_parameters: int
    steps: int
    best_epoch: int
    history: list[dict[str, float | None]]
    peak_memory: PeakMemory
    evaluations: list[Evaluation]
    alpha: dict[str, AlphaSummary] | None = None
    prior_alpha: float | None = None
    arrays: str | None = None
    best_step: int | None = None
    noise: dict[str, Any] | None = None
    environment: dict[str, Any] | None = None
    revision: int = 1

    def at(self, num_samples: int) -> Evaluation:
        """The evaluation at `num_samples` (the single one of a method that does not sample)."""
        for ev in self.evaluations:
            if ev.num_samples is None or ev.num_samples == num_samples:
                return ev
        have = [ev.num_samples for ev in self.evaluations]
        raise KeyError(
            f"{self.method} (seed {self.seed}) has no evaluation at S={num_samples}; "
            f"evaluated at {have}"
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["peak_memory"] = self.peak_memory.to_dict()
        out["evaluations"] = [ev.to_dict() for ev in self.evaluations]
        out["alpha"] = (
            None if self.alpha is None else {k: a.to_dict() for k, a in self.alpha.items()}
        )
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MethodRun:
        alpha = data.get("alpha")
        return cls(
            method=data["method"],
            name=data["name"],
            options=dict(data["options"]),
            seed=int(data["seed"]),
            stochastic=bool(data["stochastic"]),
            fingerprint=data["fingerprint"],
            train_seconds=float(data["train_seconds"]),
            trainable_parameters=int(data["trainable_parameters"]),
            steps=int(data["steps"]),
            best_epoch=int(data["best_epoch"]),
            history=[dict(h) for h in data["history"]],
            peak_memory=PeakMemory.from_dict(data["peak_memory"]),
            evaluations=[Evaluation.from_dict(e) for e in data["evaluations"]],
            alpha=None
            if alpha is None
            else {k: AlphaSummary.from_dict(a) for k, a in alpha.items()},
            prior_alpha=data.get("prior_alpha"),
            arrays=data.get("arrays"),
            best_step=data.get("best_step"),
            noise=data.get("noise"),
            environment=data.get("environment"),
            revision=int(data.get("revision", 1)),
        )


@dataclass(frozen=True)
class FailedRun:
    """A run whose training diverged (a non-finite loss): the comparison recorded it and went
    on with the other runs. A resumed comparison does not retry it (delete its record under
    ``failed/`` or rerun with ``resume=False`` to try again)."""

    method: str
    seed: int
    fingerprint: str
    error: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FailedRun:
        return cls(data["method"], int(data["seed"]), data["fingerprint"], data["error"])


@dataclass(frozen=True)
class MetricSummary:
    """Mean ± sample standard deviation (ddof = 1; 0 for a single seed) of one metric over the
    seeds where it is defined; `defined` of `seeds` seeds had a value (``mean`` is ``None``
    when none had)."""

    mean: float | None
    std: float | None
    defined: int
    seeds: int

    def format(self, digits: int = 3) -> str:
        if self.mean is None:
            return "n/a"
        text = f"{self.mean:.{digits}f}"
        if self.seeds > 1:
            text += f" ± {self.std:.{digits}f}"
        if self.defined < self.seeds:
            text += f" ({self.defined}/{self.seeds})"
        return text


@dataclass
class Results:
    """Everything a comparison produced, as written to ``results.json``.

    `methods` are the labels in the order given, `seeds` and `num_samples` (S, ascending) as
    requested; `runs` holds one `MethodRun` per (method, seed). `config` is the run
    configuration whose hash is `fingerprint` (the resume check); `output_dir` is where the
    files are (``None`` for results built in memory).
    """

    name: str
    task: str
    version: str
    fingerprint: str
    config: dict[str, Any]
    methods: list[str]
    seeds: list[int]
    num_samples: list[int]
    runs: list[MethodRun]
    has_ood: bool = False
    output_dir: Path | None = None
    failed: list[FailedRun] = field(default_factory=list)

    # -- access -------------------------------------------------------------------------------
    @property
    def max_samples(self) -> int:
        """The largest S of the comparison."""
        return max(self.num_samples)

    def run(self, method: str, seed: int) -> MethodRun:
        for r in self.runs:
            if r.method == method and r.seed == seed:
                return r
        raise KeyError(f"no run of {method!r} with seed {seed}; methods: {self.methods}")

    def runs_of(self, method: str) -> list[MethodRun]:
        """The runs of `method`, in seed order."""
        return [r for r in self.runs if r.method == method]

    def values(
        self, method: str, metric: str, num_samples: int | None = None
    ) -> list[float | None]:
        """`metric` of `method` per seed at S = `num_samples` (default: the largest S)."""
        s = self.max_samples if num_samples is None else num_samples
        return [r.at(s).metrics.get(metric) for r in self.runs_of(method)]

    def summary(self, method: str, metric: str, num_samples: int | None = None) -> MetricSummary:
        """Mean ± std over seeds of `metric` at S = `num_samples` (default: the largest S)."""
        vals = self.values(method, metric, num_samples)
        return summarize_values(vals)

    # -- files --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "task": self.task,
            "balora_version": self.version,
            "fingerprint": self.fingerprint,
            "config": self.config,
            "methods": list(self.methods),
            "seeds": list(self.seeds),
            "num_samples": list(self.num_samples),
            "has_ood": self.has_ood,
            "notes": NOTES,
            "runs": [r.to_dict() for r in self.runs],
            "failed": [f.to_dict() for f in self.failed],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], output_dir: Path | None = None) -> Results:
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(
                f"results schema version {data.get('schema_version')!r} is not supported "
                f"(this balora reads version {SCHEMA_VERSION})"
            )
        return cls(
            name=data["name"],
            task=data["task"],
            version=data["balora_version"],
            fingerprint=data["fingerprint"],
            config=dict(data["config"]),
            methods=list(data["methods"]),
            seeds=[int(s) for s in data["seeds"]],
            num_samples=[int(s) for s in data["num_samples"]],
            runs=[MethodRun.from_dict(r) for r in data["runs"]],
            has_ood=bool(data.get("has_ood", False)),
            output_dir=output_dir,
            failed=[FailedRun.from_dict(f) for f in data.get("failed", [])],
        )

    @classmethod
    def load(cls, output_dir: str | os.PathLike[str]) -> Results:
        """Read ``results.json`` from the output folder of a comparison."""
        path = Path(output_dir)
        with open(path / RESULTS_JSON) as f:
            return cls.from_dict(json.load(f), output_dir=path)

    def save(self, output_dir: str | os.PathLike[str] | None = None) -> Path:
        """Write ``results.json`` and ``results.md`` (atomically); return the JSON path."""
        path = Path(output_dir) if output_dir is not None else self.output_dir
        if path is None:
            raise ValueError("no output folder: pass output_dir")
        path.mkdir(parents=True, exist_ok=True)
        write_json(path / RESULTS_JSON, self.to_dict())
        write_text(path / RESULTS_MD, self.markdown())
        return path / RESULTS_JSON

    def markdown(self) -> str:
        """The comparison as markdown tables (the content of ``results.md``)."""
        return markdown_report(self)


MEMORY_KINDS: dict[str, str] = {
    "cuda_max_memory_allocated": (
        "torch.cuda.max_memory_allocated over the phase (tensors only, absolute)"
    ),
    "cpu_peak_rss_increase": (
        "peak resident set size of the process during the phase minus its resident set size "
        "at the start of the phase (Linux VmHWM, reset through /proc/self/clear_refs); a rough "
        "figure, comparable between methods of one run only"
    ),
}

NOTES = {
    "null": (
        "a null metric is undefined for that evaluation (the metric functions return NaN, e.g. "
        "the error-detection AUROC when every prediction is correct); the reason is in the "
        "evaluation's `undefined` map. No value in this file is NaN or infinite."
    ),
    "num_samples": (
        "evaluations[].num_samples is S; 0 is the posterior mean (one deterministic pass); null "
        "marks the single evaluation of a method that does not sample, valid for every S."
    ),
    "peak_memory": (
        "cuda_max_memory_allocated: torch.cuda.max_memory_allocated over the phase (bytes). "
        "cpu_peak_rss_increase: peak resident set size during the phase minus the resident set "
        "size at its start (bytes, Linux VmHWM reset through /proc/self/clear_refs)."
    ),
    "history": (
        "per epoch: train_nll (mean NLL of the training samples), train_kl (KL term per example, "
        "summed over layers, before beta and 1/N; 0 for methods without a KL) and val_nll (the "
        "posterior mean's validation NLL, which selects the epoch kept)."
    ),
}


def summarize_values(values: Sequence[float | None]) -> MetricSummary:
    """Mean ± sample std of the defined values."""
    defined = [v for v in values if v is not None]
    if not defined:
        return MetricSummary(None, None, 0, len(values))
    arr = np.asarray(defined, dtype=np.float64)
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return MetricSummary(float(arr.mean()), std, len(defined), len(values))


# ── markdown ────────────────────────────────────────────────────────────────────────────────


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return [line(header), "|" + "|".join("---" for _ in header) + "|", *map(line, rows)]


def _mib(values: Sequence[int | None]) -> str:
    return summarize_values([None if v is None else v / 2**20 for v in values]).format(1)


def markdown_report(results: Results) -> str:
    """Markdown tables: the main metrics at the largest S, the posterior mean of the sampling
    methods, and the cost of every method (mean ± std over seeds)."""
    s_max = results.max_samples
    columns = CLASSIFICATION_COLUMNS if results.task == "classification" else REGRESSION_COLUMNS
    columns += OOD_COLUMNS if results.has_ood else ()
    n_seeds = len(results.seeds)
    lines = [
        f"# {results.name}",
        "",
        f"{results.task}; balora {results.version}; seeds {results.seeds}; "
        f"S in {results.num_samples}; config fingerprint `{results.fingerprint}`.",
        "",
        f"## Test metrics at S = {s_max} (mean ± std over {n_seeds} seed(s))",
        "",
    ]
    rows = []
    for m in results.methods:
        runs = results.runs_of(m)
        if not runs:
            continue
        s_col = str(s_max) if runs[0].stochastic else "–"
        rows.append([m, s_col, *(results.summary(m, key).format() for key, _ in columns)])
    lines += _table(["method", "S", *(h for _, h in columns)], rows)
    lines += [
        "",
        "S = –: the method does not sample; its one evaluation stands for every S. "
        "(k/n): the metric is defined for k of n seeds (see `undefined` in results.json).",
    ]
    stochastic = [m for m in results.methods if any(r.stochastic for r in results.runs_of(m))]
    if stochastic:
        lines += ["", "## Posterior mean (S = 0) of the sampling methods", ""]
        rows = [
            [m, *(results.summary(m, key, 0).format() for key, _ in columns)] for m in stochastic
        ]
        lines += _table(["method", *(h for _, h in columns)], rows)
    lines += ["", "## Cost", ""]
    kind = next((r.peak_memory.kind for r in results.runs), "")
    rows = []
    for m in results.methods:
        runs = results.runs_of(m)
        if not runs:
            continue
        rows.append(
            [
                m,
                f"{runs[0].trainable_parameters:,}",
                summarize_values([r.train_seconds for r in runs]).format(2),
                summarize_values([r.at(s_max).predict_seconds for r in runs]).format(3),
                _mib([r.peak_memory.train_bytes for r in runs]),
                _mib([r.peak_memory.predict_bytes for r in runs]),
            ]
        )
    header = [
        "method",
        "trainable parameters",
        "train s",
        f"predict s (S = {s_max})",
        "peak memory train (MiB)",
        "peak memory predict (MiB)",
    ]
    lines += _table(header, rows)
    lines += ["", f"Peak memory: `{kind}`: {MEMORY_KINDS.get(kind, '')}.", ""]
    if results.failed:
        lines += [
            "## Failed runs",
            "",
            "Their training diverged; the tables above average the other seeds.",
            "",
        ]
        lines += _table(
            ["method", "seed", "error"],
            [[f.method, str(f.seed), f.error.replace("|", "\\|")] for f in results.failed],
        )
        lines += [""]
    lines += _environments(results)
    return "\n".join(lines)


def _environment_label(env: Mapping[str, Any] | None) -> str:
    if env is None:
        return "not recorded"
    where = env.get("gpu") or f"{env.get('cpu')} ({env.get('cpu_capability')})"
    return f"torch {env.get('torch')}, {where}, {env.get('threads')} thread(s)"


def _environments(results: Results) -> list[str]:
    """A section listing which runs were computed where, when the folder's runs come from more
    than one environment (their differences are then not the seed's alone)."""
    groups: dict[str, list[str]] = {}
    for r in results.runs:
        groups.setdefault(_environment_label(r.environment), []).append(f"{r.method}/{r.seed}")
    if len(groups) < 2:
        return []
    lines = [
        "## Environments",
        "",
        "These runs were computed in more than one environment; a seeded run repeats exactly "
        "only in the same one (other kernels round differently, and long training amplifies "
        "it).",
        "",
    ]
    lines += _table(
        ["environment", "runs (method/seed)"], [[k, ", ".join(v)] for k, v in groups.items()]
    )
    return [*lines, ""]


# ── array files ─────────────────────────────────────────────────────────────────────────────


def write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    return write_atomic(path, write)
