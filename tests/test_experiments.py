"""The comparison runner end to end on tiny synthetic tasks: artifacts, ranges, a known answer,
resume and stale-config detection; plus the pure pieces (evaluation, results files, labels)."""

from __future__ import annotations

import functools
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import balora
from balora.dataset import Data
from balora.experiments import (
    AlphaSummary,
    MethodRun,
    MethodSpec,
    Results,
    StaleResultsError,
    compare,
    plot_results,
)
from balora.experiments import runner as runner_module
from balora.experiments.evaluate import classification_evaluation, regression_evaluation
from balora.experiments.fingerprint import hash_of
from balora.experiments.measure import PeakMemoryMeter
from balora.experiments.specs import resolve_methods
from balora.io import finite_or_none, write_json
from balora.methods import METHODS, TrainConfig
from balora.methods import training as training_module
from balora.predict import Prediction
from tests.conftest import MLP

D_IN = 6
SEEDS = (0, 1)
NUM_SAMPLES = (1, 2, 4)
ADAPTER = balora.BaLoRAConfig(
    r=2, lora_alpha=4, target_modules=["fc1", "fc2"], modules_to_save=["head"]
)
BUDGET = TrainConfig(epochs=8, batch_size=48, lr=1e-2, progress=False)
PLOTS = (
    "reliability.png",
    "uncertainty_vs_error.png",
    "metrics_vs_samples.png",
    "alpha.png",
    "training.png",
)
# every registered method; the ensemble kept small
METHOD_LIST = [("ensemble", {"members": 2}) if name == "ensemble" else name for name in METHODS]


def blobs(n: int, g: torch.Generator) -> Data:
    """Three overlapping blobs in dims 0-1 (Bayes accuracy about 0.9); dims 2-5 near 0."""
    y = torch.randint(0, 3, (n,), generator=g)
    angle = 2 * torch.pi * y.float() / 3
    x = 0.05 * torch.randn(n, D_IN, generator=g)
    x[:, :2] = 2.0 * torch.stack([angle.cos(), angle.sin()], 1) + torch.randn(n, 2, generator=g)
    return Data(x, y)


def far_away(n: int, g: torch.Generator) -> Data:
    """OOD: values of scale 3 in the 4 dimensions the training data never used (about 60 times
    their training spread). Much farther (scale 12 and more) the ReLU network saturates, every
    sample agrees on a confident class and the epistemic part no longer separates OOD inputs."""
    x = 0.05 * torch.randn(n, D_IN, generator=g)
    x[:, 2:] = 3.0 * torch.randn(n, D_IN - 2, generator=g)
    return Data(x, torch.zeros(n, dtype=torch.long))


@functools.cache
def splits() -> dict[str, Data]:
    g = torch.Generator().manual_seed(0)
    return {
        "train": blobs(240, g),
        "val": blobs(80, g),
        "test": blobs(200, g),
        "ood": far_away(200, g),
    }


def run_compare(out: Path, **changes) -> Results:
    s = splits()
    kwargs = dict(
        adapter=ADAPTER,
        train_config=BUDGET,
        seeds=SEEDS,
        num_samples=NUM_SAMPLES,
        ood=s["ood"],
        output_dir=out,
        progress=False,
        name="blobs",
    )
    kwargs.update(changes)
    methods = kwargs.pop("methods", METHOD_LIST)
    return compare(MLP, s["train"], s["val"], s["test"], methods, **kwargs)


@pytest.fixture(scope="module")
def done(tmp_path_factory) -> Results:
    """One comparison of every registered method, shared by the checks below."""
    return run_compare(tmp_path_factory.mktemp("compare") / "out")


def no_nan(text: str) -> dict:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in JSON")

    return json.loads(text, parse_constant=refuse)


# ── the full comparison ────────────────────────────────────────────────────────────────────


