"""Every method of the comparison on tiny synthetic tasks, and the BLoB and Laplace baselines.

Each method in `METHODS` trains and predicts on a classification task, a regression task and a
regression task with a Gaussian (mean, log-variance) head; it must beat a trivial predictor,
be reproducible with the same seed, give epistemic uncertainty exactly when it is stochastic,
and train only the parameters it is meant to. Fits are cached per (method, case) for the module.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

import balora
from balora.dataset import Data
from balora.methods import METHODS, Method, TrainConfig, make_method
from balora.methods.blob import BLoBLinear, apply_blob, gaussian_kl
from balora.methods.temperature import fit_temperature
from tests.conftest import MLP, Holder, tiny_bert

ALL = (
    "lora",
    "lora_ts",
    "mc_dropout",
    "ensemble",
    "blob",
    "balora",
    "balora_constant",
    "laplace",
    "full_ft",
)
DETERMINISTIC = {"lora", "lora_ts", "full_ft"}
CASES = ("classification", "regression", "gaussian")
N_TRAIN, N_VAL, N_TEST = 256, 64, 200
ADAPTER = balora.BaLoRAConfig(
    r=4, lora_alpha=8, target_modules=["fc1", "fc2"], modules_to_save=["head"]
)
TRAIN = TrainConfig(epochs=10, batch_size=32, lr=1e-2, progress=False)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tiny models: thread start-up and contention cost more than they save on 2 cores
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def factory(d_out: int):
    def make() -> MLP:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(123)
            return MLP(6, 16, d_out)

    return make


@functools.cache
def dataset(case: str) -> tuple[Data, Data, Data]:
    g = torch.Generator().manual_seed(0)
    n = N_TRAIN + N_VAL + N_TEST
    x = torch.randn(n, 6, generator=g)
    if case == "classification":
        y = (x @ torch.randn(6, 3, generator=g)).argmax(dim=1)
    else:
        y = 0.8 * x[:, 0] - 0.6 * x[:, 1] + 0.4 * torch.sin(2 * x[:, 2])
        y = y + 0.1 * torch.randn(n, generator=g)
        if case == "regression":
            y = y.unsqueeze(-1)  # (n, 1) like the model output
    parts = torch.split(torch.arange(n), [N_TRAIN, N_VAL, N_TEST])
    return tuple(Data(x[p], y[p]) for p in parts)


def build(name: str, case: str, seed: int = 0) -> Method:
    task = "classification" if case == "classification" else "regression"
    d_out = {"classification": 3, "regression": 1, "gaussian": 2}[case]
    options = {"members": 2} if name == "ensemble" else {}
    return make_method(
        name,
        factory(d_out),
        task,
        adapter=ADAPTER,
        train=TRAIN,
        gaussian=case == "gaussian",
        seed=seed,
        **options,
    )


@functools.cache
def fitted(name: str, case: str) -> Method:
    train, val, _ = dataset(case)
    method = build(name, case)
    method.fit(train, val)
    return method


def cases():
    return [
        pytest.param(name, case, id=f"{name}-{case}")
        for name in ALL
        for case in CASES
        if not (name == "laplace" and case == "gaussian")
        and not (name == "lora_ts" and case != "classification")
    ]


def test_registry_holds_every_method():
    assert set(METHODS) == set(ALL)
    for name, cls in METHODS.items():
        assert cls.name == name


def test_make_method_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown method 'bayes'") as info:
        make_method("bayes", factory(3))
    for name in ALL:
        assert repr(name) in str(info.value)


@pytest.mark.parametrize(("name", "case"), cases())
def test_trains_predicts_and_beats_a_trivial_predictor(name, case):
    method = fitted(name, case)
    train, _, test = dataset(case)
    pred = method.predict(test.inputs, num_samples=16, seed=0)
    assert isinstance(pred, balora.Prediction)
    b = N_TEST
    if case == "classification":
        assert pred.mean.shape == (b, 3)
        torch.testing.assert_close(pred.mean.sum(-1), torch.ones(b))
        accuracy = (pred.mean.argmax(-1) == test.targets).float().mean().item()
        majority = torch.bincount(test.targets).max().item() / b  # 0.38
        assert majority <= 0.4
        assert accuracy > 0.8, accuracy  # 0.85-0.95 over seeds 0-2
    else:
        assert pred.mean.shape == ((b, 1) if case == "regression" else (b,))
        mse = (pred.mean - test.targets).pow(2).mean().item()
        trivial = (train.targets.mean() - test.targets).pow(2).mean().item()
        assert mse < 0.3 * trivial, (mse, trivial)  # 0.07-0.11 over seeds 0-2
    for field in (pred.total, pred.aleatoric, pred.epistemic):
        assert field.shape == pred.mean.shape[: 1 if case == "classification" else None]
        assert torch.isfinite(field).all()
        assert (field >= 0).all()
    torch.testing.assert_close(pred.total, pred.aleatoric + pred.epistemic)
    if name in DETERMINISTIC:
        assert (pred.epistemic == 0).all()
    else:
        assert pred.epistemic.mean() > 0, name
    if case == "gaussian":
        assert (pred.aleatoric > 0).all()


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_fit_and_prediction(name):
    _, _, test = dataset("classification")
    first = fitted(name, "classification").predict(test.inputs, num_samples=8, seed=3)
    again = build(name, "classification")
    again.fit(*dataset("classification")[:2])
    torch.manual_seed(999)  # the global RNG must not matter for a seeded prediction
    second = again.predict(test.inputs, num_samples=8, seed=3)
    torch.testing.assert_close(second.mean, first.mean, rtol=0, atol=0)
    torch.testing.assert_close(second.epistemic, first.epistemic, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(set(ALL) - DETERMINISTIC - {"ensemble"}))
def test_sampling_methods_depend_on_the_prediction_seed(name):
    _, _, test = dataset("regression")
    method = fitted(name, "regression")
    a = method.predict(test.inputs, num_samples=8, seed=0)
    b = method.predict(test.inputs, num_samples=8, seed=1)
    assert not torch.equal(a.mean, b.mean)


def _changed(model: torch.nn.Module, reference: torch.nn.Module) -> dict[str, bool]:
    """Which of `reference`'s parameters differ in `model` (adapted names mapped back)."""
    params = {n.replace("base_layer.", ""): p for n, p in model.named_parameters()}
    return {n: not torch.equal(params[n], p) for n, p in reference.named_parameters()}


