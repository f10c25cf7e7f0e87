"""Run directories: what `balora train` writes and `evaluate` / `predict` read back.

    run_dir/
      run.json              task, method, resolved configs, label names, training history
      adapter/              balora.save of the adapted model (adapter methods)
      member-<m>/           one adapter per ensemble member
      model.safetensors     full_ft: the whole model's weights

Every file is written atomically (temporary file + `os.replace`), so an interrupted run never
leaves a half-written run.json or adapter behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors.torch import load_model, save_model

from balora import __version__
from balora.io import load, save, write_atomic
from balora.methods import Method
from balora.methods.adapters import AdapterMethod, Ensemble, FullFineTune

RUN_FILE = "run.json"


def save_method_weights(method: Method, run_dir: Path) -> None:
    """Save what a trained method needs to predict again."""
    if isinstance(method, Ensemble):
        for m, member in enumerate(method.members):
            save(member.model, run_dir / f"member-{m}")
    elif isinstance(method, AdapterMethod):
        save(method.model, run_dir / "adapter")
    elif isinstance(method, FullFineTune):
        # save_model drops the duplicates of tied weights (e.g. an LM head shared with the
        # embeddings), which save_file refuses
        write_atomic(run_dir / "model.safetensors", lambda tmp: save_model(method.model, tmp))
    else:
        raise ValueError(f"saving a trained {method.name!r} model is not supported")


def load_method_weights(method: Method, run_dir: Path) -> None:
    """Rebuild `method`'s trained model(s) from a run directory."""
    if isinstance(method, Ensemble):
        for m, member in enumerate(method.members):
            member.model = load(member.model_factory(), run_dir / f"member-{m}").eval()
        method.model = method.members[0].model
    elif isinstance(method, AdapterMethod):
        method.model = load(method.model_factory(), run_dir / "adapter").eval()
    elif isinstance(method, FullFineTune):
        path = run_dir / "model.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"no model weights at {path}")
        model = method.model_factory()
        load_model(model, path)
        method.model = model.eval()
    else:
        raise ValueError(f"loading a trained {method.name!r} model is not supported")


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