def test_artifacts_exist_and_are_well_formed(done):
    out = done.output_dir
    data = no_nan((out / "results.json").read_text())
    assert set(data) >= {
        "schema_version", "name", "task", "balora_version", "fingerprint", "config",
        "methods", "seeds", "num_samples", "runs", "notes",
    }  # fmt: skip
    assert data["balora_version"] == balora.__version__
    assert data["config"]["train"]["epochs"] == BUDGET.epochs
    assert data["config"]["data"]["test"]["n"] == 200
    assert data["num_samples"] == list(NUM_SAMPLES)
    assert len(data["runs"]) == len(METHODS) * len(SEEDS)
    for run in data["runs"]:
        assert set(run) >= {
            "method", "seed", "train_seconds", "trainable_parameters", "peak_memory",
            "history", "evaluations", "alpha", "fingerprint",
        }  # fmt: skip
        assert run["train_seconds"] > 0
        assert run["trainable_parameters"] > 0
        assert run["peak_memory"]["kind"] == "cpu_peak_rss_increase"
        env = run["environment"]
        assert env["torch"] == torch.__version__
        assert env["device"] == "cpu"
        assert env["threads"] == torch.get_num_threads()
        assert env["cpu"]
        for ev in run["evaluations"]:
            assert ev["predict_seconds"] > 0
            for key, value in ev["metrics"].items():
                assert value is not None or key in ev["undefined"]
        assert (out / run["arrays"]).is_file()
        assert (out / "runs" / f"{run['method']}__seed{run['seed']}.json").is_file()
    md = (out / "results.md").read_text()
    for method in METHODS:
        assert f"| {method} |" in md
    assert "AUROC OOD (epistemic)" in md
    assert "## Environments" not in md  # every run computed here
    for name in PLOTS:
        png = (out / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n", name
        assert len(png) > 5_000, name
    assert not list(out.glob(".*.tmp*"))  # no temporary file left behind


def test_evaluation_plan(done):
    for run in done.runs:
        plan = [ev.num_samples for ev in run.evaluations]
        if run.stochastic:
            assert plan == [0, *NUM_SAMPLES]
            # one sample has no mutual information; the posterior mean has none either
            assert run.at(0).metrics["mean_epistemic"] == 0.0
            assert run.at(1).metrics["mean_epistemic"] == pytest.approx(0.0, abs=1e-6)
        else:
            assert plan == [None]  # one evaluation, valid for every S
            assert run.at(1) is run.at(4)
    assert not METHODS["lora"].stochastic
    assert METHODS["balora"].stochastic


def test_metrics_in_valid_ranges(done):
    for run in done.runs:
        for ev in run.evaluations:
            m = ev.metrics
            assert 0.0 <= m["accuracy"] <= 1.0
            assert 0.0 <= m["ece"] <= 1.0
            assert 0.0 <= m["brier"] <= 2.0
            assert m["nll"] >= 0.0
            for key in ("auroc_error", "aupr_error", "auroc_ood_total", "auroc_ood_epistemic"):
                assert m[key] is None or 0.0 <= m[key] <= 1.0
            assert m["mean_epistemic"] >= 0.0
            total = m["mean_aleatoric"] + m["mean_epistemic"]
            assert m["mean_total"] == pytest.approx(total, rel=1e-5, abs=1e-7)
        # overlapping blobs: every method learns them (its point estimate), none is perfect
        point = run.at(0) if run.stochastic else run.at(4)
        assert 0.8 < point.metrics["accuracy"] < 1.0
        assert run.at(4).metrics["accuracy"] > 0.7


def test_known_answer_ood_far_away(done):
    """Inputs far from the training data: every method with an epistemic part ranks them above
    the test inputs (AUROC above chance, larger mean mutual information; well above chance on
    average over the methods), while the point estimates, which have none, are exactly
    uninformative (0.5)."""
    aurocs = {}
    for method in done.methods:
        auroc = done.summary(method, "auroc_ood_epistemic", 4).mean
        if method in ("lora", "lora_ts", "full_ft"):
            assert auroc == 0.5
            continue
        aurocs[method] = auroc
        ood = done.summary(method, "mean_epistemic_ood", 4).mean
        assert ood > done.summary(method, "mean_epistemic", 4).mean, method
    assert min(aurocs.values()) > 0.5, aurocs
    assert np.mean(list(aurocs.values())) > 0.65, aurocs


def test_history_and_alpha(done):
    for run in done.runs:
        assert run.history
        assert {"train_nll", "train_kl", "val_nll"} <= set(run.history[0])
        kl = [h["train_kl"] for h in run.history]
        if run.name in ("balora", "balora_constant"):
            assert min(kl) > 0
            assert set(run.alpha) == {"fc1", "fc2"}
            assert run.prior_alpha == pytest.approx(ADAPTER.prior_alpha)
            for a in run.alpha.values():
                q = [a.min, a.q05, a.q25, a.q50, a.q75, a.q95, a.max]
                assert q == sorted(q)
                assert a.min > 0
                assert a.count == 200
                if run.name == "balora_constant":
                    assert a.spread <= 1e-6 * a.q50  # not input-dependent (up to rounding)
                else:
                    assert a.spread > 0.0  # input-adaptive
        elif run.name in ("lora", "full_ft", "ensemble"):
            assert run.alpha is None
            assert max(kl) == 0.0


def test_results_reload_and_plots_regenerate(done, tmp_path):
    loaded = Results.load(done.output_dir)
    assert loaded.to_dict() == json.loads(json.dumps(done.to_dict()))
    s = loaded.summary("balora", "accuracy")
    assert s.defined == len(SEEDS)
    assert s.std is not None
    drawn = plot_results(loaded, tmp_path)
    assert {p.name for p in drawn.values()} == set(PLOTS)


# ── resume ─────────────────────────────────────────────────────────────────────────────────


def counting(monkeypatch) -> list[tuple[str, int]]:
    calls: list[tuple[str, int]] = []
    original = runner_module._run_one

    def run_one(ctx, spec, seed):
        calls.append((spec.label, seed))
        return original(ctx, spec, seed)

    monkeypatch.setattr(runner_module, "_run_one", run_one)
    return calls


def counting_steps(monkeypatch) -> list[int]:
    """One entry per optimisation step taken by any training loop."""
    steps: list[int] = []
    original = training_module._Loop.optimise
    monkeypatch.setattr(
        training_module._Loop, "optimise", lambda loop, b: steps.append(1) or original(loop, b)
    )
    return steps


def test_resume_skips_finished_runs(done, tmp_path, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(done.output_dir, out)
    (out / "runs" / "balora__seed1.json").unlink()  # as if interrupted there
    calls = counting(monkeypatch)
    again = run_compare(out, methods=["lora", "balora"], seeds=(0, 1, 2), plots=False)
    assert calls == [("lora", 2), ("balora", 1), ("balora", 2)]
    assert [(r.method, r.seed) for r in again.runs] == [
        ("lora", 0), ("lora", 1), ("lora", 2), ("balora", 0), ("balora", 1), ("balora", 2)
    ]  # fmt: skip
    assert again.run("lora", 0).to_dict() == done.run("lora", 0).to_dict()
    assert len(Results.load(out).runs) == 6


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"train_config": TrainConfig(epochs=7, batch_size=48, lr=1e-2)}, "train.epochs"),
        ({"adapter": ADAPTER.replace(r=3)}, "adapter.r"),
        ({"num_samples": (1, 2)}, "num_samples"),
        ({"ood": None}, "data.ood"),
    ],
)
def test_changed_config_is_refused(done, tmp_path, monkeypatch, changes, expected):
    out = tmp_path / "out"
    shutil.copytree(done.output_dir, out)
    calls = counting(monkeypatch)
    with pytest.raises(StaleResultsError, match=expected):
        run_compare(out, methods=["lora"], **changes)
    assert calls == []


