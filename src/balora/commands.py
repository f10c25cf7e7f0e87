"""What each ``balora`` command does (the parser is in `balora.cli`)."""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from balora.argparsing import dataclass_from_args
from balora.cli import DEMO_METHODS, TASK_CONFIGS, UserError, adapter_config
from balora.config import BaLoRAConfig
from balora.experiments import compare as run_comparison
from balora.experiments.evaluate import classification_evaluation, regression_evaluation
from balora.experiments.plots import plot_evaluation
from balora.experiments.runner import predict_data
from balora.io import write_json
from balora.methods import Data, Method, TrainConfig, make_method
from balora.predict import Prediction
from balora.recipes.common import (
    RUN_FILE,
    load_method_weights,
    read_run,
    run_record,
    save_method_weights,
)
from balora.recipes.mof import (
    MOFTaskConfig,
    collate,
    featurize_many,
    fresh_model,
    load_mof_backbone,
    load_mof_dataset,
    load_mof_run_task,
    mof_data,
    read_structures,
)
from balora.recipes.multiple_choice import (
    encode_examples,
    load_multiple_choice_task,
)
from balora.recipes.text import (
    TextTaskConfig,
    encode_texts,
    load_text_backbone,
    load_text_data,
    load_text_task,
)
from balora.recipes.vision import (
    load_ood,
    load_vision_backbone,
    load_vision_data,
    load_vision_task,
    to_data,
)
from balora.tasks.mof import read_cif
from balora.tasks.multiple_choice import load_multiple_choice
from balora.tasks.text import load_text_file
from balora.tasks.vision import load_image_folder, read_images

EVAL_BATCH = 128
# Crystals per prediction call: CHGNet's angle graphs make larger batches run out of memory
MOF_EVAL_BATCH = {"chgnet": 8, "cgcnn": 64}
TASK_LOADERS = {
    "text": load_text_task,
    "multiple-choice": load_multiple_choice_task,
    "vision": load_vision_task,
    "mof": functools.partial(load_mof_run_task, progress=True),
}


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


def _on_device(task: Any, device: torch.device) -> tuple[Any, Any, Any, Any, Any]:
    """``(model factory, train, val, test, ood)`` of a loaded task on `device`."""
    ood = getattr(task, "ood", None)
    return (
        lambda: task.model_factory().to(device),
        task.train.to(device),
        task.val.to(device),
        task.test.to(device),
        None if ood is None else ood.to(device),
    )


def _method_options(name: str, args: argparse.Namespace) -> dict[str, Any]:
    return {"members": args.members} if name == "ensemble" and hasattr(args, "members") else {}


def _fit_and_save(
    args: argparse.Namespace,
    task: Any,
    data_cfg: Any,
    train_cfg: TrainConfig,
    device: torch.device,
    *,
    regression: bool,
    eval_batch: int,
    describe: str,
    **record: Any,
) -> tuple[dict[str, Any], int]:
    """Train ``args.method`` on `task`, evaluate it on the validation set (S = 16 for sampling
    methods), save its weights and run.json (with `record`) in ``args.output``. Returns the
    validation metrics and the S used."""
    adapter = adapter_config(args, task.target_modules, task.modules_to_save)
    factory, train_data, val, _, _ = _on_device(task, device)
    kind = "regression" if regression else "classification"
    method = make_method(
        args.method,
        factory,
        kind,
        gaussian=regression,
        adapter=adapter,
        train=train_cfg,
        seed=args.seed,
    )
    what = "structures" if regression else "examples"
    print(
        f"training {args.method} on {len(task.train)} {what} "
        f"({len(task.val)} validation, {device}), {describe}"
    )
    report = method.fit(train_data, val)
    pred = predict_data(method, val, 16 if method.stochastic else 0, seed=0, batch_size=eval_batch)
    evaluation = regression_evaluation if regression else classification_evaluation
    val_metrics, _ = evaluation(pred, val.targets)
    out: Path = args.output
    out.mkdir(parents=True, exist_ok=True)
    save_method_weights(method, out)
    write_json(
        out / RUN_FILE,
        run_record(
            task=args.task,
            method=args.method,
            seed=args.seed,
            data=asdict(data_cfg),
            adapter=adapter.to_dict(),
            train=asdict(train_cfg),
            **record,
            history=report.history,
            best_epoch=report.best_epoch,
            train_seconds=report.train_seconds,
            trainable_parameters=method.trainable_parameters(),
            validation=val_metrics,
        ),
    )
    return val_metrics, pred.num_samples


