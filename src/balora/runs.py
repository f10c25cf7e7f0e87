"""Run directories: what `balora train` writes and `evaluate` / `predict` read back.

    run_dir/
      run.json              task, method, resolved configs, label names, training history
      adapter/              adapter methods: `balora.save` of the adapted model
      member-<m>/           ensemble: one adapter per member
      model.safetensors     full_ft: the whole model's weights
      laplace.*             laplace: the posterior (tensors + JSON)
      eval/                 `balora evaluate`'s metrics and plot

The weights are each method's own (`balora.methods.Method.save` / ``load``). Every file is
written atomically (temporary file + `os.replace`), so an interrupted run never leaves a
half-written run.json or adapter behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from balora._version import __version__

RUN_FILE = "run.json"


def read_run(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed run.json of a `balora train` output directory."""
    path = Path(run_dir) / RUN_FILE
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
