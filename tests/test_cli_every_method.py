"""Every method the CLI offers, on every task, through ``balora train → evaluate → predict``
with tiny models; a combination that cannot work is refused at ``train`` with one line, before
any data or model is loaded."""

from __future__ import annotations

import json

import pytest

from balora.cli import main
from balora.methods import METHODS
from tests.conftest import MC_FIXTURES

REFUSED = {("laplace", "mof"): "Gaussian", ("lora_ts", "mof"): "classification"}
"""Combinations refused at train, with a word of the message."""


@pytest.fixture(scope="module")
def tasks(tmp_path_factory, model_dirs) -> dict[str, dict[str, list[str]]]:
    """Per task: the train options (data and a tiny backbone) and predict's inputs."""
    from tests.test_cli import _rows, tiny_bert_dir
    from tests.test_vision import make_folder, tiny_vit_dir

    root = tmp_path_factory.mktemp("every")
    csv = root / "reviews.csv"
    csv.write_text(
        "review,sentiment\n" + "".join(f"{r['review']},{r['sentiment']}\n" for r in _rows(40))
    )
    text = ["--model", str(tiny_bert_dir(root / "bert")), "--data", str(csv)]
    text += ["--text-column", "review", "--label-column", "sentiment", "--max-length", "16"]
    arc = MC_FIXTURES / "arc_easy.jsonl"
    mc = ["--model", model_dirs["llama"], "--dataset", "arc_easy", "--train-file", str(arc)]
    mc += ["--validation-file", str(arc), "--test-file", str(arc)]
    images = make_folder(root / "images", per_class=8, size=16)
    vision = ["--data", str(images), "--model", str(tiny_vit_dir(root / "vit"))]
    vision += ["--image-size", "16", "--ood", "none"]
    out = {
        "text": {"train": text, "predict": ["a warm funny film"]},
        "multiple-choice": {"train": mc, "predict": ["--file", str(arc)]},
        "vision": {"train": vision, "predict": [str(images / "cat")]},
    }
    try:
        from tests.test_cli_mof import write_labelled
    except pytest.skip.Exception:  # the MOF extra is not installed
        return out
    labels, cifs = write_labelled(root / "mof")
    mof = ["--backbone", "cgcnn", "--labels", str(labels), "--cif-dir", str(cifs)]
    mof += ["--cache-dir", str(root / "graphs"), "--val-fraction", "0.2", "--test-fraction", "0.2"]
    out["mof"] = {"train": mof, "predict": [str(cifs)]}
    return out


@pytest.mark.parametrize("task", ["text", "multiple-choice", "vision", "mof"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_train_evaluate_predict(tasks, task, method, tmp_path, capsys):
    if task not in tasks:
        pytest.skip(f"the {task} task's dependencies are not installed")
    run = tmp_path / "run"
    argv = ["train", "--task", task, "--method", method, "-o", str(run), *tasks[task]["train"]]
    argv += ["--epochs", "1", "--batch-size", "4", "--r", "2", "--no-progress"]
    code = main(argv)
    err = capsys.readouterr().err
    if (method, task) in REFUSED:
        assert code == 2
        assert REFUSED[method, task] in err
        assert len(err.strip().splitlines()) == 1
        assert not run.exists()  # refused before anything was loaded or written
        return
    assert code == 0, err
    record = json.loads((run / "run.json").read_text())
    assert (record["task"], record["method"]) == (task, method)
    assert main(["evaluate", str(run), "--num-samples", "2"]) == 0
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    stochastic = METHODS[method].stochastic
    assert set(metrics["by_samples"]) == ({"0", "2"} if stochastic else {"0"})
    capsys.readouterr()
    predict = ["predict", str(run), *tasks[task]["predict"], "--format", "jsonl"]
    assert main([*predict, "--num-samples", "2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows
    key = "gap_ev" if task == "mof" else "probability"
    assert all(isinstance(r[key], float) for r in rows)
