"""The training protocol options: which checkpoint is kept, what happens to a new head, the
deterministic warm-up, periodic validation, and the noise diagnostics recorded on the way."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from balora import BaLoRAConfig, noise_diagnostics
from balora.dataset import Data
from balora.inject import get_adapter
from balora.layers import BaLoRALayer
from balora.methods import Resume, TrainConfig, make_method
from tests.conftest import MLP

ADAPTER = BaLoRAConfig(r=2, target_modules=["fc1", "fc2"], modules_to_save=["head"])


def _data(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return Data(x, (x[:, 0] + x[:, 1] > 0).long())


def _pretrained() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        return MLP(d_out=2)


def _fit(name="balora", **train):
    budget = TrainConfig(**{"epochs": 4, "batch_size": 8, "lr": 2e-2, "progress": False, **train})
    method = make_method(name, _pretrained, adapter=ADAPTER, train=budget, seed=1)
    report = method.fit(_data(), _data(seed=1))
    return method, report


def _head(model) -> nn.Module:
    return model.head


def test_checkpoint_last_keeps_the_final_weights_and_best_the_best():
    last, last_report = _fit(checkpoint="last")
    best, best_report = _fit(checkpoint="best")
    assert last_report.best_step == last_report.steps
    val_nlls = [r["val_nll"] for r in best_report.history]
    assert best_report.best_epoch == val_nlls.index(min(val_nlls))
    x = _data(seed=2).inputs
    same_until_restore = torch.equal(last.model(x), best.model(x))
    assert same_until_restore == (best_report.best_epoch == len(val_nlls) - 1)


def test_eval_every_validates_on_steps_and_at_the_end():
    _, report = _fit(eval_every=5)  # 6 steps per epoch, 24 in all
    assert [r["step"] for r in report.history] == [5, 10, 15, 20, 24]
    assert all("val_nll" in r and "noise" in r for r in report.history)


def test_head_new_trains_it_adapted_freezes_and_adapts_it():
    new, _ = _fit(head="new")
    assert not isinstance(new.model.head, BaLoRALayer)
    assert new.model.head.weight.requires_grad
    adapted, _ = _fit(head="adapted")
    head = adapted.model.head
    assert isinstance(head, BaLoRALayer)
    assert not head.base_layer.weight.requires_grad
    assert head.lora_B.requires_grad
    assert get_adapter(adapted.model).modules_to_save == []
    # the frozen head is the model factory's initialisation, untouched by training
    torch.manual_seed(1)
    fresh = _pretrained()
    torch.testing.assert_close(head.base_layer.weight, fresh.head.weight, rtol=0, atol=0)


def test_head_probe_fits_the_head_first_then_freezes_it():
    probe, report = _fit(head="probe", probe_steps=12)
    head = probe.model.head
    assert not isinstance(head, BaLoRALayer)
    assert not head.weight.requires_grad
    fresh = _pretrained()
    assert not torch.equal(head.weight, fresh.head.weight)  # the probe moved it
    assert report.steps == 24  # the adapters' own budget


@pytest.mark.parametrize("mode", ["adapted", "probe"])
@pytest.mark.parametrize("name", ["balora", "ensemble", "laplace"])
def test_head_modes_round_trip(mode, name, tmp_path):
    budget = TrainConfig(epochs=2, batch_size=8, progress=False, head=mode, probe_steps=5)
    options = {"members": 2} if name == "ensemble" else {}

    def build():
        return make_method(name, _pretrained, adapter=ADAPTER, train=budget, seed=3, **options)

    method = build()
    method.fit(_data(), _data(seed=1))
    method.save(tmp_path)
    torch.manual_seed(12345)  # another global RNG state must not change the loaded head
    loaded = build().load(tmp_path)
    x = _data(seed=2).inputs
    for s in (0, 3):
        torch.testing.assert_close(
            method.predict(x, s, seed=0).mean, loaded.predict(x, s, seed=0).mean, rtol=0, atol=0
        )


def test_noise_warmup_trains_deterministically_first():
    _, report = _fit(noise_warmup=0.5, eval_every=1, max_steps=8, epochs=2)
    kls = [r["train_kl"] for r in report.history]
    assert kls[:4] == [0.0] * 4  # the first half: no noise, no KL
    assert all(kl > 0 for kl in kls[4:])
    quiet, _ = _fit(noise_warmup=0.5, max_steps=4, epochs=1)
    state = get_adapter(quiet.model).state
    assert state.deterministic is False  # switched back after training
    quiet.model.train()
    x = _data(seed=2).inputs
    state.deterministic = True
    torch.testing.assert_close(quiet.model(x), quiet.model(x), rtol=0, atol=0)
    state.deterministic = False
    assert not torch.equal(quiet.model(x), quiet.model(x))  # train mode samples again


def test_diagnostics_do_not_change_training():
    with_diag, report = _fit(diagnostics=16)
    without, plain = _fit(diagnostics=0)
    assert "noise" in report.history[0]
    assert "noise" not in plain.history[0]
    x = _data(seed=2).inputs
    torch.testing.assert_close(with_diag.model(x), without.model(x), rtol=0, atol=0)


def test_bad_protocol_options_name_the_field():
    with pytest.raises(ValueError, match="checkpoint must be one of"):
        TrainConfig(checkpoint="final")
    with pytest.raises(ValueError, match="head must be one of"):
        TrainConfig(head="frozen")
    with pytest.raises(ValueError, match="noise_warmup"):
        TrainConfig(noise_warmup=1.0)
    with pytest.raises(ValueError, match="eval_every"):
        TrainConfig(eval_every=0)
    method = make_method(
        "balora",
        lambda: nn.Sequential(nn.Linear(2, 2)),
        train=TrainConfig(head="adapted", progress=False),
        adapter=BaLoRAConfig(target_modules=["0"], modules_to_save=["missing"]),
    )
    with pytest.raises(ValueError, match="holds no layer"):
        method.fit(_data())


def test_noise_diagnostics_match_a_monte_carlo_estimate():
    torch.manual_seed(0)
    model = MLP(d_out=3).double()
    from balora import apply

    config = BaLoRAConfig(r=3, target_modules=["fc1", "fc2"], prior_p=0.4, noise="example")
    apply(model, config)
    with torch.no_grad():
        for layer in get_adapter(model).layers.values():
            layer.lora_B.normal_(0, 0.5)
    x = torch.randn(5, 6, dtype=torch.float64)
    diag = noise_diagnostics(model, x, torch.tensor([0, 1, 2, 0, 1]), num_samples=4, seed=0)
    layer = get_adapter(model).layers["fc1"]
    # Monte Carlo: Ω = A + sqrt(α) |A| ⊙ E, noise = s B (Ω − A) x
    update, var, alpha = layer.noise_moments(x)
    draws = []
    g = torch.Generator().manual_seed(1)
    for _ in range(4000):
        e = torch.randn(layer.lora_A.shape, generator=g, dtype=torch.float64)
        omega = alpha[0, 0].sqrt() * layer.lora_A.abs() * e
        draws.append(layer.scaling * (x[:1] @ omega.T) @ layer.lora_B.T)
    empirical = torch.stack(draws).var(0, correction=0)
    torch.testing.assert_close(empirical, var[:1], rtol=0.08, atol=1e-12)
    fc1 = next(ln for ln in diag.layers if ln.name == "fc1")
    assert fc1.noise_std == pytest.approx(float(var.sum(-1).sqrt().mean()), rel=1e-9)
    assert fc1.update_norm == pytest.approx(float(update.norm(dim=-1).mean()), rel=1e-9)
    assert diag.output_std > 0
    assert diag.nll_gap == pytest.approx(diag.nll_mean - diag.nll_sampled)


def _crash_at_step(monkeypatch, n: int) -> None:
    """Make the n-th optimiser step of any training raise KeyboardInterrupt (an interrupted
    process); `monkeypatch.undo()` restores the loop."""
    from balora.methods import training

    original = training._Loop.optimise
    calls = {"n": 0}

    def crash(self, batch):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(training._Loop, "optimise", crash)


@pytest.mark.parametrize("name", ["balora", "mc_dropout", "ensemble"])
def test_an_interrupted_training_resumes_to_the_same_weights(name, tmp_path, monkeypatch):
    budget = {"epochs": 3, "batch_size": 8, "lr": 2e-2, "progress": False, "eval_every": 5}
    options = {"members": 2} if name == "ensemble" else {}

    def build():
        cfg = TrainConfig(**budget)
        return make_method(name, _pretrained, adapter=ADAPTER, train=cfg, seed=1, **options)

    whole = build()
    whole_report = whole.fit(_data(), _data(seed=1))
    state = Resume(tmp_path / "state.pt", every=4)
    _crash_at_step(monkeypatch, 10)
    with pytest.raises(KeyboardInterrupt):
        build().fit(_data(), _data(seed=1), resume=state)
    monkeypatch.undo()
    assert list(tmp_path.iterdir())  # a state was left behind
    resumed = build()
    report = resumed.fit(_data(), _data(seed=1), resume=state)
    x = _data(seed=2).inputs
    torch.testing.assert_close(resumed.model(x), whole.model(x), rtol=0, atol=0)
    assert [r["val_nll"] for r in report.history] == [r["val_nll"] for r in whole_report.history]
    assert not list(tmp_path.iterdir())  # removed once training has finished


def test_a_foreign_training_state_is_refused(tmp_path):
    state = tmp_path / "state.pt"
    state.write_bytes(b"not a state")
    method = make_method("lora", _pretrained, adapter=ADAPTER, train=TrainConfig(progress=False))
    with pytest.raises(ValueError, match="cannot resume"):
        method.fit(_data(), resume=Resume(state, every=2))
    with pytest.raises(ValueError, match="every must be a positive integer"):
        Resume(state, every=0)


def test_a_state_of_other_options_is_discarded_not_resumed(tmp_path, monkeypatch):
    budget = TrainConfig(epochs=2, batch_size=8, progress=False)
    state = tmp_path / "state.pt"
    _crash_at_step(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        make_method("lora", _pretrained, adapter=ADAPTER, train=budget).fit(
            _data(), resume=Resume(state, every=2, key="lr=1e-3")
        )
    monkeypatch.undo()
    fresh = make_method("lora", _pretrained, adapter=ADAPTER, train=budget)
    with pytest.warns(UserWarning, match="another configuration"):
        report = fresh.fit(_data(), resume=Resume(state, every=2, key="lr=5e-5"))
    assert report.earlier_seconds == 0.0  # started afresh
    plain = make_method("lora", _pretrained, adapter=ADAPTER, train=budget)
    plain.fit(_data())
    x = _data(seed=2).inputs
    torch.testing.assert_close(fresh.model(x), plain.model(x), rtol=0, atol=0)


def test_the_best_checkpoint_is_never_from_the_warm_up():
    _, report = _fit(noise_warmup=0.5, eval_every=2, max_steps=12, epochs=2, checkpoint="best")
    assert report.best_step > 6