@pytest.mark.parametrize("name", ALL)
def test_only_the_intended_parameters_train(name):
    method = fitted(name, "classification")
    reference = factory(3)()
    models = [m.model for m in method.members] if name == "ensemble" else [method.model]
    for model in models:
        changed = _changed(model, reference)
        if name == "full_ft":
            assert all(changed.values()), changed
            continue
        # the base is frozen; the head (modules_to_save) and the adapters train
        assert changed == {n: n.startswith("head.") for n in changed}, changed
        for layer in (model.fc1, model.fc2):
            assert layer.lora_B.abs().sum() > 0
    if name == "blob":
        init = math.log(math.expm1(method.init_std))
        assert not torch.allclose(method.model.fc1.lora_A_rho, torch.full((4, 6), init))


def test_gradient_clipping_keeps_the_kl_from_throttling_the_adapters():
    # The KL's gradient reaches only the α parameters. Clipped in one norm with the adapters',
    # a large one scaled the adapters' gradient by 1e-5 to 1e-3 (SmolLM2) and slowed their
    # training; clipped per optimizer group, the adapters train the same whatever β is. α starts
    # away from α_p (a KL gradient from the first step) and barely moves (the same noise).
    train, _, _ = dataset("classification")
    adapter = dataclasses.replace(ADAPTER, alpha_init=0.5)
    weights = []
    for beta in (1.0, 1e6):
        budget = dataclasses.replace(TRAIN, epochs=2, kl_weight=beta, alpha_lr=1e-30)
        method = make_method("balora", factory(3), "classification", adapter=adapter,
                             train=budget, seed=0)  # fmt: skip
        method.fit(train)
        named = method.model.named_parameters()
        weights.append({n: p.detach().clone() for n, p in named if p.requires_grad})
    adapters = [name for name in weights[0] if "alpha" not in name]
    assert len(adapters) < len(weights[0])  # α trains too (at a negligible rate)
    for name in adapters:
        torch.testing.assert_close(weights[1][name], weights[0][name], rtol=0, atol=0, msg=name)


# -- BLoB ----------------------------------------------------------------------------------------
def blob_holder(noise: str = "example", dtype=torch.float64):
    torch.manual_seed(0)
    model = Holder(torch.nn.Linear(4, 3)).to(dtype)
    cfg = balora.BaLoRAConfig(r=2, target_modules=["layer"], alpha_source="constant", noise=noise)
    apply_blob(model, cfg, prior_std=0.3, init_std=0.05)
    with torch.no_grad():
        model.layer.lora_B.normal_()
        model.layer.lora_A_rho.uniform_(-4.0, -2.0)  # distinct σ per element
    return model


