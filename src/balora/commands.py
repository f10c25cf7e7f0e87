"""What each ``balora`` command does (the parser is in `balora.cli`).

Every command reads its task's `balora.tasks.recipe.Recipe` from `balora.tasks.TASKS` and the
method from `balora.methods`; nothing here depends on which task it is.

    train     recipe.load ─▶ method.fit ─▶ method.save + run.json
    evaluate  run.json ─▶ recipe.load_trained + method.load ─▶ metrics.json per S (+ plot)
    predict   run.json ─▶ recipe.read_inputs / encode_inputs ─▶ recipe.rows
    compare   recipe.load ─▶ balora.experiments.compare
    demo      compare on the offline text task, with a fixed budget
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from balora.argparsing import dataclass_from_args
from balora.config import BaLoRAConfig
from balora.dataset import Data
from balora.errors import UserError
from balora.experiments import compare as run_comparison
from balora.experiments.evaluate import classification_evaluation, regression_evaluation
from balora.experiments.fingerprint import hash_of
from balora.experiments.plots import plot_evaluation
from balora.io import write_json
from balora.methods import Method, Resume, TrainConfig, make_method
from balora.predict import Prediction, predict_batched
from balora.runs import (
    RUN_FILE,
    check_output,
    finish_run,
    read_run,
    replace_run,
    run_record,
    start_run,
)
from balora.tasks import TASKS
from balora.tasks.recipe import EvaluationSource, LoadedTask, Recipe, TrainedTask

DEMO_METHODS = ("lora", "lora_ts", "balora")
EVAL_BATCH = 128
"""Examples per prediction call of train / evaluate / predict, unless the recipe sets one."""
EVALUATIONS = {"classification": classification_evaluation, "regression": regression_evaluation}
TRAINING_STATE = "training-state.pt"


def _device(args: argparse.Namespace) -> torch.device:
    """The ``--device`` option: ``auto`` is the GPU when there is one."""
    name = getattr(args, "device", "auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UserError(f"--device {name!r}: {e}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    return device


def adapter_config(
    args: argparse.Namespace, targets: Sequence[str] | str, heads: Sequence[str]
) -> BaLoRAConfig:
    """The adapter config from the options, with the recipe's default targets / head."""
    target_modules = args.target_modules or targets
    return dataclass_from_args(
        BaLoRAConfig,
        args,
        target_modules=target_modules if isinstance(target_modules, str) else tuple(target_modules),
        modules_to_save=tuple(args.modules_to_save if args.modules_to_save is not None else heads),
    )


def _method_options(name: str, args: argparse.Namespace) -> dict[str, Any]:
    return {"members": args.members} if name == "ensemble" and hasattr(args, "members") else {}


def _report_skipped(command: str, skipped: dict[str, str]) -> None:
    for name, reason in skipped.items():
        print(f"balora {command}: skipped: {name}: {reason}", file=sys.stderr)


def _batch_size(recipe: Recipe, cfg: Any) -> int:
    return recipe.eval_batch_size(cfg) or EVAL_BATCH


def _on(device: torch.device, factory: Callable[[], Any]) -> Callable[[], Any]:
    return lambda: factory().to(device)


def _unloaded() -> torch.nn.Module:
    raise RuntimeError("the placeholder factory of a method check builds no model")


def _check_method(args: argparse.Namespace, recipe: Recipe, train_cfg: TrainConfig) -> None:
    """Build the method on a placeholder factory: an option or a combination of method and
    task that the method refuses ends here, before any data or model is loaded."""
    try:
        make_method(
            args.method,
            _unloaded,
            recipe.kind,
            gaussian=recipe.gaussian,
            adapter=adapter_config(args, ("placeholder",), ()),
            train=train_cfg,
            seed=args.seed,
        )
    except NotImplementedError as e:
        raise UserError(f"--method {args.method} does not support --task {args.task}: {e}") from e


