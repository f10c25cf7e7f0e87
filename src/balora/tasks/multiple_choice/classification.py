"""A labelled text set as a multiple-choice task: the paper's commonsense protocol (a causal
LM answers by the next-token logits of option letters, no new head) on data we have offline.

Each text becomes one question whose options are the class words::

    {text}
    Question: Is this review positive or negative?
    A. negative
    B. positive
    Answer:                         ◀── " A" / " B"

Datasets (`MultipleChoiceTaskConfig.dataset`):

- ``rotten_tomatoes``: the 12,808 bundled Rotten Tomatoes snippets (the text task's corpus and
  its 80/10/10 split), classes shown as "negative" / "positive";
- ``classification``: any labelled CSV / TSV / JSONL / Parquet file (``train_file``, with
  ``text_column`` and ``label_column``); validation and test are 10 % of it each (the text
  task's seeded split), or the whole ``validation_file`` / ``test_file`` where given (the
  training file then keeps those rows); classes shown as their label names, or as
  ``label_words``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from balora.tasks.files import TABLE_EXTENSIONS, file_format, read_records, read_text
from balora.tasks.multiple_choice.data import MultipleChoiceExample
from balora.tasks.text.data import (
    TextClassificationData,
    TextSplit,
    load_rotten_tomatoes,
    load_text_file,
)

CLASSIFICATION_SETS: tuple[str, ...] = ("rotten_tomatoes", "classification")
ROTTEN_TOMATOES_WORDS: tuple[str, ...] = ("negative", "positive")
DEFAULT_QUESTION = "Is this review positive or negative?"


def as_examples(
    split: TextSplit, words: Sequence[str], question: str
) -> list[MultipleChoiceExample]:
    """One question per text: the text as context, the class words as options."""
    return [
        MultipleChoiceExample(question=question, options=list(words), answer=label, context=text)
        for text, label in zip(split.texts, split.labels, strict=True)
    ]


def load_classification(cfg: Any) -> tuple[TextClassificationData, list[str]]:
    """The train / validation / test texts named by a multiple-choice config whose dataset is
    one of `CLASSIFICATION_SETS`, and the word shown for each class."""
    if cfg.dataset == "rotten_tomatoes":
        data = load_rotten_tomatoes(seed=cfg.split_seed)
        words = list(cfg.label_words or ROTTEN_TOMATOES_WORDS)
    else:
        columns = (cfg.text_column, cfg.label_column)
        fractions = {  # a split with its own file takes nothing from the training file
            "val_fraction": 0.0 if cfg.validation_file is not None else 0.1,
            "test_fraction": 0.0 if cfg.test_file is not None else 0.1,
        }
        data = load_text_file(cfg.train_file, *columns, seed=cfg.split_seed, **fractions)
        names = data.label_names
        held = {}
        for split, path in (("validation", cfg.validation_file), ("test", cfg.test_file)):
            if path is not None:  # a whole file, read with the training file's label names
                every = load_text_file(
                    path, *columns, label_names=names, val_fraction=0.0, test_fraction=0.0
                )
                held[split] = every.train
        if held:
            data = TextClassificationData(
                train=data.train,
                validation=held.get("validation", data.validation),
                test=held.get("test", data.test),
                label_names=names,
            )
        words = list(cfg.label_words or names)
    if len(words) != len(data.label_names):
        raise ValueError(
            f"label_words has {len(words)} words for {len(data.label_names)} classes "
            f"{data.label_names}"
        )
    return data, words


def read_texts(
    path: str | os.PathLike[str], text_column: str, label_column: str | None, names: list[str]
) -> tuple[list[str], list[int]]:
    """Texts (and labels, by `names`, when `label_column` is given) of a table file, or the
    non-blank lines of any other file (no labels)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        table = file_format(path) in TABLE_EXTENSIONS
    except ValueError:
        table = False
    if not table:
        if label_column is not None:
            raise ValueError(
                f"{path} has no columns to read labels from: evaluation data must be a CSV, "
                "TSV, JSONL or Parquet file with a text and a label column"
            )
        lines = [line.strip() for line in read_text(path).splitlines() if line.strip()]
        return lines, [0] * len(lines)
    if label_column is None:
        rows = read_records(path)
        missing = [i for i, row in enumerate(rows) if text_column not in row]
        if missing:
            raise ValueError(f"{path}: no column {text_column!r} in row {missing[0]}")
        return [str(row[text_column]) for row in rows], [0] * len(rows)
    every = load_text_file(
        path, text_column, label_column, label_names=names, val_fraction=0.0, test_fraction=0.0
    )
    return every.train.texts, every.train.labels
