"""The `Recipe` protocol: everything the commands need to know about one task.

A task is one folder under ``balora/tasks/`` (data, backbone, recipe) and one line in the
registry `balora.tasks.TASKS`. The commands (`balora.commands`) and the CLI read the registry
and call the recipe; they never branch on the task's name.

    balora train / compare            balora evaluate / predict (a trained run)
    ─────────────────────             ─────────────────────────────────────────
    config_class(**options)           config_class(**run["data"])
      └─ prepare(cfg)                   ├─ read_inputs / read_evaluation    (before any model)
      └─ load(cfg) ─▶ LoadedTask        ├─ load_trained(cfg, run) ─▶ TrainedTask
           train / val / test / ood     ├─ encode_inputs ─▶ Encoded       (predict)
           model_factory, targets       │    └─ rows(run, names, Prediction) ─▶ output rows
           record (run.json extras)     └─ evaluation_data ─▶ (test, ood)  (evaluate)

`ClassificationRecipe` supplies what the three classification tasks share (rows of a class
probability and the entropies, the metric summary); a regression task sets ``kind`` and
``gaussian`` and writes its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from balora.dataset import Data, ModelFactory, TaskKind
from balora.errors import UserError
from balora.predict import Prediction
from balora.tasks.files import read_text


@dataclass
class LoadedTask:
    """A task loaded for training: the splits, an optional OOD set and a model factory."""

    train: Data
    val: Data
    test: Data
    model_factory: ModelFactory
    """A fresh base model at every call (a new head drawn from the global RNG, which each
    method seeds)."""
    target_modules: tuple[str, ...] | str
    """The backbone's default adapter targets (the user's option overrides them)."""
    modules_to_save: tuple[str, ...]
    """The backbone's new head(s), trained with the adapters (the user's option overrides)."""
    ood: Data | None = None
    """Inputs unlike the training data, for OOD-detection metrics."""
    record: dict[str, Any] = field(default_factory=dict)
    """Extra fields for run.json (e.g. ``label_names``) that `load_trained` reads back."""
    skipped: dict[str, str] = field(default_factory=dict)
    """Inputs that could not be used: name → reason (reported, and kept in run.json)."""
    description: str = ""
    """What the data is, for the line printed before training."""

    @classmethod
    def labelled(cls, task: Any) -> LoadedTask:
        """A classification task's splits, factory and defaults, its ``label_names`` kept
        for run.json (any object with those attributes, and optionally ``ood``)."""
        return cls(
            train=task.train,
            val=task.val,
            test=task.test,
            ood=getattr(task, "ood", None),
            model_factory=task.model_factory,
            target_modules=task.target_modules,
            modules_to_save=task.modules_to_save,
            record={"label_names": task.label_names},
            description=f"labels {task.label_names}",
        )


@dataclass
class TrainedTask:
    """What a trained run needs besides its weights: a factory of the untrained base model
    (as at training time) and whatever encodes new inputs (a tokenizer, a backbone, ...)."""

    model_factory: ModelFactory
    encoder: Any = None


@dataclass
class Encoded:
    """User inputs ready for the model: their names (for the output rows), the inputs as
    `Data` (targets are placeholders) and the inputs that were skipped, with why."""

    names: list[str]
    data: Data
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EvaluationSource:
    """Where ``balora evaluate`` reads its examples: ``data`` (a file or folder in the task's
    format; ``None``: the run's own test split) and the options that say how to read it."""

    data: str | None = None
    text_column: str | None = None
    label_column: str | None = None
    cif_dir: Path | None = None


class Recipe(Protocol):
    """What a task supplies; see the module docstring for when each part is called."""

    name: str
    """The ``--task`` value."""
    summary: str
    """One line for ``--task``'s help."""
    config_class: type
    """The task's dataclass config; its fields become command-line options."""
    kind: TaskKind
    gaussian: bool
    """Regression heads that output (mean, log-variance)."""
    unit: str
    """What one example is called in messages ("examples", "structures")."""

    def prepare(self, cfg: Any) -> Any:
        """The config as recorded in run.json (e.g. with absolute paths)."""
        ...

    def load(self, cfg: Any, *, progress: bool) -> LoadedTask:
        """Data and backbone for training."""
        ...

    def load_trained(self, cfg: Any, run: dict[str, Any]) -> TrainedTask:
        """The base model and encoder of a trained run (its run.json in `run`)."""
        ...

    def eval_batch_size(self, cfg: Any) -> int | None:
        """Examples per prediction call (``None``: the caller's default)."""
        ...

    def read_inputs(
        self, cfg: Any, run: dict[str, Any], items: Sequence[str], file: Path | None
    ) -> list[Any]:
        """``balora predict``'s inputs (arguments and ``--file``), checked before any model
        is loaded; raises `balora.errors.UserError` when there are none."""
        ...

    def encode_inputs(
        self, cfg: Any, run: dict[str, Any], trained: TrainedTask, items: list[Any]
    ) -> Encoded:
        """`read_inputs`' result as model inputs."""
        ...

    def read_evaluation(self, cfg: Any, run: dict[str, Any], source: EvaluationSource) -> Any:
        """What ``balora evaluate`` reads before the model loads (fail fast); ``None`` for
        the run's own test split."""
        ...

    def evaluation_data(
        self, cfg: Any, run: dict[str, Any], trained: TrainedTask, read: Any
    ) -> tuple[Data, Data | None, dict[str, str]]:
        """``(test, ood, skipped)`` from `read_evaluation`'s result."""
        ...

    def rows(
        self, run: dict[str, Any], names: list[str], pred: Prediction
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """``balora predict``'s output rows and the table's columns."""
        ...

    def describe(self, metrics: dict[str, Any]) -> str:
        """A one-line summary of evaluation metrics."""
        ...


def inputs_from(items: Sequence[str], file: Path | None, what: str) -> list[str]:
    """``predict``'s inputs: the arguments, then the non-blank lines of `file`; a
    `UserError` that asks for `what` when there are none."""
    found = list(items)
    if file is not None:
        found += [line.strip() for line in read_text(file).splitlines() if line.strip()]
    if not found:
        raise UserError(f"give {what}")
    return found


def _number(metrics: dict[str, Any], key: str, digits: int = 4) -> str:
    value = metrics.get(key)
    return "undefined" if value is None else f"{value:.{digits}f}"


class ClassificationRecipe:
    """Defaults shared by the classification tasks: the labels live in run.json's
    ``label_names``; a prediction row is the most probable label, its probability and the
    entropies; no preparation of the config."""

    kind: ClassVar[TaskKind] = "classification"
    gaussian: ClassVar[bool] = False
    unit: ClassVar[str] = "examples"
    item_column: ClassVar[str] = "text"
    """The column that names each input in ``predict``'s output."""

    def prepare(self, cfg: Any) -> Any:
        return cfg

    def eval_batch_size(self, cfg: Any) -> int | None:
        return None

    def rows(
        self, run: dict[str, Any], names: list[str], pred: Prediction
    ) -> tuple[list[dict[str, Any]], list[str]]:
        labels = run["label_names"]
        rows = []
        for i, name in enumerate(names):
            k = int(pred.mean[i].argmax())
            rows.append(
                {
                    self.item_column: name,
                    "label": labels[k],
                    "probability": round(float(pred.mean[i, k]), 4),
                    "total": round(float(pred.total[i]), 4),
                    "aleatoric": round(float(pred.aleatoric[i]), 4),
                    "epistemic": round(float(pred.epistemic[i]), 5),
                }
            )
        columns = ["label", "probability", "total", "aleatoric", "epistemic", self.item_column]
        return rows, columns

    def describe(self, metrics: dict[str, Any]) -> str:
        return (
            ", ".join(
                f"{label} {_number(metrics, key)}"
                for label, key in (("accuracy", "accuracy"), ("ECE", "ece"), ("NLL", "nll"))
            )
            + f", Brier {_number(metrics, 'brier')}"
        )