def train(args: argparse.Namespace) -> int:
    recipe = TASKS[args.task]
    cfg = recipe.prepare(dataclass_from_args(recipe.config_class, args))
    train_cfg = dataclass_from_args(TrainConfig, args)
    device = _device(args)
    _check_method(args, recipe, train_cfg)
    out: Path = args.output
    had_run = check_output(out, overwrite=getattr(args, "overwrite", False))
    task = recipe.load(cfg, progress=train_cfg.progress)
    _report_skipped("train", task.skipped)
    adapter = adapter_config(args, task.target_modules, task.modules_to_save)
    method = make_method(
        args.method,
        _on(device, task.model_factory),
        recipe.kind,
        gaussian=recipe.gaussian,
        adapter=adapter,
        train=train_cfg,
        seed=args.seed,
    )
    method.check_model(task.model_factory())  # targets, layer types, ranks: before training
    start_run(out)
    try:
        return _fit_and_save(args, recipe, cfg, train_cfg, task, method, device, out, had_run)
    except BaseException:
        if had_run and (out / RUN_FILE).is_file():
            finish_run(out)  # the earlier run is untouched: it stays usable
        raise


def _fit_and_save(
    args: argparse.Namespace,
    recipe: Recipe,
    cfg: Any,
    train_cfg: TrainConfig,
    task: LoadedTask,
    method: Method,
    device: torch.device,
    out: Path,
    had_run: bool,
) -> int:
    """Train, evaluate on the validation split, save the weights and run.json, unmark."""
    val = task.val.to(device)
    print(
        f"training {args.method} on {len(task.train)} {recipe.unit} "
        f"({len(task.val)} validation, {device}), {task.description}"
    )
    # with --save-every, an interrupted training continues from this state when rerun
    every = getattr(args, "save_every", None)
    resume = None
    if every is not None:  # a state saved for other options is discarded, not resumed
        key = hash_of([args.method, args.seed, asdict(cfg), asdict(train_cfg), args.task,
                       method.effective_adapter().to_dict()])  # fmt: skip
        resume = Resume(out / TRAINING_STATE, every, key=key)
    report = method.fit(task.train.to(device), val, resume=resume)
    s = 16 if method.stochastic else 0
    pred = predict_batched(method, val, s, seed=0, batch_size=_batch_size(recipe, cfg))
    val_metrics, _ = EVALUATIONS[recipe.kind](pred, val.targets)
    if had_run:
        replace_run(out)
    method.save(out)
    write_json(
        out / RUN_FILE,
        run_record(
            task=args.task,
            method=args.method,
            seed=args.seed,
            data=asdict(cfg),
            adapter=method.effective_adapter().to_dict(),
            train=asdict(train_cfg),
            **task.record,
            skipped=task.skipped,
            history=report.history,
            best_epoch=report.best_epoch,
            best_step=report.best_step,
            train_seconds=report.train_seconds,
            trainable_parameters=method.trainable_parameters(),
            validation=val_metrics,
        ),
    )
    finish_run(out)
    print(f"validation: {recipe.describe(val_metrics)} (S={s}); wrote {out}")
    return 0


def _run_recipe(run: dict[str, Any], args: argparse.Namespace) -> tuple[Recipe, Any]:
    """The recipe and task config of a run; ``--task`` must agree with run.json."""
    if run["task"] not in TASKS:
        raise UserError(f"{args.run} holds an unknown task {run['task']!r}")
    if args.task is not None and args.task != run["task"]:
        raise UserError(f"--task {args.task}, but {args.run} holds a {run['task']} run")
    recipe = TASKS[run["task"]]
    return recipe, recipe.config_class(**run["data"])


def _load_trained(
    recipe: Recipe, cfg: Any, run: dict[str, Any], run_dir: Path, device: torch.device
) -> tuple[TrainedTask, Method]:
    """The run's base model and encoder, and its method with the trained state loaded."""
    trained = recipe.load_trained(cfg, run)
    method = make_method(
        run["method"],
        _on(device, trained.model_factory),
        recipe.kind,
        gaussian=recipe.gaussian,
        adapter=BaLoRAConfig.from_dict(run["adapter"]),
        train=TrainConfig(**run["train"]),
        seed=run["seed"],
    )
    method.load(run_dir)
    return trained, method


