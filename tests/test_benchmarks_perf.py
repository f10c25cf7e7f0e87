"""Smoke tests of the performance benchmarks (benchmarks/perf_*.py) on tiny random models.

They check that each script runs end to end in quick mode and writes its tables; they assert
nothing about speed (timings are not unit-testable on a shared machine).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(autouse=True)
def _benchmarks_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    yield
    for name in [m for m in sys.modules if m.startswith("perf_")]:
        del sys.modules[name]


def _quick(tmp_path, *args):
    return ["--quick", "--repeats", "1", "--warmup", "0", "--output", str(tmp_path), *args]


def test_train_benchmark_writes_ratios(tmp_path):
    import perf_train

    perf_train.main(_quick(tmp_path, "--models", "tiny-bert", "--arms", "balora-layer-example"))
    data = json.loads((tmp_path / "train.json").read_text())
    rows = data["tables"]["train step"]
    assert [r["arm"] for r in rows] == ["peft-lora", "lora", "balora-layer-example (default)"]
    assert rows[1]["time_vs_lora"] == 1.0
    assert all(r["step_s"] > 0 for r in rows)
    assert "perf_train" in data["command"] or "pytest" in data["command"]
    assert (tmp_path / "train.md").read_text().startswith("# train")


def test_predict_benchmark_writes_ratios_and_checks_the_prefix_cache(tmp_path):
    import perf_predict

    perf_predict.main(_quick(tmp_path, "--models", "tiny-cnn", "--samples", "1", "3"))
    tables = json.loads((tmp_path / "predict.json").read_text())["tables"]
    rows = tables["S-sample prediction"]
    assert [r["S"] for r in rows] == [1, 3]
    assert all(r["vs_lora_repeated"] > 0 and r["vs_ensemble"] > 0 for r in rows)
    cache = tables["frozen-prefix cache"]
    assert all(r["max_abs_diff"] < 1e-5 for r in cache)  # cached == uncached predictions


def test_params_benchmark_counts_the_alpha_parameters(tmp_path):
    import perf_params

    perf_params.main(["--output", str(tmp_path), "--models", "tiny-lm"])
    row = json.loads((tmp_path / "params.json").read_text())["tables"]["parameters"][0]
    layers, r = row["adapted_layers"], 8
    assert row["lora_params"] == row["peft_lora_params"]
    assert row["extra_constant"] == layers  # one scalar per layer
    # layer α: d_in + 1 per layer; the tiny LM's projections read 32 or 64 features
    assert layers * 33 <= row["extra_layer"] <= layers * 65
    assert row["ensemble_params"] == 5 * row["lora_params"]
    assert row["lora_params"] % r == 0


@pytest.mark.slow  # fits Laplace on the offline MiniLM (about a minute on 2 cores)
def test_laplace_benchmark_draws_the_same_samples_both_ways(tmp_path):
    import perf_laplace

    perf_laplace.main(["--quick", "--repeats", "1", "--examples", "16", "--output", str(tmp_path)])
    row = json.loads((tmp_path / "laplace.json").read_text())["tables"]["S-grid evaluation"][0]
    assert row["max_abs_diff"] == 0  # kept moments: the same draws as recomputed ones
    assert row["kept_s"] > 0
    assert row["recomputed_s"] > 0
