"""Run directories: what `balora train` writes and `evaluate` / `predict` read back.

    run_dir/
      run.json              task, method, resolved configs, label names, training history
      adapter/              adapter methods: `balora.save` of the adapted model
      member-<m>/           ensemble: one adapter per member
      model.safetensors     full_ft: the whole model's weights
      laplace.*             laplace: the posterior (tensors + JSON)
      temperature.json      lora_ts: the fitted temperature
      training-state.pt     while training with --save-every: the resumable state
      INCOMPLETE            while training (removed when run.json is written)
      eval/                 `balora evaluate`'s metrics and plot

The weights are each method's own (`balora.methods.Method.save` / ``load``). Every file is
written atomically (temporary file + `os.replace`), so an interrupted run never leaves a
half-written run.json or adapter behind.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from balora._version import __version__

RUN_FILE = "run.json"
MARKER = "INCOMPLETE"
"""Written into a run folder when training starts, removed once run.json is written: a folder
that holds it was interrupted (or is still training)."""
ARTIFACTS = (
    "adapter",
    "model.safetensors",
    "laplace.safetensors",
    "laplace.json",
    "temperature.json",
    "eval",
)
"""What `balora train` and `balora evaluate` write into a run folder (and ``member-*``)."""


def read_run(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed run.json of a `balora train` output directory."""
    path = Path(run_dir) / RUN_FILE
    # with the marker but a run.json, an --overwrite training is under way and the earlier
    # run is still whole (replace_run removes its run.json first)
    if (Path(run_dir) / MARKER).exists() and not path.is_file():
        raise ValueError(
            f"{run_dir} holds an unfinished training (it was interrupted, or is still running: "
            f"{MARKER} is there); train it again, with --overwrite if it held a finished run"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a balora run directory: no {RUN_FILE}")
    try:
        run = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from e
    for key in ("task", "method", "adapter", "train"):
        if key not in run:
            raise ValueError(f"{path} lacks {key!r}")
    return run


def run_record(**fields: Any) -> dict[str, Any]:
    """A run.json body with the library version."""
    return {"balora_version": __version__, **fields}


def check_output(run_dir: Path, *, overwrite: bool) -> bool:
    """Whether `run_dir` may receive a new run, checked before anything is loaded: a path that
    is a file, or a folder with a finished run (unless `overwrite`), is refused with a
    `ValueError`. Returns whether a finished run is there. Writes nothing."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"-o {run_dir} is a file, not a folder: give a folder for the run")
    finished = (run_dir / RUN_FILE).is_file()
    if finished and not overwrite:
        raise ValueError(
            f"{run_dir} holds a finished run ({RUN_FILE}); give another -o, or --overwrite to "
            "replace it"
        )
    return finished


def start_run(run_dir: Path) -> None:
    """Mark `run_dir` unfinished (creating it): training starts. An earlier finished run in it
    stays untouched until `replace_run`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / MARKER).write_text(f"training started by process {os.getpid()}\n")


def replace_run(run_dir: Path) -> None:
    """Remove an earlier run's files (weights, evaluations, run.json) before the new run's
    are written; nothing else in the folder is touched."""
    paths = [run_dir / name for name in (RUN_FILE, *ARTIFACTS)]  # run.json first
    paths += sorted(run_dir.glob("member-*"))
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def finish_run(run_dir: Path) -> None:
    """The run is complete: drop the unfinished marker."""
    (run_dir / MARKER).unlink(missing_ok=True)