def predict(args: argparse.Namespace) -> int:
    if args.num_samples < 0:
        raise UserError(f"--num-samples must be >= 0, got {args.num_samples}")
    if args.file is not None and not args.file.is_file():
        raise UserError(f"no such file: {args.file}")
    run = read_run(args.run)
    recipe, cfg = _run_recipe(run, args)
    items = recipe.read_inputs(cfg, run, args.texts, args.file)
    device = _device(args)
    trained, method = _load_trained(recipe, cfg, run, args.run, device)
    encoded = recipe.encode_inputs(cfg, run, trained, items)
    _report_skipped("predict", encoded.skipped)
    data = encoded.data.to(device)
    pred = predict_batched(
        method, data, args.num_samples, seed=0, batch_size=_batch_size(recipe, cfg)
    )
    rows, columns = recipe.rows(run, encoded.names, pred)
    _print_rows(rows, columns, args.format)
    return 0


def _print_rows(rows: list[dict[str, Any]], columns: list[str], form: str) -> None:
    if form == "jsonl":
        for row in rows:
            print(json.dumps(row))
    else:
        print(_table(rows, columns))


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain-text table; the last column (the input's name) is shortened to its end."""

    def cell(value: Any, last: bool) -> str:
        text = str(value)
        return "..." + text[-57:] if last and len(text) > 60 else text

    cells = [[cell(r[c], c == columns[-1]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def evaluate(args: argparse.Namespace) -> int:
    if any(s < 0 for s in args.num_samples):
        raise UserError(f"--num-samples must be >= 0, got {args.num_samples}")
    if args.output is not None and args.output.exists() and not args.output.is_dir():
        raise UserError(f"-o {args.output} is a file, not a folder: give a folder")
    run = read_run(args.run)
    recipe, cfg = _run_recipe(run, args)
    source = EvaluationSource(args.data, args.text_column, args.label_column, args.cif_dir)
    read = recipe.read_evaluation(cfg, run, source)  # before the model: fail fast
    device = _device(args)
    trained, method = _load_trained(recipe, cfg, run, args.run, device)
    test, ood, skipped = recipe.evaluation_data(cfg, run, trained, read)
    _report_skipped("evaluate", skipped)
    test = test.to(device)
    ood = None if ood is None else ood.to(device)
    batch_size = _batch_size(recipe, cfg)

    def score(pred: Prediction, s: int) -> tuple[dict[str, Any], dict[str, str]]:
        ood_pred = None
        if ood is not None:
            ood_pred = predict_batched(method, ood, s, seed=1, batch_size=batch_size)
        return EVALUATIONS[recipe.kind](pred, test.targets, ood_pred)

    results, pred, counts, out = _metrics_by_samples(args, run, method, test, batch_size, score)
    wrote = f"{out / 'metrics.json'}"
    if recipe.kind == "classification":
        by_s = {int(k): v["metrics"] for k, v in results.items()}
        wrote += f" and {plot_evaluation(pred, test.targets, by_s, out / 'eval.png')}"
    best = results[str(counts[-1])]["metrics"]
    print(
        f"{run['method']} on {len(test)} {recipe.unit} (S={counts[-1]}): "
        f"{recipe.describe(best)}; wrote {wrote}"
    )
    return 0


def _metrics_by_samples(
    args: argparse.Namespace,
    run: dict[str, Any],
    method: Method,
    test: Data,
    batch_size: int,
    score: Callable[[Prediction, int], tuple[dict[str, Any], dict[str, str]]],
) -> tuple[dict[str, Any], Prediction, list[int], Path]:
    """Predict `test` at S = 0 and each ``args.num_samples`` (0 only for a method that does not
    sample), `score` each prediction (with its S; timed with it), write metrics.json. Returns
    the results by S, the last prediction, the S values and the output folder."""
    counts = sorted({0, *args.num_samples}) if method.stochastic else [0]
    results = {}
    for s in counts:
        start = time.perf_counter()
        pred = predict_batched(method, test, s, seed=0, batch_size=batch_size)
        metrics, reasons = score(pred, s)
        metrics["seconds"] = time.perf_counter() - start
        results[str(s)] = {"metrics": metrics, "undefined": reasons}
    out: Path = args.output or args.run / "eval"
    write_json(
        out / "metrics.json",
        run_record(run=str(args.run), method=run["method"], examples=len(test), by_samples=results),
    )
    return results, pred, counts, out


def compare(args: argparse.Namespace) -> int:
    if args.output.exists() and not args.output.is_dir():
        raise UserError(f"-o {args.output} is a file, not a folder: give a folder")
    recipe = TASKS[args.task]
    cfg = recipe.prepare(dataclass_from_args(recipe.config_class, args))
    train_cfg = dataclass_from_args(TrainConfig, args)
    device = _device(args)
    task = recipe.load(cfg, progress=train_cfg.progress)
    _report_skipped("compare", task.skipped)
    args.output.mkdir(parents=True, exist_ok=True)
    write_json(args.output / "data.json", {"data": asdict(cfg), "skipped": task.skipped})
    batch_size = recipe.eval_batch_size(cfg)
    on_validation = getattr(args, "evaluate_on", "test") == "validation"
    ood = None if task.ood is None or on_validation else task.ood.to(device)
    results = run_comparison(
        _on(device, task.model_factory),
        task.train.to(device),
        task.val.to(device),
        (task.val if on_validation else task.test).to(device),
        [(m, _method_options(m, args)) for m in args.methods],
        task=recipe.kind,
        gaussian=recipe.gaussian,
        adapter=adapter_config(args, task.target_modules, task.modules_to_save),
        train_config=train_cfg,
        seeds=tuple(args.seeds),
        num_samples=tuple(args.num_samples),
        ood=ood,
        output_dir=args.output,
        resume=not args.no_resume,
        save_every=getattr(args, "save_every", None),
        diagnostics=args.test_diagnostics,
        **({} if batch_size is None else {"eval_batch_size": batch_size}),
    )
    print(results.markdown())
    return 0


# The demo is the regime study's text set-up (docs/regime.md) at 1,000 of its 1,500 steps (the
# full budget took 15.6 minutes on 2 CPU cores): long training on a small set, the last
# checkpoint, the new head kept at its initialisation and adapted, and BaLoRA with the library's
# defaults (chosen there on validation data) and α's learning rate of the text screen; the
# README gives the measured time.
DEMO_TASK = {"max_train": 640, "max_eval": 400, "max_length": 48}
REGIME_TRAIN = {"checkpoint": "last", "head": "adapted", "lr": 1e-3, "alpha_lr": 1e-3}
DEMO_TRAIN = {**REGIME_TRAIN, "epochs": 100, "max_steps": 1000, "batch_size": 8}
DEMO_SAMPLES = (1, 4, 10)
QUICK_TASK = {"max_train": 48, "max_eval": 24, "max_length": 16}
QUICK_TRAIN = {**REGIME_TRAIN, "epochs": 1, "batch_size": 16}


def demo(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    recipe = TASKS["text"]
    cfg = recipe.config_class(**(QUICK_TASK if args.quick else DEMO_TASK))
    train_cfg = TrainConfig(**(QUICK_TRAIN if args.quick else DEMO_TRAIN))
    task = recipe.load(cfg, progress=True)
    adapter = BaLoRAConfig(target_modules=task.target_modules, modules_to_save=task.modules_to_save)
    budget = f"{train_cfg.max_steps} steps" if train_cfg.max_steps else f"{train_cfg.epochs} epoch"
    print(
        f"balora demo: {', '.join(DEMO_METHODS)} on Rotten Tomatoes "
        f"({len(task.train)} train / {len(task.val)} validation / {len(task.test)} test "
        "snippets), all-MiniLM-L6-v2, query/value adapters and an adapted head, "
        f"{budget} at batch {train_cfg.batch_size}, the last checkpoint"
    )
    results = run_comparison(
        task.model_factory,
        task.train,
        task.val,
        task.test,
        list(DEMO_METHODS),
        adapter=adapter,
        train_config=train_cfg,
        seeds=(0,),
        num_samples=(1, 2) if args.quick else DEMO_SAMPLES,
        output_dir=args.output,
        resume=False,
    )
    print(results.markdown())
    print(f"wrote {args.output} in {time.perf_counter() - start:.0f} s")
    return 0