def train(args: argparse.Namespace) -> int:
    task_cfg = dataclass_from_args(TASK_CONFIGS[args.task], args)
    train_cfg = dataclass_from_args(TrainConfig, args)
    device = _device(args)
    if args.task == "mof":
        return _train_mof(args, _absolute_paths(task_cfg), train_cfg, device)
    task = TASK_LOADERS[args.task](task_cfg)
    val_metrics, s = _fit_and_save(
        args,
        task,
        task_cfg,
        train_cfg,
        device,
        regression=False,
        eval_batch=EVAL_BATCH,
        describe=f"labels {task.label_names}",
        label_names=task.label_names,
    )
    print(
        f"validation: accuracy {val_metrics['accuracy']:.4f}, ECE {val_metrics['ece']:.4f}, "
        f"NLL {val_metrics['nll']:.4f} (S={s}); wrote {args.output}"
    )
    return 0


# ── MOF band gaps (regression with a Gaussian head) ────────────────────────────────────────


def _absolute_paths(cfg: MOFTaskConfig) -> MOFTaskConfig:
    """`cfg` with its data paths absolute, so that run.json works from any directory."""
    paths = {k: getattr(cfg, k) for k in ("labels", "cif_dir", "qmof", "cache_dir")}
    return replace(cfg, **{k: str(Path(v).resolve()) for k, v in paths.items() if v is not None})


def _report_skipped(command: str, errors: dict[int, Exception]) -> None:
    for error in errors.values():
        print(f"balora {command}: skipped: {error}", file=sys.stderr)


def _regression_summary(metrics: dict[str, Any]) -> str:
    def number(key: str) -> str:
        value = metrics.get(key)
        return "undefined" if value is None else f"{value:.4f}"

    return (
        f"MAE {number('mae')} eV, RMSE {number('rmse')} eV, NLL {number('nll')}, "
        f"95% coverage {number('coverage_95')}"
    )


def _train_mof(
    args: argparse.Namespace, cfg: MOFTaskConfig, train_cfg: TrainConfig, device: torch.device
) -> int:
    task = load_mof_run_task(cfg, progress=train_cfg.progress)
    _report_skipped("train", task.errors)
    val_metrics, s = _fit_and_save(
        args,
        task,
        cfg,
        train_cfg,
        device,
        regression=True,
        eval_batch=MOF_EVAL_BATCH[cfg.backbone],
        describe=f"{cfg.backbone} backbone, band gaps in eV",
        skipped={str(e.name or i): e.reason for i, e in task.errors.items()},
    )
    print(f"validation: {_regression_summary(val_metrics)} (S={s}); wrote {args.output}")
    return 0


def _cif_paths(items: list[str]) -> tuple[list[Path], dict[str, str]]:
    """CIF files from file and folder arguments (a folder: its *.cif files), and why each
    unusable argument was skipped."""
    paths, errors = [], {}
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() == ".cif" and p.is_file())
            if not found:
                errors[item] = "a folder without .cif files"
            paths += found
        elif path.is_file():
            paths.append(path)
        else:
            errors[item] = "no such file or folder"
    return paths, errors


def _std(variance: torch.Tensor) -> float:
    """A standard deviation from a variance, to 4 significant digits."""
    return float(f"{math.sqrt(max(float(variance), 0.0)):.4g}")