def test_blob_kl_matches_torch_distributions():
    model = blob_holder()
    layer = model.layer
    assert isinstance(layer, BLoBLinear)
    model.train()
    model(torch.randn(5, 4, dtype=torch.float64))
    sigma = torch.nn.functional.softplus(layer.lora_A_rho)
    zero = torch.zeros((), dtype=torch.float64)
    prior = Normal(zero, torch.full((), 0.3, dtype=torch.float64))
    expected = kl_divergence(Normal(layer.lora_A, sigma), prior).sum()
    torch.testing.assert_close(balora.kl_divergence(model), expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(gaussian_kl(layer.lora_A, sigma, 0.3), expected)
    # the KL depends on A (the prior does not scale with it) and reaches A, ρ by backprop
    balora.kl_divergence(model).backward()
    assert layer.lora_A.grad.abs().sum() > 0
    assert layer.lora_A_rho.grad.abs().sum() > 0


@pytest.mark.parametrize("noise", ["example", "token"])
def test_blob_noise_has_the_mean_field_variance(noise):
    model = blob_holder(noise)
    layer = model.layer
    x = torch.tensor([[0.5, -1.0, 2.0, 0.3]], dtype=torch.float64)
    n = 20000
    with balora.sampling(model, seed=0):
        out = model(x.expand(n, -1))
    with torch.no_grad():
        mean = model.eval()(x)[0]  # eval: the posterior mean (LoRA)
        sigma = torch.nn.functional.softplus(layer.lora_A_rho)
        h_var = (sigma**2) @ (x[0] ** 2)  # (r,): Var[(σ ⊙ E) x]
        var = layer.scaling**2 * (layer.lora_B**2) @ h_var  # (d_out,)
    torch.testing.assert_close(out.mean(0), mean, rtol=0, atol=4 * (var / n).sqrt().max().item())
    torch.testing.assert_close(out.var(0), var, rtol=0.05, atol=0)


def test_blob_options_are_validated():
    with pytest.raises(ValueError, match="prior_std must be > 0"):
        build_blob(prior_std=0.0)
    with pytest.raises(ValueError, match="init_std must be a finite number"):
        build_blob(init_std=float("nan"))
    cfg = ADAPTER.replace(noise="none")
    with pytest.raises(ValueError, match="noise='none'"):
        apply_blob(MLP(), cfg)


def build_blob(**options):
    return make_method("blob", factory(3), adapter=ADAPTER, train=TRAIN, **options)


# -- Laplace -------------------------------------------------------------------------------------
def test_laplace_rejects_what_it_cannot_do():
    with pytest.raises(NotImplementedError, match="Gaussian"):
        make_method("laplace", factory(2), "regression", gaussian=True)
    with pytest.raises(ValueError, match="supports hessian_structure='diag' only"):
        make_method("laplace", factory(3), hessian_structure="kron")
    with pytest.raises(ValueError, match="subset_of_weights must be one of"):
        make_method("laplace", factory(3), subset_of_weights="subnetwork")


def test_laplace_last_layer_kron():
    train, val, test = dataset("classification")
    method = make_method(
        "laplace",
        factory(3),
        adapter=ADAPTER,
        train=TRAIN,
        subset_of_weights="last_layer",
    )
    method.fit(train, val)
    assert method.hessian_structure == "kron"
    assert method.laplace.n_params == 16 * 3 + 3  # the head only
    pred = method.predict(test.inputs, num_samples=16, seed=0)
    accuracy = (pred.mean.argmax(-1) == test.targets).float().mean().item()
    assert accuracy > 0.7
    assert pred.epistemic.mean() > 0
    point = method.predict(test.inputs, num_samples=0)
    assert (point.epistemic == 0).all()


def test_laplace_on_dict_inputs():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 64, (48, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[::3, 5:] = 0
    data = Data({"input_ids": ids, "attention_mask": mask}, (ids[:, 1] > 32).long())
    adapter = balora.BaLoRAConfig(
        r=2, target_modules=["query", "value"], modules_to_save=["classifier"]
    )
    method = make_method(
        "laplace",
        lambda: tiny_bert(seed=0),
        adapter=adapter,
        train=TrainConfig(epochs=2, batch_size=16, lr=1e-2, progress=False),
    )
    method.fit(data)
    # the posterior covers A and B of every adapter plus the classifier, nothing else
    lora = sum(
        layer.lora_A.numel() + layer.lora_B.numel()
        for layer in method.model._balora.layers.values()
    )
    assert method.laplace.n_params == lora + 16 * 2 + 2
    pred = method.predict({"input_ids": ids[:5], "attention_mask": mask[:5]}, num_samples=8)
    assert pred.mean.shape == (5, 2)
    assert pred.epistemic.mean() > 0


def test_laplace_prediction_in_chunks(monkeypatch):
    from balora.methods import laplace as laplace_module

    method = fitted("laplace", "classification")
    _, _, test = dataset("classification")
    whole = method.predict(test.inputs, num_samples=256, seed=0)
    # one example per Jacobian: different draws, the same predictive distribution
    monkeypatch.setattr(laplace_module, "MAX_JACOBIAN_ELEMENTS", 1)
    chunked = method.predict(test.inputs, num_samples=256, seed=0)
    assert chunked.mean.shape == whole.mean.shape
    assert not torch.equal(chunked.mean, whole.mean)
    torch.testing.assert_close(chunked.mean, whole.mean, rtol=0, atol=0.1)
    ratio = chunked.epistemic.mean() / whole.epistemic.mean()
    assert 0.8 < ratio < 1.25, ratio


def test_laplace_reuses_its_predictive_moments_across_sample_sizes(monkeypatch):
    train, val, test = dataset("classification")
    method = build("laplace", "classification")  # its own: the test changes its posterior
    method.fit(train, val)
    la = method.laplace
    calls = []
    glm = la._glm_predictive_distribution
    monkeypatch.setattr(la, "_glm_predictive_distribution", lambda x: calls.append(1) or glm(x))
    first = {s: method.predict(test.inputs, num_samples=s, seed=4) for s in (1, 10, 32)}
    assert len(calls) == 1  # one Jacobian pass for every S
    # the same draws as laplace-torch's own sampler on fresh Jacobians
    with torch.enable_grad():
        reference = la.functional_samples(
            test.inputs, n_samples=32, generator=torch.Generator().manual_seed(4)
        )
    torch.testing.assert_close(first[32].mean, reference.softmax(-1).mean(0), rtol=0, atol=1e-6)
    # a new prior precision is another posterior: the moments are computed again
    la.prior_precision = la.prior_precision * 4
    calls.clear()
    tighter = method.predict(test.inputs, num_samples=32, seed=4)
    assert len(calls) == 1
    assert tighter.epistemic.mean() < first[32].epistemic.mean()


@pytest.mark.parametrize("name", ["mc_dropout", "blob", "balora", "balora_constant"])
def test_prediction_with_the_prefix_cache_equals_the_full_passes(name, monkeypatch):
    balora_predict = importlib.import_module("balora.predict")  # the module, not the function
    recorded = []
    record = balora_predict.record_prefix
    monkeypatch.setattr(
        balora_predict, "record_prefix", lambda *a: recorded.append(1) or record(*a)
    )
    # adapters on fc2 only: fc1 is the frozen prefix that Method.predict runs once per batch
    train, val, test = dataset("gaussian")
    adapter = ADAPTER.replace(target_modules=["fc2"])
    train_config = dataclasses.replace(TRAIN, epochs=1)
    method = make_method(
        name, factory(2), "regression", adapter=adapter, train=train_config, gaussian=True
    )
    method.fit(train, val)
    method.model.double()
    x = test.inputs.double()
    cached = method.predict(x, 8, seed=3)
    assert recorded  # the cache was used
    full = balora.predict(method.model, x, 8, "regression", seed=3, gaussian=True)
    assert cached.epistemic.abs().max() > 0  # the samples differ
    for field in ("mean", "aleatoric", "epistemic"):
        torch.testing.assert_close(getattr(cached, field), getattr(full, field))


def test_temperature_scaling_recovers_a_known_temperature():
    g = torch.Generator().manual_seed(0)
    z = 2.0 * torch.randn(4000, 3, generator=g, dtype=torch.float64)
    labels = torch.multinomial(z.softmax(-1), 1, generator=g).squeeze(1)  # calibrated by z
    assert fit_temperature(3.0 * z, labels) == pytest.approx(3.0, rel=0.05)


def test_temperature_scaled_lora_keeps_lora_accuracy_and_refuses_regression():
    ts, lora = fitted("lora_ts", "classification"), fitted("lora", "classification")
    _, val, test = dataset("classification")
    a, b = ts.predict(test.inputs, 0), lora.predict(test.inputs, 0)
    assert torch.equal(a.mean.argmax(-1), b.mean.argmax(-1))
    val_nll = lambda p: float(-p.mean[torch.arange(len(val)), val.targets].log().mean())  # noqa: E731
    assert val_nll(ts.predict(val.inputs, 0)) <= val_nll(lora.predict(val.inputs, 0)) + 1e-9
    with pytest.raises(NotImplementedError, match="classification"):
        make_method("lora_ts", factory(1), "regression")
    with pytest.raises(ValueError, match="validation data"):
        build("lora_ts", "classification").fit(dataset("classification")[0])
