"""The comparison runner: every method × seed with one budget, evaluated at every S, resumable.

    compare(model_factory, train, val, test, methods, adapter=..., train_config=..., ...)
      for each (method, seed):                      ── skipped when already on disk (resume)
        seed torch / numpy / random; make_method(...).fit(train, val)
            (model selection on validation only; test and OOD data are not touched)
        evaluate on test (and OOD) at S = 0 (posterior mean), S_1 < ... < S_max
            (a method that does not sample: once, valid for every S)
        α(x) per layer over the test set (methods that sample α)
        write runs/<method>__seed<k>.json + arrays/<method>__seed<k>.npz, then results.json/md
      plots (plots.py) from results.json and the arrays

Each run's JSON carries a fingerprint of the run configuration (data, model, adapter, budget,
S, task, device) plus its method options, seed and code revision (`Method.revision`); a rerun
with ``resume=True`` reuses the runs whose fingerprint matches and refuses (`StaleResultsError`)
to mix in runs made under another configuration or by older code.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import random
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from balora._version import __version__
from balora.config import BaLoRAConfig
from balora.dataset import Data, ModelFactory, TaskKind
from balora.diagnostics import noise_diagnostics
from balora.experiments.evaluate import (
    alpha_values,
    classification_evaluation,
    regression_evaluation,
    regression_std,
)
from balora.experiments.fingerprint import (
    NOT_FINGERPRINTED,
    data_fingerprint,
    diff,
    fingerprint_of,
    hash_of,
    inspect_model,
    tensors_of,
)
from balora.experiments.measure import PeakMemoryMeter, Stopwatch, environment
from balora.experiments.results import (
    RESULTS_JSON,
    RESULTS_MD,
    AlphaSummary,
    Evaluation,
    FailedRun,
    MethodRun,
    PeakMemory,
    Results,
    write_npz,
)
from balora.experiments.specs import MethodSpec, resolve_methods, slug
from balora.inject import get_adapter, has_adapter, last_alpha
from balora.io import write_json
from balora.methods import METHODS, Method, Resume, TrainConfig, make_method
from balora.methods.adapters import member_states
from balora.predict import Prediction, predict_batched, stream_seed

DEFAULT_NUM_SAMPLES: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
RUNS_DIR = "runs"
STATES_DIR = "states"  # resumable training states of unfinished runs (TrainConfig.save_every)
ARRAYS_DIR = "arrays"
FAILED_DIR = "failed"  # records of runs whose training diverged (not retried on resume)
PLOT_FILES = (
    "reliability.png",
    "uncertainty_vs_error.png",
    "metrics_vs_samples.png",
    "alpha.png",
    "training.png",
    "epistemic_vs_error.png",
)


# Streams of the prediction seeds (test, OOD, validation, α pass, noise diagnostics).
_TEST, _OOD, _VAL, _ALPHA, _NOISE = range(5)


class StaleResultsError(ValueError):
    """The output folder holds results made under another run configuration."""


def _revision(spec: MethodSpec) -> int:
    return METHODS[spec.name].revision


def _run_fingerprint(config_fingerprint: str, spec: MethodSpec, seed: int) -> str:
    parts = [config_fingerprint, spec.name, spec.options, seed]
    revision = _revision(spec)
    return hash_of(parts if revision == 1 else [*parts, revision])  # see `Method.revision`


# ── running ─────────────────────────────────────────────────────────────────────────────────


def _device_of(data: Data) -> torch.device:
    for t in tensors_of(data).values():
        if isinstance(t, Tensor):
            return t.device
    return torch.device("cpu")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (the global RNG, for code that draws from it)
    torch.manual_seed(seed)


def collect_alpha(
    method: Method, data: Data, seed: int, batch_size: int
) -> dict[str, np.ndarray] | None:
    """α(x) of every adapted layer over `data` from one sampling pass (S = 1), or None when the
    method does not sample α (no adapter, ``noise="none"``, or a method that does not sample)."""
    model = method.model
    if not method.stochastic or model is None or not has_adapter(model):
        return None
    layers = get_adapter(model).layers.values()
    records = []
    for i, batch in enumerate(data.batches(batch_size)):
        for layer in layers:  # no stale α from an earlier pass
            layer.last_alpha = None
        method.predict(batch.inputs, 1, seed=stream_seed(seed, _ALPHA, i))
        alpha = last_alpha(model)
        if not alpha:
            return None
        records.append(alpha)
    return alpha_values(records)


def _evaluate(
    task: TaskKind,
    pred: Prediction,
    targets: Tensor,
    ood: Prediction | None,
    noise_variance: float,
) -> tuple[dict[str, float | None], dict[str, str]]:
    if task == "classification":
        return classification_evaluation(pred, targets, ood)
    return regression_evaluation(pred, targets, ood, noise_variance)


def _arrays(
    task: TaskKind,
    pred: Prediction,
    targets: Tensor,
    ood: Prediction | None,
    noise_variance: float,
) -> dict[str, np.ndarray]:
    """Per-example arrays of one evaluation, for the plots (float32)."""

    def f32(t: Tensor) -> np.ndarray:
        return t.detach().to("cpu", torch.float32).reshape(t.shape[0], -1).squeeze(-1).numpy()

    out = {
        "total": f32(pred.total),
        "aleatoric": f32(pred.aleatoric),
        "epistemic": f32(pred.epistemic),
    }
    if task == "classification":
        out["probs"] = pred.mean.detach().to("cpu", torch.float32).numpy()
        out["labels"] = targets.detach().cpu().numpy().astype(np.int64)
    else:
        out["mean"] = f32(pred.mean)
        out["target"] = targets.detach().to("cpu", torch.float32).reshape(out["mean"].shape).numpy()
        out["std"] = (
            regression_std(pred, noise_variance).astype(np.float32).reshape(out["mean"].shape)
        )
    if ood is not None:
        out["ood_total"] = f32(ood.total)
        out["ood_epistemic"] = f32(ood.epistemic)
    return out


def _noise_variance(method: Method, val: Data, s: int, seed: int, batch_size: int) -> float:
    """The homoscedastic noise variance of a regression method without a noise model (its
    prediction's aleatoric part is 0: a plain mean head), matched on validation data:
    σ² = max(mean (y − μ)² − mean epistemic, 1e-12). 0 for methods that predict an aleatoric
    variance themselves (e.g. Laplace's σ²)."""
    pred = predict_batched(method, val, s, seed=seed, batch_size=batch_size, stream=_VAL)
    if bool((pred.aleatoric != 0).any()):
        return 0.0
    target = val.targets.reshape(-1).to(pred.mean.device, torch.float64)
    residual = pred.mean.reshape(-1).double() - target
    return max(float((residual**2).mean() - pred.epistemic.double().mean()), 1e-12)


@dataclass
class _Context:
    """What every run of one comparison shares."""

    model_factory: ModelFactory
    train: Data
    val: Data
    test: Data
    ood: Data | None
    task: TaskKind
    gaussian: bool
    adapter: BaLoRAConfig
    train_config: TrainConfig
    num_samples: list[int]
    eval_batch_size: int
    device: torch.device
    fingerprint: str
    output_dir: Path
    progress: bool
    diagnostics: int
    save_every: int | None
    specs: list[MethodSpec]


def _run_path(out: Path, spec: MethodSpec, seed: int) -> Path:
    return out / RUNS_DIR / f"{slug(spec.label or spec.name)}__seed{seed}.json"


def _trains_as(spec: MethodSpec) -> str:
    return METHODS[spec.name].trains_as or spec.name


def _twins(ctx: _Context, spec: MethodSpec) -> list[MethodSpec]:
    """The entries that train exactly as `spec` does (itself included): ``lora_ts`` is
    ``lora``'s training plus a temperature."""
    return [s for s in ctx.specs if _trains_as(s) == _trains_as(spec) and s.options == spec.options]


def _resume_for(ctx: _Context, spec: MethodSpec, seed: int) -> Resume | None:
    """Where `spec`'s training state goes: its own file with `save_every`, and a file shared
    with its twins (`_twins`): the first of them to run trains, the others load its finished
    state. The owner of a shared state is the entry that is the training's own method
    (``lora``), so that an interrupted state resumes either way. A finished state is kept
    until the run's results are written (`_release_state`): a comparison stopped during the
    evaluation does not train again."""
    twins = _twins(ctx, spec)
    if ctx.save_every is None and len(twins) == 1:
        return None
    owner = next((s for s in twins if s.name == _trains_as(spec)), twins[0])
    stem = _run_path(ctx.output_dir, owner, seed).stem
    return Resume(
        ctx.output_dir / STATES_DIR / f"{stem}.pt",
        ctx.save_every or sys.maxsize,  # without save_every: only the finished state is written
        keep=True,
        key=_run_fingerprint(ctx.fingerprint, owner, seed),
    )


def _release_state(ctx: _Context, spec: MethodSpec, seed: int) -> None:
    """Remove the training state of a written run once no twin still needs it (an
    ensemble's members' states too)."""
    resume = _resume_for(ctx, spec, seed)
    if resume is None or any(
        not _run_path(ctx.output_dir, s, seed).is_file() for s in _twins(ctx, spec)
    ):
        return
    resume.path.unlink(missing_ok=True)
    for path in member_states(resume.path):
        path.unlink(missing_ok=True)


def _make(ctx: _Context, spec: MethodSpec, seed: int) -> Method:
    return make_method(
        spec.name,
        ctx.model_factory,
        ctx.task,
        adapter=spec.adapter_for(ctx.adapter),
        train=ctx.train_config,
        gaussian=ctx.gaussian,
        seed=seed,
        **spec.constructor_options(),
    )


def _run_one(ctx: _Context, spec: MethodSpec, seed: int) -> tuple[MethodRun, dict[str, np.ndarray]]:
    """Train one method with one seed and evaluate it; returns the run and its arrays."""
    _seed_everything(seed)
    method = _make(ctx, spec, seed)
    meter = PeakMemoryMeter(ctx.device)
    meter.start()
    resume = _resume_for(ctx, spec, seed)
    with Stopwatch(ctx.device) as fit_time:
        # the only look at data: train and val; with `save_every`, resumable mid-run
        report = method.fit(ctx.train, ctx.val, resume=resume)
    train_bytes = meter.stop()

    # The method is fixed from here on; the test (and OOD) data are used for evaluation only.
    bs = ctx.eval_batch_size
    method.predict(ctx.test.select(slice(0, min(len(ctx.test), bs))).inputs, 1, seed=0)  # warm-up
    plan: list[int | None] = [0, *ctx.num_samples] if method.stochastic else [None]
    evaluations, arrays = [], {}
    meter.start()
    bar = tqdm(plan, desc=f"evaluate {spec.label}", leave=False, disable=not ctx.progress)
    for s in bar:
        s_eff = 0 if s is None else s
        with Stopwatch(ctx.device) as predict_time:
            pred = predict_batched(method, ctx.test, s_eff, seed=seed, batch_size=bs, stream=_TEST)
        ood_pred = None
        if ctx.ood is not None:
            ood_pred = predict_batched(
                method, ctx.ood, s_eff, seed=seed, batch_size=bs, stream=_OOD
            )
        noise = 0.0
        if ctx.task == "regression" and not ctx.gaussian:
            noise = _noise_variance(method, ctx.val, s_eff, seed, bs)
        metrics, undefined = _evaluate(ctx.task, pred, ctx.test.targets, ood_pred, noise)
        evaluations.append(Evaluation(s, metrics, predict_time.seconds, undefined))
        if s is None or s == ctx.num_samples[-1]:
            arrays = _arrays(ctx.task, pred, ctx.test.targets, ood_pred, noise)
    predict_bytes = meter.stop()

    alpha = collect_alpha(method, ctx.test, seed, bs)
    noise = None
    if method.model is not None and ctx.diagnostics > 0:
        probe = ctx.test.select(slice(0, min(len(ctx.test), ctx.diagnostics)))
        noise = noise_diagnostics(
            method.model,
            probe.inputs,
            probe.targets,
            task=ctx.task,
            gaussian=ctx.gaussian,
            seed=stream_seed(seed, _NOISE, 0),
        ).to_dict()
    adapter = spec.adapter_for(ctx.adapter)
    run_path = _run_path(ctx.output_dir, spec, seed)
    run = MethodRun(
        method=spec.label or spec.name,
        name=spec.name,
        options=spec.options,
        seed=seed,
        stochastic=method.stochastic,
        fingerprint=_run_fingerprint(ctx.fingerprint, spec, seed),
        revision=_revision(spec),
        train_seconds=fit_time.seconds + report.earlier_seconds,  # a resumed run's too
        trainable_parameters=method.trainable_parameters(),
        steps=report.steps,
        best_epoch=report.best_epoch,
        history=[dict(h) for h in report.history],
        peak_memory=PeakMemory(meter.kind, train_bytes, predict_bytes),
        evaluations=evaluations,
        alpha=None if alpha is None else {k: AlphaSummary.of(v) for k, v in alpha.items()},
        prior_alpha=None if alpha is None else adapter.prior_alpha,
        arrays=f"{ARRAYS_DIR}/{run_path.stem}.npz",
        best_step=report.best_step,
        noise=noise,
        environment=environment(ctx.device),
    )
    del method
    if ctx.device.type == "cuda":  # give the memory back before the next run is measured
        gc.collect()
        torch.cuda.empty_cache()
    return run, arrays


def _check_positive_ints(name: str, values: Sequence[int], minimum: int) -> list[int]:
    if isinstance(values, int | str) or not values:
        raise ValueError(f"{name} must be a non-empty sequence of integers, got {values!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < minimum:
            raise ValueError(f"{name} entries must be integers >= {minimum}, got {v!r}")
        out.append(int(v))
    if len(set(out)) != len(out):
        raise ValueError(f"{name} has repeated entries: {list(values)}")
    return out


def _failure(path: Path) -> FailedRun:
    with open(path) as f:
        return FailedRun.from_dict(json.load(f))


def _load_previous(out: Path) -> dict[str, Any] | None:
    path = out / RESULTS_JSON
    if not path.is_file():
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def _clear(out: Path) -> int:
    """Remove the files a comparison writes (and nothing else); return how many runs there were."""
    runs = sorted((out / RUNS_DIR).glob("*.json")) if (out / RUNS_DIR).is_dir() else []
    arrays = sorted((out / ARRAYS_DIR).glob("*.npz")) if (out / ARRAYS_DIR).is_dir() else []
    states = sorted((out / STATES_DIR).glob("*.pt")) if (out / STATES_DIR).is_dir() else []
    failed = sorted((out / FAILED_DIR).glob("*.json")) if (out / FAILED_DIR).is_dir() else []
    files = (RESULTS_JSON, RESULTS_MD, *PLOT_FILES)
    for path in [*runs, *arrays, *states, *failed, *(out / f for f in files)]:
        path.unlink(missing_ok=True)
    return len(runs)


def compare(
    model_factory: ModelFactory,
    train: Data,
    val: Data,
    test: Data,
    methods: Sequence[str | tuple[str, Mapping[str, Any]] | MethodSpec],
    *,
    task: TaskKind = "classification",
    gaussian: bool = False,
    adapter: BaLoRAConfig,
    train_config: TrainConfig,
    seeds: Sequence[int] = (0,),
    num_samples: Sequence[int] = DEFAULT_NUM_SAMPLES,
    ood: Data | None = None,
    output_dir: str | os.PathLike[str],
    resume: bool = True,
    progress: bool = True,
    name: str | None = None,
    eval_batch_size: int = 256,
    plots: bool = True,
    diagnostics: int = 256,
    save_every: int | None = None,
) -> Results:
    """Train and evaluate every method with every seed under one budget; write the results.

    Args:
        model_factory: returns a fresh base model (on the device of the data) at every call.
        train, val, test: the data; training sees `train`, model selection (best epoch by
            validation NLL) sees `val`; `test` is used only once a method is fixed.
        methods: method names (`balora.methods.METHODS`), ``(name, options)`` tuples or
            `MethodSpec` entries; options go to the method's constructor.
        task, gaussian: the task; ``gaussian=True``: the regression head outputs
            (mean, log-variance).
        adapter, train_config: the adapter config and the budget shared by every method.
        seeds: one run per method and seed.
        num_samples: the S at which sampling methods are evaluated (the posterior mean,
            S = 0, is evaluated too); methods that do not sample are evaluated once.
        ood: inputs unlike the training data (targets unused) for OOD-detection metrics.
        output_dir: where results.json, results.md, the plots, runs/ and arrays/ go.
        resume: reuse the runs already in `output_dir` (a `StaleResultsError` if they were made
            under another configuration); ``False`` deletes them and starts again.
        progress: progress bars (over method × seed and over the evaluations).
        name: the comparison's name (default: the folder's name).
        eval_batch_size: examples per prediction call.
        plots: draw the PNG plots at the end.
        diagnostics: test examples on which each run's `balora.noise_diagnostics` is recorded
            (0: none); the training history records them on validation data per
            ``train_config.diagnostics``.
        save_every: write each unfinished run's training state every this many steps under
            ``output_dir/states/``, so that an interrupted comparison resumes mid-run too.

    Returns:
        The `Results`, also written to ``output_dir/results.json``.
    """
    if task not in ("classification", "regression"):
        raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
    if gaussian and task != "regression":
        raise ValueError("gaussian=True is for task='regression'")
    if not isinstance(adapter, BaLoRAConfig):
        raise TypeError(f"adapter must be a BaLoRAConfig, got {type(adapter).__name__}")
    if not isinstance(train_config, TrainConfig):
        raise TypeError(f"train_config must be a TrainConfig, got {type(train_config).__name__}")
    if (
        isinstance(eval_batch_size, bool)
        or not isinstance(eval_batch_size, int)
        or eval_batch_size < 1
    ):
        raise ValueError(f"eval_batch_size must be a positive integer, got {eval_batch_size!r}")
    if isinstance(diagnostics, bool) or not isinstance(diagnostics, int) or diagnostics < 0:
        raise ValueError(f"diagnostics must be an integer >= 0, got {diagnostics!r}")
    specs = resolve_methods(methods)
    seed_list = _check_positive_ints("seeds", seeds, 0)
    s_list = sorted(_check_positive_ints("num_samples", num_samples, 1))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = name or out.resolve().name
    train_config = dataclasses.replace(train_config, progress=progress and train_config.progress)
    device = _device_of(test)

    budget = {k: v for k, v in dataclasses.asdict(train_config).items() if k != "progress"}
    data = {"train": train, "val": val, "test": test, "ood": ood}
    config = {
        "name": name,
        "task": task,
        "gaussian": gaussian,
        "methods": [{"label": s.label, "name": s.name, "options": s.options} for s in specs],
        "seeds": seed_list,
        "num_samples": s_list,
        "adapter": adapter.to_dict(),
        "train": budget,
        "eval_batch_size": eval_batch_size,
        "device": device.type,
        "data": {k: None if d is None else data_fingerprint(d) for k, d in data.items()},
        "model": inspect_model(model_factory, train),
    }
    fingerprint = fingerprint_of(config)
    ctx = _Context(
        model_factory=model_factory,
        train=train,
        val=val,
        test=test,
        ood=ood,
        task=task,
        gaussian=gaussian,
        adapter=adapter,
        train_config=train_config,
        num_samples=s_list,
        eval_batch_size=eval_batch_size,
        device=device,
        fingerprint=fingerprint,
        output_dir=out,
        progress=progress,
        diagnostics=diagnostics,
        save_every=save_every,
        specs=specs,
    )
    for spec in specs:  # fail on bad options or unsupported combinations before any training
        _make(ctx, spec, seed_list[0])

    previous = _load_previous(out)
    if not resume:
        removed = _clear(out)
        if removed:
            warnings.warn(f"resume=False: deleted {removed} finished run(s) in {out}", stacklevel=2)
    elif previous is not None and previous.get("fingerprint") != fingerprint:
        old = {k: v for k, v in previous.get("config", {}).items() if k not in NOT_FINGERPRINTED}
        new = {k: v for k, v in config.items() if k not in NOT_FINGERPRINTED}
        changes = "; ".join(diff(old, new)[:12]) or "(the stored results have another format)"
        raise StaleResultsError(
            f"{out} holds results of another run configuration (fingerprint "
            f"{previous.get('fingerprint')} != {fingerprint}); changed: {changes}. "
            "Use another output_dir, or resume=False to delete them and start again."
        )

    results = Results(
        name=name,
        task=task,
        version=__version__,
        fingerprint=fingerprint,
        config=config,
        methods=[s.label for s in specs],
        seeds=seed_list,
        num_samples=s_list,
        runs=[],
        has_ood=ood is not None,
        output_dir=out,
    )
    results.save()  # the fingerprint is on disk before the first run starts
    pairs = [(s, seed) for s in specs for seed in seed_list]
    bar = tqdm(pairs, desc=f"compare {name}", disable=not progress)
    for spec, seed in bar:
        bar.set_postfix(method=spec.label, seed=seed)
        path = _run_path(out, spec, seed)
        failed_path = out / FAILED_DIR / path.name
        expected = _run_fingerprint(fingerprint, spec, seed)
        if resume and path.is_file():
            with open(path) as f:
                run = MethodRun.from_dict(json.load(f))
            if run.fingerprint != expected:
                now = _revision(spec)
                why = (
                    f"by revision {run.revision} of {spec.name}'s code (this is revision {now})"
                    if run.revision != now
                    else f"under another configuration or other options for {spec.label!r}"
                )
                raise StaleResultsError(
                    f"{path} was made {why}; use another output_dir, or resume=False to start again"
                )
        elif (
            resume
            and failed_path.is_file()
            and (failure := _failure(failed_path)).fingerprint == expected
        ):
            results.failed.append(failure)
            results.save()
            warnings.warn(
                f"{spec.label} (seed {seed}) diverged in an earlier run and is not retried: "
                f"{failure.error} (delete {failed_path} to try again)",
                stacklevel=2,
            )
            continue
        else:
            try:
                run, arrays = _run_one(ctx, spec, seed)
            except FloatingPointError as err:  # a diverged training: record it, go on
                failure = FailedRun(spec.label or spec.name, seed, expected, str(err))
                write_json(failed_path, failure.to_dict())
                results.failed.append(failure)
                results.save()
                warnings.warn(
                    f"{spec.label} (seed {seed}) failed: {err}; recorded in {failed_path}, "
                    "the comparison goes on with the other runs",
                    stacklevel=2,
                )
                continue
            write_npz(out / run.arrays, arrays)
            write_json(path, run.to_dict())
            failed_path.unlink(missing_ok=True)
            _release_state(ctx, spec, seed)
        results.runs.append(run)
        results.save()
    bar.close()
    if plots:
        from balora.experiments.plots import plot_results

        try:
            plot_results(results)
        except Exception as err:  # the results are saved; a plot must not lose them
            warnings.warn(
                f"plotting failed ({type(err).__name__}: {err}); the results are saved in "
                f"{out}; redraw with plot_results(Results.load({str(out)!r}))",
                stacklevel=2,
            )
    return results