def _predict_mof(run: dict[str, Any], method: Method, items: list[str], args: argparse.Namespace):
    """Per readable CIF: the predicted gap (eV) and its standard deviations; prints the
    skipped inputs. Raises `UserError` when no input could be used."""
    cfg = MOFTaskConfig(**run["data"])
    paths, errors = _cif_paths(items)
    structures, names = [], []
    for path in paths:
        try:
            structures.append(read_cif(path))
            names.append(str(path))
        except (ValueError, ImportError) as e:
            message = str(e).removeprefix(f"cannot read CIF file {path}: ")
            errors[str(path)] = message
    done = featurize_many(structures, cfg, names)
    errors.update({names[i]: e.reason for i, e in done.errors.items()})
    for name, reason in errors.items():
        print(f"balora predict: skipped: {name}: {reason}", file=sys.stderr)
    if not done.graphs:
        raise UserError("no readable structure among the inputs")
    device = next(method.model.parameters()).device
    batch = MOF_EVAL_BATCH[cfg.backbone]
    rows = []
    for start in range(0, len(done.graphs), batch):
        inputs = collate(done.graphs[start : start + batch])
        inputs = {k: v.to(device) for k, v in inputs.items()}
        pred = method.predict(inputs, args.num_samples, seed=start // batch)
        for j in range(len(pred)):
            rows.append(
                {
                    "structure": names[done.index[start + j]],
                    "gap_ev": round(float(pred.mean[j]), 4),
                    "std_ev": _std(pred.total[j]),
                    "aleatoric_std_ev": _std(pred.aleatoric[j]),
                    "epistemic_std_ev": _std(pred.epistemic[j]),
                }
            )
    return rows


def _mof_evaluation_data(run: dict[str, Any], args: argparse.Namespace, model: Any) -> Data:
    """Every structure of ``--data`` (a label CSV; CIFs in ``--cif-dir``, default the CSV's
    folder), or the run's own test split."""
    cfg = MOFTaskConfig(**run["data"])
    if args.data is None:
        task = load_mof_run_task(cfg, model=model, progress=True)
        _report_skipped("evaluate", task.errors)
        return task.test
    cif_dir = args.cif_dir if args.cif_dir is not None else Path(args.data).parent
    source = replace(cfg, labels=str(args.data), cif_dir=str(cif_dir), qmof=None)
    dataset = load_mof_dataset(source)
    structures, kept, errors = read_structures(dataset)
    names = [dataset.names[i] for i in kept]
    done = featurize_many(structures, cfg, names, progress=True)
    _report_skipped("evaluate", {**errors, **{kept[i]: e for i, e in done.errors.items()}})
    if not done.graphs:
        raise UserError(f"no structure of {args.data} could be read")
    return mof_data(done.graphs, dataset.gaps_ev[[kept[i] for i in done.index]])


def _check_task(run: dict[str, Any], args: argparse.Namespace) -> None:
    if args.task is not None and args.task != run["task"]:
        raise UserError(f"--task {args.task}, but {args.run} holds a {run['task']} run")


def _load_trained(run_dir: Path, device: torch.device) -> tuple[dict[str, Any], Method, Any]:
    """The run record, the method with its trained weights, and what encodes new inputs: the
    tokenizer (text runs), the loaded task (multiple-choice runs), the `load_mof_backbone`
    result (mof runs) or nothing (vision runs: the model takes raw images)."""
    run = read_run(run_dir)
    if run["task"] not in TASK_CONFIGS:
        raise UserError(f"{run_dir} holds an unknown task {run['task']!r}")
    task_cfg = TASK_CONFIGS[run["task"]](**run["data"])
    if run["task"] == "text":  # only the backbone: no need to read the training data
        model, encoder, _, _ = load_text_backbone(task_cfg, run["label_names"])
        factory = lambda: copy.deepcopy(model)  # noqa: E731
    elif run["task"] == "vision":
        model, _, _ = load_vision_backbone(task_cfg, run["label_names"])
        encoder, factory = None, lambda: copy.deepcopy(model)
    elif run["task"] == "mof":  # the backbone (for evaluation) and a fresh-head factory
        encoder = load_mof_backbone(task_cfg)
        factory = functools.partial(fresh_model, encoder[0])
    else:
        encoder = load_multiple_choice_task(task_cfg, label_names=run["label_names"])
        factory = encoder.model_factory
    regression = {"gaussian": True} if run["task"] == "mof" else {}
    method = make_method(
        run["method"],
        lambda: factory().to(device),
        "regression" if regression else "classification",
        **regression,
        adapter=BaLoRAConfig.from_dict(run["adapter"]),
        train=TrainConfig(**run["train"]),
        seed=run["seed"],
    )
    load_method_weights(method, run_dir)
    return run, method, encoder


def _read_inputs(run: dict[str, Any], args: argparse.Namespace) -> list[Any]:
    """Texts (text runs), image paths (vision runs) or questions (multiple-choice runs) from
    the arguments."""
    if args.file is not None and not args.file.is_file():
        raise UserError(f"no such file: {args.file}")
    if run["task"] in ("vision", "mof"):
        paths = list(args.texts)
        if args.file is not None:
            paths += [line.strip() for line in args.file.read_text().splitlines() if line.strip()]
        if not paths:
            what = "image files or folders of images" if run["task"] == "vision" else "CIF files"
            raise UserError(f"give {what}, or --file listing them")
        return paths
    if run["task"] == "text":
        texts = list(args.texts)
        if args.file is not None:
            lines = args.file.read_text().splitlines()
            texts += [line.strip() for line in lines if line.strip()]
        if not texts:
            raise UserError("give texts to classify, or --file with one text per line")
        return texts
    if args.texts or args.file is None:
        raise UserError("multiple-choice runs read questions from --file (the dataset's format)")
    return load_multiple_choice(run["data"]["dataset"], path=args.file)


def predict(args: argparse.Namespace) -> int:
    if args.num_samples < 0:
        raise UserError(f"--num-samples must be >= 0, got {args.num_samples}")
    run = read_run(args.run)
    _check_task(run, args)
    items = _read_inputs(run, args)
    device = _device(args)
    run, method, encoder = _load_trained(args.run, device)
    if run["task"] == "mof":
        rows = _predict_mof(run, method, items, args)
        columns = ["gap_ev", "std_ev", "aleatoric_std_ev", "epistemic_std_ev", "structure"]
        _print_rows(rows, columns, args.format)
        return 0
    if run["task"] == "text":
        texts = items
        inputs = encode_texts(encoder, texts, run["data"]["max_length"])
    elif run["task"] == "vision":
        size = max(run["data"]["image_size"], 32)
        files, inputs, errors = read_images(items, image_size=size, channels=3)
        for path, message in errors.items():
            print(f"balora predict: skipped {path}: {message}", file=sys.stderr)
        if not files:
            raise UserError("no readable image among the inputs")
        texts = [str(f) for f in files]
    else:
        texts = [ex.question for ex in items]
        inputs = encode_examples(encoder, items)
    data = Data(inputs, torch.zeros(len(texts), dtype=torch.long)).to(device)
    pred = predict_data(method, data, args.num_samples, seed=0, batch_size=EVAL_BATCH)
    names = run["label_names"]
    rows = []
    for i, text in enumerate(texts):
        k = int(pred.mean[i].argmax())
        rows.append(
            {
                "text": text,
                "label": names[k],
                "probability": round(float(pred.mean[i, k]), 4),
                "total": round(float(pred.total[i]), 4),
                "aleatoric": round(float(pred.aleatoric[i]), 4),
                "epistemic": round(float(pred.epistemic[i]), 5),
            }
        )
    key = "image" if run["task"] == "vision" else "text"
    if key != "text":
        rows = [{key: r.pop("text"), **r} for r in rows]
    _print_rows(rows, ["label", "probability", "total", "aleatoric", "epistemic", key], args.format)
    return 0


def _print_rows(rows: list[dict[str, Any]], columns: list[str], form: str) -> None:
    if form == "jsonl":
        for row in rows:
            print(json.dumps(row))
    else:
        print(_table(rows, columns))


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(value: Any, col: str) -> str:
        text = str(value)
        long = col in ("text", "image", "structure") and len(text) > 60
        return "..." + text[-57:] if long else text

    cells = [[cell(r[c], c) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _evaluation_data(run: dict[str, Any], args: argparse.Namespace) -> Any:
    """Examples to evaluate on, read before the model is loaded (fail fast): every row of
    ``--data``, or ``None`` for the run's own test split."""
    if args.data is None or run["task"] == "mof":  # mof: read with the backbone's settings
        return None
    if run["task"] == "text":
        cfg = run["data"]
        return load_text_file(
            args.data,
            args.text_column or cfg["text_column"],
            args.label_column or cfg["label_column"],
            label_names=run["label_names"],
            val_fraction=0.0,
            test_fraction=0.0,
        ).train  # every row of the file
    if run["task"] == "vision":
        every = load_image_folder(
            args.data,
            image_size=max(run["data"]["image_size"], 32),
            label_names=run["label_names"],
            val_fraction=0.0,
            test_fraction=0.0,
        )
        return to_data(every.train)
    return load_multiple_choice(run["data"]["dataset"], path=args.data)


def evaluate(args: argparse.Namespace) -> int:
    if any(s < 0 for s in args.num_samples):
        raise UserError(f"--num-samples must be >= 0, got {args.num_samples}")
    run = read_run(args.run)
    _check_task(run, args)
    rows = _evaluation_data(run, args)
    device = _device(args)
    run, method, encoder = _load_trained(args.run, device)
    task_cfg = TASK_CONFIGS[run["task"]](**run["data"])
    if run["task"] == "mof":
        return _evaluate_mof(args, run, method, _mof_evaluation_data(run, args, encoder), device)
    if run["task"] == "text":
        if rows is None:  # the whole test split of the run's data
            rows = load_text_data(TextTaskConfig(**run["data"])).test
        test = Data(
            encode_texts(encoder, rows.texts, run["data"]["max_length"]),
            torch.tensor(rows.labels, dtype=torch.long),
        )
    elif run["task"] == "vision":
        test = rows if rows is not None else to_data(load_vision_data(task_cfg).test)
    elif rows is None:
        test = encoder.test
    else:
        answers = torch.tensor([ex.answer for ex in rows], dtype=torch.long)
        test = Data(encode_examples(encoder, rows), answers)
    test = test.to(device)
    ood = load_ood(task_cfg) if run["task"] == "vision" and args.data is None else None
    ood = None if ood is None else to_data(ood).to(device)

    def score(pred: Prediction, s: int) -> tuple[dict[str, Any], dict[str, str]]:
        ood_pred = None
        if ood is not None:
            ood_pred = predict_data(method, ood, s, seed=1, batch_size=EVAL_BATCH)
        return classification_evaluation(pred, test.targets, ood_pred)

    results, pred, counts, out = _metrics_by_samples(args, run, method, test, EVAL_BATCH, score)
    plot = plot_evaluation(
        pred, test.targets, {int(k): v["metrics"] for k, v in results.items()}, out / "eval.png"
    )
    best = results[str(counts[-1])]["metrics"]
    print(
        f"{run['method']} on {len(test)} examples (S={counts[-1]}): accuracy "
        f"{best['accuracy']:.4f}, ECE {best['ece']:.4f}, NLL {best['nll']:.4f}, "
        f"Brier {best['brier']:.4f}; wrote {out / 'metrics.json'} and {plot}"
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
        pred = predict_data(method, test, s, seed=0, batch_size=batch_size)
        metrics, reasons = score(pred, s)
        metrics["seconds"] = time.perf_counter() - start
        results[str(s)] = {"metrics": metrics, "undefined": reasons}
    out: Path = args.output or args.run / "eval"
    write_json(
        out / "metrics.json",
        run_record(run=str(args.run), method=run["method"], examples=len(test), by_samples=results),
    )
    return results, pred, counts, out


def _evaluate_mof(
    args: argparse.Namespace, run: dict[str, Any], method: Method, test: Data, device: torch.device
) -> int:
    """Regression metrics of a mof run at each S (no plot: `plot_evaluation` is for
    classification)."""
    test = test.to(device)
    batch = MOF_EVAL_BATCH[run["data"]["backbone"]]
    results, _, counts, out = _metrics_by_samples(
        args, run, method, test, batch, lambda pred, _s: regression_evaluation(pred, test.targets)
    )
    best = results[str(counts[-1])]["metrics"]
    print(
        f"{run['method']} on {len(test)} structures (S={counts[-1]}): "
        f"{_regression_summary(best)}; wrote {out / 'metrics.json'}"
    )
    return 0


def compare(args: argparse.Namespace) -> int:
    task_cfg = dataclass_from_args(TASK_CONFIGS[args.task], args)
    train_cfg = dataclass_from_args(TrainConfig, args)
    if args.task == "mof":
        task_cfg = _absolute_paths(task_cfg)
    task = TASK_LOADERS[args.task](task_cfg)
    regression: dict[str, Any] = {}
    if args.task == "mof":
        _report_skipped("compare", task.errors)
        args.output.mkdir(parents=True, exist_ok=True)
        skipped = {str(e.name or i): e.reason for i, e in task.errors.items()}
        write_json(args.output / "data.json", {"data": asdict(task_cfg), "skipped": skipped})
        regression = {
            "task": "regression",
            "gaussian": True,
            "eval_batch_size": MOF_EVAL_BATCH[task_cfg.backbone],
        }
    adapter = adapter_config(args, task.target_modules, task.modules_to_save)
    methods = [(m, _method_options(m, args)) for m in args.methods]
    factory, train_data, val, test, ood = _on_device(task, _device(args))
    results = run_comparison(
        factory,
        train_data,
        val,
        test,
        methods,
        adapter=adapter,
        train_config=train_cfg,
        seeds=tuple(args.seeds),
        num_samples=tuple(args.num_samples),
        ood=ood,
        output_dir=args.output,
        resume=not args.no_resume,
        **regression,
    )
    print(results.markdown())
    return 0


# The demo's budget: under 10 minutes on 2 CPU cores (see README for the measured time).
DEMO_TASK = {"max_train": 1600, "max_eval": 400, "max_length": 48}
DEMO_TRAIN = {"epochs": 2, "batch_size": 32, "lr": 1e-3}
DEMO_SAMPLES = (1, 2, 4, 8)
QUICK_TASK = {"max_train": 48, "max_eval": 24, "max_length": 16}
QUICK_TRAIN = {"epochs": 1, "batch_size": 16, "lr": 1e-3}


def demo(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    task_cfg = TextTaskConfig(**(QUICK_TASK if args.quick else DEMO_TASK))
    train_cfg = TrainConfig(**(QUICK_TRAIN if args.quick else DEMO_TRAIN))
    task = load_text_task(task_cfg)
    adapter = BaLoRAConfig(target_modules=task.target_modules, modules_to_save=task.modules_to_save)
    print(
        f"balora demo: {', '.join(DEMO_METHODS)} on Rotten Tomatoes "
        f"({len(task.train)} train / {len(task.val)} validation / {len(task.test)} test "
        "snippets), all-MiniLM-L6-v2, query/value adapters"
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
