"""The command line on a tiny random-init BERT and small CSV / JSONL files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from balora.cli import build_parser, main

WORDS = {
    "good": ["great", "wonderful", "moving", "funny", "brilliant", "warm"],
    "bad": ["dull", "boring", "flat", "awful", "tedious", "lifeless"],
}


def tiny_bert_dir(path: Path) -> Path:
    """A 2-layer BERT classifier with random weights and the MiniLM tokenizer, on disk."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from balora.tasks.text import default_text_model_path

    tokenizer = AutoTokenizer.from_pretrained(default_text_model_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return tiny_bert_dir(tmp_path_factory.mktemp("tiny-bert"))


def _rows(n, seed=0):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        words = rng.choices(WORDS["good" if label == "pos" else "bad"], k=4)
        rows.append({"review": " ".join(words), "sentiment": label})
    return rows


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "reviews.csv"
    lines = ["review,sentiment"] + [f"{r['review']},{r['sentiment']}" for r in _rows(80)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def jsonl_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "reviews.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in _rows(30, seed=1)) + "\n")
    return path


def _common(model_dir, data):
    return [
        "--model",
        str(model_dir),
        "--data",
        str(data),
        "--text-column",
        "review",
        "--label-column",
        "sentiment",
        "--max-length",
        "16",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--no-progress",
        "--r",
        "2",
    ]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_model_dir, csv_file):
    out = tmp_path_factory.mktemp("run")
    code = main(["train", "-o", str(out), "--method", "balora", *_common(tiny_model_dir, csv_file)])
    assert code == 0
    return out


def test_train_writes_adapter_config_and_metrics(trained_run):
    run = json.loads((trained_run / "run.json").read_text())
    assert run["method"] == "balora"
    assert run["label_names"] == ["neg", "pos"]
    assert run["adapter"]["target_modules"] == ["query", "value"]
    assert run["adapter"]["modules_to_save"] == ["classifier"]
    assert run["history"]
    assert "train_nll" in run["history"][0]
    assert 0.0 <= run["validation"]["accuracy"] <= 1.0
    assert (trained_run / "adapter" / "adapter_model.safetensors").is_file()


def test_evaluate_on_a_jsonl_file(trained_run, jsonl_file, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(
        [
            "evaluate",
            str(trained_run),
            "--data",
            str(jsonl_file),
            "--text-column",
            "review",
            "--label-column",
            "sentiment",
            "--num-samples",
            "1",
            "4",
            "-o",
            str(out),
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["examples"] == 30
    assert set(metrics["by_samples"]) == {"0", "1", "4"}
    assert 0.0 <= metrics["by_samples"]["4"]["metrics"]["ece"] <= 1.0
    assert "accuracy" in capsys.readouterr().out


def test_predict_table_and_jsonl(trained_run, tmp_path, capsys):
    assert main(["predict", str(trained_run), "great warm film", "--num-samples", "4"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:3] == ["label", "probability", "total"]
    texts = tmp_path / "texts.txt"
    texts.write_text("great warm film\n\ndull flat boring\n")
    code = main(["predict", str(trained_run), "--file", str(texts), "--format", "jsonl"])
    assert code == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == ["great warm film", "dull flat boring"]
    for row in rows:
        assert row["label"] in ("neg", "pos")
        assert 0.5 <= row["probability"] <= 1.0
        assert row["total"] == pytest.approx(row["aleatoric"] + row["epistemic"], abs=2e-4)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["predict", "{run}", "x", "--num-samples", "-1"], "--num-samples"),
        (["predict", "{tmp}/nowhere", "x"], "not a balora run directory"),
        (["predict", "{run}", "--file", "{tmp}/missing.txt"], "no such file"),
        (["predict", "{run}"], "give texts"),
        (["evaluate", "{run}", "--data", "{tmp}/missing.csv"], "missing.csv"),
        (["evaluate", "{run}", "--data", "{csv}", "--text-column", "body"], "body"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, trained_run, csv_file, tmp_path, capsys):
    argv = [a.format(run=trained_run, tmp=tmp_path, csv=csv_file) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert message in err
    assert "Traceback" not in err


def test_train_rejects_bad_config_values(tiny_model_dir, csv_file, tmp_path, capsys):
    argv = ["train", "-o", str(tmp_path / "x"), *_common(tiny_model_dir, csv_file)]
    assert main([*argv, "--prior-p", "1.5"]) == 2
    assert "prior_p" in capsys.readouterr().err
    assert main([*argv, "--label-column", "stars"]) == 2
    assert "stars" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("command", ["train", "evaluate", "predict", "compare", "demo"])
def test_help_of_every_command(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: balora {command}" in out
    if command in ("train", "compare"):
        # the config dataclasses' field docstrings are the help texts
        assert "Dropout rate of the prior" in out
        assert "Passes over the training data" in out


def test_parser_lists_every_method():
    parser = build_parser()
    text = parser.parse_args(["train", "-o", "x", "--method", "lora"])
    assert text.method == "lora"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "-o", "x", "--method", "nope"])


def test_quick_demo_runs_end_to_end(tmp_path, capsys):
    """The demo's code path on the real offline MiniLM and Rotten Tomatoes, at a tiny budget."""
    assert main(["demo", "--quick", "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for method in ("lora", "lora_ts", "balora"):
        assert f"| {method} |" in out
    for name in ("results.json", "results.md", "reliability.png", "metrics_vs_samples.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_multiple_choice_train_evaluate_predict(model_dirs, tmp_path, capsys):
    """The causal-LM multiple-choice recipe through the CLI, on a tiny Llama and ARC fixtures."""
    from tests.conftest import MC_FIXTURES

    arc_e, arc_c = MC_FIXTURES / "arc_easy.jsonl", MC_FIXTURES / "arc_challenge.jsonl"
    run = tmp_path / "mc"
    code = main(
        [
            "train",
            "--task",
            "multiple-choice",
            "-o",
            str(run),
            "--model",
            model_dirs["llama"],
            "--dataset",
            "arc_easy",
            "--train-file",
            str(arc_e),
            "--validation-file",
            str(arc_c),
            "--test-file",
            str(arc_c),
            "--epochs",
            "1",
            "--batch-size",
            "2",
            "--r",
            "2",
            "--no-progress",
        ]
    )
    assert code == 0
    record = json.loads((run / "run.json").read_text())
    assert record["task"] == "multiple-choice"
    assert record["label_names"] == ["A", "B", "C", "D", "E"]
    assert "q_proj" in record["adapter"]["target_modules"]
    assert main(["evaluate", str(run), "--num-samples", "2", "-o", str(tmp_path / "ev")]) == 0
    assert (tmp_path / "ev" / "eval.png").stat().st_size > 0
    capsys.readouterr()
    code = main(
        ["predict", str(run), "--file", str(arc_c), "--format", "jsonl", "--num-samples", "2"]
    )
    assert code == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 3
    assert all(r["label"] in "ABCDE" for r in rows)
    assert main(["predict", str(run), "a bare text"]) == 2
    assert "--file" in capsys.readouterr().err


@pytest.mark.slow
def test_full_demo(tmp_path, capsys):
    """`balora demo` at its real budget (minutes on 2 cores; run with -m slow)."""
    assert main(["demo", "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| balora | 10 |" in out
    assert (tmp_path / "results.json").is_file()


def test_compare_test_diagnostics_option(tiny_model_dir, csv_file, tmp_path, capsys):
    """--test-diagnostics sets how many test examples the runs' noise diagnostics use."""
    from balora.experiments import Results

    argv = ["compare", "--methods", "balora", "--num-samples", "2"]
    argv += _common(tiny_model_dir, csv_file)
    assert main([*argv, "-o", str(tmp_path / "bad"), "--test-diagnostics", "-1"]) == 2
    assert "diagnostics must be an integer >= 0" in capsys.readouterr().err
    assert main([*argv, "-o", str(tmp_path / "off"), "--test-diagnostics", "0"]) == 0
    assert Results.load(tmp_path / "off").runs[0].noise is None
    assert main([*argv, "-o", str(tmp_path / "on"), "--test-diagnostics", "4"]) == 0
    assert Results.load(tmp_path / "on").runs[0].noise["layers"]


def test_compare_on_validation_and_a_resumable_train(tiny_model_dir, csv_file, tmp_path):
    from balora.experiments import Results

    common = _common(tiny_model_dir, csv_file)
    out = tmp_path / "screen"
    argv = ["compare", "-o", str(out), "--methods", "lora", "--evaluate-on", "validation"]
    assert main([*argv, "--num-samples", "2", *common, "--save-every", "2"]) == 0
    results = Results.load(out)
    val = results.config["data"]["val"]
    assert results.config["data"]["test"] == val  # evaluated on the validation split
    assert not (out / "states").exists() or not any((out / "states").iterdir())
    run = tmp_path / "run"
    assert (
        main(["train", "-o", str(run), *common, "--save-every", "1", "--checkpoint", "last"]) == 0
    )
    assert not (run / "training-state.pt").exists()  # removed once training finished
    assert json.loads((run / "run.json").read_text())["train"]["checkpoint"] == "last"
