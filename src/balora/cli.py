"""The ``balora`` command line: train, evaluate, predict, compare, demo.

Options are generated from the typed configs (`BaLoRAConfig`, `TrainConfig` and the config
of the task chosen by ``--task``, from the registry `balora.tasks.TASKS`); their field
docstrings are the ``--help`` texts. User errors (a bad path, column, label or
option) end with a one-line message and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

import balora.commands as commands
from balora.argparsing import add_dataclass_arguments
from balora.commands import DEMO_METHODS
from balora.config import BaLoRAConfig
from balora.errors import UserError
from balora.layers import UnsupportedLayerError
from balora.methods import METHODS, TrainConfig
from balora.tasks import TASKS


def _common_training_options(parser: argparse.ArgumentParser, *, methods: bool, task: str) -> None:
    tasks = "; ".join(f"{name}: {recipe.summary}" for name, recipe in TASKS.items())
    parser.add_argument(
        "--task",
        default="text",
        choices=sorted(TASKS),
        help=f"{tasks} (default: text; `--task vision --help` lists that task's options)",
    )
    adapter_fields = {f.name for f in dataclasses.fields(BaLoRAConfig)}
    config_class = TASKS[task].config_class
    add_dataclass_arguments(
        parser,
        config_class,
        title=f"data and backbone ({task})",
        # a field both configs have (mof: target_modules) is the adapter's option, given to both
        exclude=tuple(f.name for f in dataclasses.fields(config_class) if f.name in adapter_fields),
    )
    add_dataclass_arguments(
        parser,
        BaLoRAConfig,
        title="adapter",
        defaults={"target_modules": None, "modules_to_save": None},
        exclude=("alpha_feature_dim",),
    )
    add_dataclass_arguments(parser, TrainConfig, title="training budget")
    parser.add_argument(
        "--save-every",
        type=_positive_int,
        default=None,
        metavar="STEPS",
        help="write a resumable training state every STEPS steps (train: in the run folder; "
        "compare: under OUTPUT/states/), so that rerunning an interrupted command continues "
        "where it stopped (default: off)",
    )
    if methods:
        parser.add_argument(
            "--method", default="balora", choices=sorted(METHODS), help="method to train"
        )
    parser.add_argument("--seed", type=int, default=0, help="seed of the method (default: 0)")
    _device_option(parser)


def _device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        help="where to train and predict: cpu, cuda, cuda:1, ... (default: auto, the GPU when "
        "there is one)",
    )


def _run_task_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--task",
        default=None,
        choices=sorted(TASKS),
        help="the run's task, checked against its run.json (default: read from run.json)",
    )


def _sample_counts_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--num-samples",
        type=int,
        nargs="+",
        default=[1, 2, 4, 8, 16],
        help="posterior sample counts to evaluate (default: 1 2 4 8 16)",
    )


def build_parser(task: str = "text") -> argparse.ArgumentParser:
    """The parser; `task` chooses which task config's options `train` and `compare` take."""
    parser = argparse.ArgumentParser(
        prog="balora",
        description="Bayesian low-rank adaptation: fine-tune with calibrated uncertainty.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train one method; save adapter, config and metrics")
    p.add_argument(
        "--output",
        "-o",
        type=Path,
        required=True,
        help="run directory to write (a folder that holds a finished run is refused unless "
        "--overwrite)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the finished run in --output (its files, evaluations included, are "
        "removed once the new training has finished)",
    )
    _common_training_options(p, methods=True, task=task)

    p = sub.add_parser("evaluate", help="metrics JSON and plots of a trained run")
    p.add_argument("run", type=Path, help="run directory written by `balora train`")
    _run_task_option(p)
    p.add_argument(
        "--data",
        help="data to evaluate on: a CSV/JSONL file for text runs, a file in the dataset's "
        "format for multiple-choice runs, an image folder DIR/<class>/<image> for vision runs, "
        "a label CSV (name,n_atoms,gap_ev) for mof runs (default: the run's test split)",
    )
    p.add_argument(
        "--cif-dir",
        type=Path,
        default=None,
        help="mof runs: the folder of --data's CIFs, <name>.cif (default: --data's folder)",
    )
    p.add_argument("--text-column", default=None, help="text column of --data")
    p.add_argument("--label-column", default=None, help="label column of --data")
    _sample_counts_option(p)
    _device_option(p)
    p.add_argument("--output", "-o", type=Path, help="where to write (default: RUN/eval)")

    p = sub.add_parser("predict", help="prediction and uncertainty per input")
    p.add_argument("run", type=Path, help="run directory written by `balora train`")
    _run_task_option(p)
    p.add_argument(
        "texts",
        nargs="*",
        metavar="INPUT",
        help="texts to classify (text runs), image files / folders of images (vision runs), or "
        "CIF files / folders of CIFs (mof runs)",
    )
    p.add_argument(
        "--file",
        type=Path,
        help="text runs: a file with one input per line; multiple-choice runs: a file of "
        "questions in the dataset's format; vision and mof runs: a file listing input paths",
    )
    p.add_argument("--num-samples", type=int, default=16, help="posterior samples (default: 16)")
    p.add_argument(
        "--format",
        choices=["table", "jsonl"],
        default="table",
        help="output format (default: table)",
    )
    _device_option(p)

    p = sub.add_parser("compare", help="the comparison runner over several methods")
    p.add_argument("--output", "-o", type=Path, required=True, help="directory to write")
    p.add_argument(
        "--methods",
        nargs="+",
        default=list(DEMO_METHODS),
        choices=sorted(METHODS),
        metavar="METHOD",
        help=f"methods (default: {' '.join(DEMO_METHODS)})",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (default: 0)")
    _sample_counts_option(p)
    p.add_argument("--members", type=int, default=5, help="ensemble size (default: 5)")
    p.add_argument("--no-resume", action="store_true", help="redo finished methods")
    p.add_argument(
        "--evaluate-on",
        choices=["test", "validation"],
        default="test",
        help="where the metrics come from: the test split, or the validation split to choose "
        "options without looking at test data (no OOD set then) (default: test)",
    )
    p.add_argument(
        "--test-diagnostics",
        type=int,
        default=256,
        metavar="N",
        help="test examples, taken as one batch, on which each run's noise diagnostics are "
        "recorded (0: none; lower it for large models) (default: 256)",
    )
    _common_training_options(p, methods=False, task=task)

    p = sub.add_parser(
        "demo", help="LoRA, LoRA + temperature scaling and BaLoRA on the offline text task"
    )
    p.add_argument(
        "--output",
        "-o",
        type=Path,
        default=Path("runs/demo"),
        help="directory to write (default: runs/demo)",
    )
    p.add_argument(
        "--quick", action="store_true", help="a tiny budget (a smoke test, not a result)"
    )
    return parser


USER_ERRORS = (
    UserError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    ValueError,
    KeyError,
    UnsupportedLayerError,
    FloatingPointError,
    ImportError,
    OSError,
)
"""What a user's input can cause: one line and exit code 2 (``BALORA_DEBUG=1`` adds the
traceback, should one of ours hide behind these types). Anything else is a bug of ours and
keeps its traceback (exit code 1)."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _message(e: BaseException) -> str:
    text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    text = " ".join(str(text).split())  # one line
    if isinstance(e, ImportError) and "pip install" not in text:
        text += " (an optional dependency is missing: see the README's install section)"
    return text or type(e).__name__


def main(argv: Sequence[str] | None = None) -> int:
    command = "balora"
    try:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # no weight-loading reports
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--task", choices=sorted(TASKS), default="text")
        known, _ = pre.parse_known_args(argv)
        parser = build_parser(known.task)
        args, extra = parser.parse_known_args(argv)
        if extra:
            if args.command != "predict":
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
            args.texts = [*args.texts, *_late_inputs(parser, extra)]
        command = f"balora {args.command}"
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        return getattr(commands, args.command)(args)
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        if os.environ.get("BALORA_DEBUG"):  # the traceback of what looks like a user error
            traceback.print_exc()
        print(f"{command}: error: {_message(e)}", file=sys.stderr)
        return 2
    except Exception:
        traceback.print_exc()
        print(
            f"{command}: internal error: this is a bug in balora; please report it with the "
            "command line and the traceback above",
            file=sys.stderr,
        )
        return 1


def _late_inputs(parser: argparse.ArgumentParser, extra: list[str]) -> list[str]:
    """``predict``'s inputs given after its options (``RUN --num-samples 2 "text"``), which
    argparse leaves over; after ``--`` anything is an input, even ``-2,-2``."""
    cut = extra.index("--") if "--" in extra else len(extra)
    before, after = extra[:cut], extra[cut + 1 :]
    options = [item for item in before if item.startswith("-")]
    if options:
        parser.error(f"unrecognized arguments: {' '.join(options)}")
    return [*before, *after]


if __name__ == "__main__":
    sys.exit(main())
