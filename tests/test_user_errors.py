"""Bad and awkward inputs, as a realistic user gives them, through the CLI and the API.

Every user error ends with exit code 2 and exactly one line on stderr that names the problem,
and nothing made earlier is damaged (a finished run stays as it was). Inputs users really have
(a byte-order mark, a late option, long fields) simply work. A bug of ours keeps its
traceback, with a hint to report it.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import balora
from balora.cli import main
from tests.test_cli import _rows, tiny_bert_dir

CSV_HEADER = "review,sentiment"


def _write_csv(path: Path, rows: list[tuple[str, str]], *, bom: bool = False) -> Path:
    text = CSV_HEADER + "\n" + "".join(f"{t},{y}\n" for t, y in rows)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny BERT, a good CSV, and one finished run (with an evaluation) to protect."""
    root = tmp_path_factory.mktemp("users")
    model = tiny_bert_dir(root / "bert")
    data = _write_csv(root / "reviews.csv", [(r["review"], r["sentiment"]) for r in _rows(60)])
    run = root / "run"
    code = main(["train", "-o", str(run), *_options(model, data), "--max-eval", "4"])
    assert code == 0
    assert main(["evaluate", str(run), "--num-samples", "1"]) == 0
    return {"root": root, "model": model, "data": data, "run": run}


def _options(model: Path, data: Path) -> list[str]:
    return [
        "--model", str(model), "--data", str(data), "--text-column", "review",
        "--label-column", "sentiment", "--max-length", "16", "--epochs", "1",
        "--batch-size", "16", "--r", "2", "--no-progress",
    ]  # fmt: skip


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _one_line_error(capsys, code: int, fragment: str) -> None:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert "error:" in err
    assert fragment in err, err


def _non_utf8(path: Path) -> Path:
    path.write_bytes(CSV_HEADER.encode() + b"\nun film tr\xe8s dr\xf4le,pos\nnul,neg\n")
    return path


# name → (argv builder, expected fragment); builders get the world and a fresh tmp folder
CASES = {
    "output is a file": (
        lambda w, t: ["train", "-o", str(_touch(t / "out")), *_options(w["model"], w["data"])],
        "is a file, not a folder",
    ),
    "output holds a finished run": (
        lambda w, t: ["train", "-o", str(w["run"]), *_options(w["model"], w["data"])],
        "holds a finished run",
    ),
    "evaluate into a file": (
        lambda w, t: ["evaluate", str(w["run"]), "-o", str(_touch(t / "metrics"))],
        "is a file, not a folder",
    ),
    "unsupported target module": (
        lambda w, t: ["train", "-o", str(t / "x"), *_options(w["model"], w["data"]),
                      "--target-modules", "LayerNorm"],
        "cannot adapt",
    ),
    "a target that matches nothing": (
        lambda w, t: ["train", "-o", str(t / "x"), *_options(w["model"], w["data"]),
                      "--target-modules", "(query"],
        "matched no module",
    ),
    "rank above the layer width": (
        lambda w, t: ["train", "-o", str(t / "x"), *_options(w["model"], w["data"]),
                      "--r", "100000"],
        "r=100000 is larger than",
    ),
    "max length beyond the model": (
        lambda w, t: ["train", "-o", str(t / "x"), *_options(w["model"], w["data"]),
                      "--max-length", "5000"],
        "exceeds what the model reads",
    ),
    "not UTF-8": (
        lambda w, t: ["train", "-o", str(t / "x"),
                      *_options(w["model"], _non_utf8(t / "latin1.csv"))],
        "is not UTF-8 text",
    ),
    "fractional labels": (
        lambda w, t: ["train", "-o", str(t / "x"), *_options(w["model"], _write_csv(
            t / "floats.csv", [("good", "1.0"), ("bad", "0.0")] * 20))],
        "number with a fraction",
    ),
    "too little data": (
        lambda w, t: ["train", "-o", str(t / "x"), *_options(w["model"], _write_csv(
            t / "tiny.csv", [("good", "pos"), ("bad", "neg"), ("fine", "pos")]))],
        "too small",
    ),
    "missing data file": (
        lambda w, t: ["train", "-o", str(t / "x"), *_options(w["model"], t / "nowhere.csv")],
        "nowhere.csv",
    ),
    "a model that is not there": (
        lambda w, t: ["train", "-o", str(t / "x"), *_options(t / "no-model", w["data"])],
        "no-model",
    ),
    "no CUDA": (
        lambda w, t: ["predict", str(w["run"]), "text", "--device", "cuda:3"],
        "CUDA",
    ),
    "predict a file that is not UTF-8": (
        lambda w, t: ["predict", str(w["run"]), "--file", str(_non_utf8(t / "texts.txt"))],
        "is not UTF-8 text",
    ),
    "a run that never finished": (
        lambda w, t: ["predict", str(_unfinished(w, t)), "text"],
        "unfinished training",
    ),
    "negative samples": (
        lambda w, t: ["evaluate", str(w["run"]), "--num-samples", "-1"],
        "--num-samples must be >= 0",
    ),
}  # fmt: skip