def test_changed_data_and_method_options_are_refused(done, tmp_path, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(done.output_dir, out)
    calls = counting(monkeypatch)
    s = splits()
    with pytest.raises(StaleResultsError, match=r"data\.test"):
        compare(
            MLP, s["train"], s["val"], s["test"].select(slice(0, 150)), ["lora"],
            adapter=ADAPTER, train_config=BUDGET, seeds=SEEDS, num_samples=NUM_SAMPLES,
            ood=s["ood"], output_dir=out, progress=False,
        )  # fmt: skip
    with pytest.raises(StaleResultsError, match="ensemble"):
        run_compare(out, methods=[("ensemble", {"members": 3})], plots=False)
    assert calls == []


def test_a_new_code_revision_retrains_and_revision_one_keeps_old_fingerprints(
    done, tmp_path, monkeypatch
):
    # revision 1 adds nothing: the fingerprint of a run written before revisions existed
    run = done.run("balora", 0)
    assert run.revision == 1
    assert run.fingerprint == hash_of([done.fingerprint, "balora", run.options, 0])
    out = tmp_path / "out"
    shutil.copytree(done.output_dir, out)
    calls = counting(monkeypatch)
    monkeypatch.setattr(METHODS["balora"], "revision", 2)
    stale = r"revision 1 of balora's code \(this is revision 2\)"
    with pytest.raises(StaleResultsError, match=stale):
        run_compare(out, methods=["balora"], seeds=(0,), plots=False)
    assert calls == []
    again = run_compare(out, methods=["lora"], seeds=(0,), plots=False)  # lora is unchanged
    assert calls == []
    assert again.run("lora", 0).to_dict() == done.run("lora", 0).to_dict()
    fresh = run_compare(tmp_path / "fresh", methods=["balora"], seeds=(0,), plots=False)
    assert calls == [("balora", 0)]
    assert fresh.fingerprint == done.fingerprint  # same configuration, new run fingerprint
    stored = Results.load(tmp_path / "fresh").run("balora", 0)
    assert stored.revision == 2
    assert stored.fingerprint != run.fingerprint


def test_resume_false_starts_again(done, tmp_path, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(done.output_dir, out)
    calls = counting(monkeypatch)
    changed = TrainConfig(epochs=2, batch_size=48, lr=1e-2)
    with pytest.warns(UserWarning, match="deleted"):
        res = run_compare(out, methods=["lora"], seeds=(0,), train_config=changed, resume=False)
    assert calls == [("lora", 0)]
    assert [p.name for p in (out / "runs").iterdir()] == ["lora__seed0.json"]
    assert Results.load(out).config["train"]["epochs"] == 2 == len(res.run("lora", 0).history)


@pytest.mark.parametrize(
    ("order", "save_every"), [(["lora", "lora_ts"], None), (["lora_ts", "lora"], 3)]
)
def test_lora_ts_shares_the_lora_training(tmp_path, monkeypatch, order, save_every):
    """lora_ts is LoRA's training plus a temperature: in one comparison with lora, one training
    serves both (whichever runs first), with exactly the result lora_ts gets on its own."""
    steps = counting_steps(monkeypatch)
    kwargs = dict(seeds=(0,), ood=None, plots=False, save_every=save_every)
    shared = run_compare(tmp_path / "shared", methods=order, **kwargs)
    shared_steps = len(steps)
    alone = run_compare(tmp_path / "alone", methods=["lora_ts"], **kwargs)
    assert shared_steps == len(steps) - shared_steps == shared.run("lora", 0).steps  # once
    a, b = shared.run("lora_ts", 0), alone.run("lora_ts", 0)
    assert a.history == b.history  # the temperature included
    assert a.evaluations[0].metrics == b.evaluations[0].metrics
    lora = shared.run("lora", 0).evaluations[0].metrics
    assert lora["accuracy"] == shared.run("lora_ts", 0).evaluations[0].metrics["accuracy"]
    assert not list((tmp_path / "shared" / "states").glob("*"))  # the shared state is removed


@pytest.mark.parametrize("method", ["balora", ("ensemble", {"members": 2})])
def test_a_comparison_stopped_while_evaluating_does_not_train_again(tmp_path, monkeypatch, method):
    """With save_every, the finished training state stays until the run is written."""
    steps = counting_steps(monkeypatch)

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    kwargs = dict(methods=[method], seeds=(0,), plots=False, save_every=4)
    with monkeypatch.context() as m:
        m.setattr(runner_module, "predict_batched", stop)
        with pytest.raises(KeyboardInterrupt):
            run_compare(tmp_path, **kwargs)
    trained = len(steps)
    assert trained > 0
    assert list((tmp_path / "states").glob("*.pt"))
    res = run_compare(tmp_path, **kwargs)
    assert len(steps) == trained  # the second call only evaluated
    assert res.runs[0].steps == trained  # an ensemble reports its members' steps together
    assert not list((tmp_path / "states").glob("*"))


def test_a_diverged_run_is_recorded_and_the_others_go_on(tmp_path, monkeypatch):
    out = tmp_path / "out"
    calls = counting(monkeypatch)
    original = runner_module._run_one

    def run_one(ctx, spec, seed):
        if (spec.label, seed) == ("balora", 0):
            raise FloatingPointError("balora: the training loss became nan at step 3")
        return original(ctx, spec, seed)

    monkeypatch.setattr(runner_module, "_run_one", run_one)
    with pytest.warns(UserWarning, match="balora \\(seed 0\\) failed: .*nan at step 3"):
        res = run_compare(out, methods=["balora", "lora"], seeds=(0, 1), plots=False)
    assert [(r.method, r.seed) for r in res.runs] == [("balora", 1), ("lora", 0), ("lora", 1)]
    assert [(f.method, f.seed) for f in res.failed] == [("balora", 0)]
    assert Results.load(out).failed == res.failed
    assert "## Failed runs" in (out / "results.md").read_text()
    assert res.summary("balora", "accuracy").seeds == 1  # the other seed's
    # a resumed comparison reports the failure again and does not retry it
    calls.clear()
    with pytest.warns(UserWarning, match="not retried"):
        again = run_compare(out, methods=["balora", "lora"], seeds=(0, 1), plots=False)
    assert calls == []
    assert again.failed == res.failed
    # deleting the record retries the run
    (out / "failed" / "balora__seed0.json").unlink()
    monkeypatch.setattr(runner_module, "_run_one", original)
    calls = counting(monkeypatch)
    third = run_compare(out, methods=["balora", "lora"], seeds=(0, 1), plots=False)
    assert calls == [("balora", 0)]
    assert third.failed == []


# ── regression ─────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("gaussian", [True, False])
def test_regression_end_to_end(tmp_path, gaussian, monkeypatch):
    g = torch.Generator().manual_seed(0)

    def data(n: int, lo: float = -2.0, hi: float = 2.0) -> Data:
        x = lo + (hi - lo) * torch.rand(n, 2, generator=g)
        y = torch.sin(2 * x[:, 0]) + 0.3 * x[:, 1] + 0.1 * torch.randn(n, generator=g)
        return Data(x, y)

    methods = ["lora", "balora", ("ensemble", {"members": 2})]
    if not gaussian and "laplace" in METHODS:  # laplace-torch: homoscedastic likelihood only
        methods.append("laplace")
    res = compare(
        functools.partial(MLP, d_in=2, hidden=16, d_out=2 if gaussian else 1),
        data(160),
        data(60),
        data(100),
        methods,
        task="regression",
        gaussian=gaussian,
        adapter=ADAPTER,
        train_config=TrainConfig(epochs=4, batch_size=32, lr=5e-3, progress=False),
        num_samples=(1, 4),
        ood=data(60, 6.0, 9.0),
        output_dir=tmp_path,
        progress=False,
    )
    no_nan((tmp_path / "results.json").read_text())
    names = ("reliability.png", "uncertainty_vs_error.png", "metrics_vs_samples.png")
    for name in (*names, "epistemic_vs_error.png"):
        assert (tmp_path / name).stat().st_size > 5_000
    assert r"Spearman(std, \|err\|)" in (tmp_path / "results.md").read_text()
    for run in res.runs:
        m = run.at(4).metrics
        assert m["mae"] <= m["rmse"]
        assert m["nll"] is not None
        assert 0.0 <= m["coverage_68"] <= m["coverage_95"] <= 1.0
        assert 0.0 <= m["miscalibration_area"] <= 0.5
        # a noise variance is fitted only for methods without a noise model of their own
        has_noise_model = gaussian or run.name == "laplace"
        assert (m["noise_variance"] > 0.0) != has_noise_model
        assert (m["mean_aleatoric"] > 0.0) == has_noise_model
    # the point estimate has no epistemic spread: its correlation is undefined, not NaN
    lora = res.run("lora", 0).at(4)
    assert lora.metrics["spearman_epistemic_abs_error"] is None
    assert "spearman_epistemic_abs_error" in lora.undefined
    assert res.run("balora", 0).at(4).metrics["spearman_epistemic_abs_error"] is not None
    # the MOF study's summary script reads the same numbers back
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from mof_summary import summarize

    text = summarize([tmp_path], at=4)
    mae = res.summary("balora", "mae", 4).format(3)
    assert f"| balora | 1 | `{tmp_path.name}` | {mae} |" in text
    assert "## balora against S" in text
    assert "## ensemble against S" not in text


# ── the pieces ─────────────────────────────────────────────────────────────────────────────


def test_undefined_metrics_become_null_with_a_reason(tmp_path):
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    pred = Prediction(
        "classification", probs, torch.tensor([0.3, 0.5]), torch.tensor([0.3, 0.5]),
        torch.zeros(2), 4,
    )  # fmt: skip
    metrics, undefined = classification_evaluation(pred, torch.tensor([0, 1]))
    assert metrics["accuracy"] == 1.0
    assert metrics["auroc_error"] is None
    assert "no errors" in undefined["auroc_error"]
    path = write_json(tmp_path / "m.json", {"m": metrics, "x": [math.nan, math.inf, 1.0]})
    data = no_nan(path.read_text())
    assert data["m"]["auroc_error"] is None
    assert data["x"] == [None, None, 1.0]
    assert finite_or_none(np.float32("nan")) is None


def test_regression_evaluation_uses_the_noise_variance():
    mean = torch.zeros(4)
    pred = Prediction("regression", mean, torch.zeros(4), torch.zeros(4), torch.zeros(4), 0)
    target = torch.tensor([1.0, -1.0, 1.0, -1.0])
    metrics, _ = regression_evaluation(pred, target, noise_variance=1.0)
    assert metrics["nll"] == pytest.approx(0.5 * math.log(2 * math.pi) + 0.5)
    assert metrics["coverage_95"] == 1.0
    assert metrics["coverage_68"] == 0.0


def test_method_labels():
    specs = resolve_methods(["lora", ("ensemble", {"members": 2}), ("ensemble", {"members": 3})])
    assert [s.label for s in specs] == ["lora", "ensemble[members=2]", "ensemble[members=3]"]
    with pytest.raises(ValueError, match="unique labels"):
        resolve_methods(["lora", "lora"])
    with pytest.raises(ValueError, match="unknown method"):
        resolve_methods(["nope"])
    with pytest.raises(TypeError, match="JSON-serialisable"):
        MethodSpec("lora", {"f": object()})
    spec = MethodSpec("balora", {"adapter": {"kl_reduction": "layer"}}, label="balora-layer")
    assert spec.adapter_for(ADAPTER).kl_reduction == "layer"
    assert spec.constructor_options() == {}


def test_runs_from_another_environment_are_listed(done):
    """A folder whose runs come from two machines (or from files written before the
    environment was recorded) says which run was computed where."""
    runs = [replace(r, environment=None) if r.seed == 1 else r for r in done.runs]
    md = replace(done, runs=runs).markdown()
    section = md.split("## Environments", 1)[1]
    here = next(r for r in done.runs if r.seed == 0).environment
    assert f"torch {here['torch']}" in section
    assert "| not recorded | " + ", ".join(f"{m}/1" for m in done.methods) + " |" in section
    reloaded = MethodRun.from_dict(
        {k: v for k, v in runs[0].to_dict().items() if k != "environment"}
    )
    assert reloaded.environment is None  # results.json written before the field existed


def test_alpha_summary_and_memory_meter():
    a = AlphaSummary.of(np.arange(101.0))
    assert (a.min, a.q05, a.q50, a.q95, a.max, a.spread) == (0, 5, 50, 95, 100, 100)
    meter = PeakMemoryMeter(torch.device("cpu"))
    meter.start()
    # 64 MiB, touched: above glibc's largest mmap threshold (32 MiB), so it is fresh memory
    # from the OS whatever earlier tests freed
    block = torch.ones(64 * 2**20 // 4)
    peak = meter.stop()
    del block
    assert peak is None or peak >= 32 * 2**20


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda(tmp_path):
    s = {k: Data(d.inputs.cuda(), d.targets.cuda()) for k, d in splits().items()}
    res = compare(
        lambda: MLP().cuda(),
        s["train"],
        s["val"],
        s["test"],
        ["lora", "balora"],
        adapter=ADAPTER,
        train_config=BUDGET,
        num_samples=(1, 4),
        ood=s["ood"],
        output_dir=tmp_path,
        progress=False,
    )
    for run in res.runs:
        assert run.peak_memory.kind == "cuda_max_memory_allocated"
        assert run.peak_memory.train_bytes > 0
        assert run.peak_memory.predict_bytes > 0
    assert res.config["device"] == "cuda"
    assert res.run("balora", 0).environment["gpu"] == torch.cuda.get_device_name()
    assert res.run("balora", 0).alpha is not None


def test_bad_method_options_fail_before_training(tmp_path, monkeypatch):
    calls = counting(monkeypatch)
    s = splits()
    with pytest.raises(TypeError, match="members_typo"):
        compare(
            MLP, s["train"], s["val"], s["test"], ["lora", ("ensemble", {"members_typo": 2})],
            adapter=ADAPTER, train_config=BUDGET, output_dir=tmp_path, progress=False,
        )  # fmt: skip
    assert calls == []
    assert not (tmp_path / "runs").exists()