def _touch(path: Path) -> Path:
    path.write_text("a user's file\n")
    return path


def _unfinished(world: dict, tmp: Path) -> Path:
    run = tmp / "half"
    shutil.copytree(world["run"], run)
    (run / "run.json").unlink()  # a first training, killed before it finished
    (run / "INCOMPLETE").write_text("killed\n")
    return run


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_damages_nothing(case, world, tmp_path, capsys):
    build, fragment = CASES[case]
    before = _snapshot(world["run"])
    argv = build(world, tmp_path)
    files_before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    capsys.readouterr()
    _one_line_error(capsys, main(argv), fragment)
    assert _snapshot(world["run"]) == before  # the finished run is untouched
    for path, content in files_before.items():  # and so is every file the user had
        assert path.read_bytes() == content
    assert not (tmp_path / "x").exists()  # refused before a run folder was made


def test_parquet_without_pyarrow_names_the_package(world, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    data = _touch(tmp_path / "rows.parquet")
    code = main(["train", "-o", str(tmp_path / "x"), *_options(world["model"], data)])
    _one_line_error(capsys, code, "pip install pyarrow")


def test_overwrite_replaces_a_finished_run_and_its_evaluation(world, tmp_path, capsys):
    run = tmp_path / "again"
    shutil.copytree(world["run"], run)
    assert (run / "eval" / "metrics.json").is_file()
    code = main(["train", "-o", str(run), *_options(world["model"], world["data"]), "--overwrite"])
    assert code == 0, capsys.readouterr().err
    assert not (run / "eval").exists()  # the old evaluation does not sit beside the new run
    assert not (run / "INCOMPLETE").exists()
    assert json.loads((run / "run.json").read_text())["method"] == "balora"


def test_inputs_users_have_just_work(world, tmp_path, capsys):
    # a CSV saved by Excel (byte-order mark), predict's inputs after its options, long fields
    bom = _write_csv(tmp_path / "excel.csv", [(r["review"], r["sentiment"]) for r in _rows(40)],
                     bom=True)  # fmt: skip
    code = main(["train", "-o", str(tmp_path / "bom"), *_options(world["model"], bom)])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(["predict", str(world["run"]), "--num-samples", "2", "a warm film"]) == 0
    assert "a warm film" in capsys.readouterr().out
    long = _write_csv(tmp_path / "long.csv", [("great " * 40_000, "pos"), ("dull", "neg")] * 20)
    texts = balora.tasks.text.load_text_file(long, "review", "sentiment")
    assert max(len(t) for t in texts.train.texts) > 200_000


def test_recorded_options_are_the_ones_in_effect(world, tmp_path):
    run = tmp_path / "mc"
    argv = ["train", "-o", str(run), *_options(world["model"], world["data"])]
    assert main([*argv, "--method", "mc_dropout", "--lora-dropout", "0.3"]) == 0
    record = json.loads((run / "run.json").read_text())
    from balora.commands import _load_trained
    from balora.tasks import TASKS

    recipe = TASKS["text"]
    cfg = recipe.config_class(**record["data"])
    _, method = _load_trained(recipe, cfg, record, run, torch.device("cpu"))
    assert method.dropout == 0.3
    in_effect = balora.inject.get_adapter(method.model).config.to_dict()
    assert in_effect == record["adapter"]
    assert record["adapter"]["lora_dropout"] == 0.3
    assert record["train"] == {**record["train"], **vars(method.train_config)}


def test_evaluate_scores_the_runs_own_test_subset(world):
    metrics = json.loads((world["run"] / "eval" / "metrics.json").read_text())
    assert metrics["examples"] == 4  # trained with --max-eval 4


def test_interrupted_start_up_and_bugs(monkeypatch, capsys):
    import balora.cli as cli

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupt)
    assert main(["train", "-o", "x"]) == 130
    assert "interrupted" in capsys.readouterr().err
    monkeypatch.undo()

    def bug(args):
        raise RuntimeError("an index went wrong")

    monkeypatch.setattr(cli.commands, "predict", bug)
    assert main(["predict", "somewhere", "text"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert "this is a bug in balora" in err


def test_api_corners(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3))
    with pytest.warns(UserWarning, match="no BaLoRA adapters"):
        balora.predict(model, torch.randn(2, 4), num_samples=4)
    balora.apply(model, balora.BaLoRAConfig(r=2, target_modules=["0"]))
    with pytest.raises(ValueError, match="no examples"):
        balora.predict(model, torch.randn(0, 4), num_samples=4)
    with pytest.raises(ValueError, match="not a valid regular expression"):
        balora.BaLoRAConfig(target_modules="(0")
    with pytest.raises(FileExistsError, match="is a file"):
        balora.save(model, _touch(tmp_path / "adapter"))
    assert (tmp_path / "adapter").read_text() == "a user's file\n"
