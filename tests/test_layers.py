"""Layer numerics: eval equals hand-written LoRA, merge invariants, sampled moments, KL."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

import balora
from balora.alpha import inverse_alpha, kl_per_element, to_alpha
from tests.conftest import Holder

S = 3.0  # lora_alpha / r below


def _lora_linear(layer, x):
    return layer.base_layer(x) + S * (x @ layer.lora_A.T) @ layer.lora_B.T


def _lora_conv(layer, x):
    base = layer.base_layer
    conv = F.conv1d if isinstance(base, nn.Conv1d) else F.conv2d
    h = conv(x, layer.lora_A, None, base.stride, base.padding, base.dilation)
    b = layer.lora_B.view(*layer.lora_B.shape, *([1] * (x.dim() - 2)))
    return base(x) + S * conv(h, b)


# name, base-layer factory, input shape, hand-written LoRA
CASES = [
    ("linear", lambda: nn.Linear(6, 5), (4, 7, 6), _lora_linear),
    ("linear-2d", lambda: nn.Linear(6, 5), (4, 6), _lora_linear),
    ("gpt2-conv1d", lambda: Conv1D(5, 6), (4, 7, 6), _lora_linear),
    ("conv1d", lambda: nn.Conv1d(3, 4, 3, padding=1), (4, 3, 9), _lora_conv),
    ("conv2d", lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1), (4, 3, 8, 8), _lora_conv),
]
IDS = [c[0] for c in CASES]


def make(factory, **overrides):
    torch.manual_seed(0)
    model = Holder(factory()).double()
    base = copy.deepcopy(model)
    config = balora.BaLoRAConfig(r=2, lora_alpha=2 * S, target_modules=["layer"], **overrides)
    balora.apply(model, config)
    with torch.no_grad():  # non-zero B, so that merge checks can fail
        model.layer.lora_B.normal_()
    return model, base


@pytest.mark.parametrize(("name", "factory", "shape", "reference"), CASES, ids=IDS)
def test_eval_equals_hand_written_lora(name, factory, shape, reference):
    model, _ = make(factory)
    x = torch.randn(shape, dtype=torch.float64)
    model.eval()
    torch.testing.assert_close(model(x), reference(model.layer, x), rtol=0, atol=1e-12)


@pytest.mark.parametrize(("name", "factory", "shape", "reference"), CASES, ids=IDS)
def test_merge_unmerge_and_disable(name, factory, shape, reference):
    model, base = make(factory)
    x = torch.randn(shape, dtype=torch.float64)
    model.eval()
    unmerged = model(x)
    weight = model.layer.base_layer.weight.detach().clone()
    balora.merge(model)
    torch.testing.assert_close(model(x), unmerged, rtol=0, atol=1e-12)
    with balora.disable_adapters(model):
        torch.testing.assert_close(model(x), base(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(model(x), unmerged, rtol=0, atol=1e-12)  # merged again
    with pytest.raises(RuntimeError, match="already merged"):
        balora.merge(model)
    balora.unmerge(model)
    torch.testing.assert_close(model.layer.base_layer.weight, weight, rtol=0, atol=1e-12)
    plain = balora.merge_and_unload(copy.deepcopy(model))
    assert not any(isinstance(m, balora.BaLoRALayer) for m in plain.modules())
    torch.testing.assert_close(plain(x), unmerged, rtol=0, atol=1e-12)


def test_merge_refuses_nan():
    model, _ = make(CASES[0][1])
    with torch.no_grad():
        model.layer.lora_A[0, 0] = float("nan")
    weight = model.layer.base_layer.weight.detach().clone()
    with pytest.raises(ValueError, match="NaN"):
        balora.merge(model)
    torch.testing.assert_close(model.layer.base_layer.weight, weight, rtol=0, atol=0)
    assert not model.layer.merged


def test_training_a_merged_adapter_is_an_error():
    model, _ = make(CASES[0][1])
    balora.merge(model)
    model.train()
    with pytest.raises(RuntimeError, match="unmerge"):
        model(torch.randn(2, 6, dtype=torch.float64))


def test_sampling_a_merged_adapter_matches_unmerged():
    model, _ = make(CASES[0][1], alpha_init=0.5)
    model.eval()
    x = torch.randn(3, 4, 6, dtype=torch.float64)
    with balora.sampling(model, seed=1):
        unmerged = model(x)
    balora.merge(model)
    with balora.sampling(model, seed=1):
        merged = model(x)
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-12)


def test_kl_matches_torch_distributions():
    alpha_p = 0.1 / 0.9
    alpha = torch.tensor([1e-3, 0.05, alpha_p, 0.7, 3.0], dtype=torch.float64)
    a = torch.tensor([0.3, -1.2, 2.0, -0.01, 0.5], dtype=torch.float64)
    q = torch.distributions.Normal(a, (alpha * a * a).sqrt())
    p = torch.distributions.Normal(torch.zeros_like(a), (alpha_p * a * a).sqrt())
    expected = torch.distributions.kl_divergence(q, p)
    torch.testing.assert_close(kl_per_element(alpha, alpha.log(), alpha_p), expected)
    # minimum at α = α_p, where it equals 1 / (2 α_p)
    floor = kl_per_element(torch.tensor(alpha_p), torch.tensor(alpha_p).log(), alpha_p)
    assert floor.item() == pytest.approx(1 / (2 * alpha_p))


@pytest.mark.parametrize("reduction", ["element", "layer"])
@pytest.mark.parametrize("per_rank", [False, True])
def test_layer_kl_reduction(reduction, per_rank):
    model, _ = make(CASES[0][1], alpha_init=0.3, kl_reduction=reduction, alpha_per_rank=per_rank)
    model.train()
    model(torch.randn(4, 7, 6, dtype=torch.float64))
    c = model.layer.config
    per_element = kl_per_element(torch.tensor(0.3), torch.tensor(0.3).log(), c.prior_alpha)
    expected = per_element * (12 if reduction == "element" else 1)  # r * d_in = 2 * 6
    torch.testing.assert_close(balora.kl_divergence(model), expected.double())


@pytest.mark.parametrize("param", ["softplus", "log"])
def test_alpha_parameterisation_round_trip_and_bounds(param):
    config = balora.BaLoRAConfig(alpha_param=param, alpha_min=1e-4, alpha_max=10.0)
    for value in (1e-3, 0.111, 2.0, 9.0):
        z = torch.tensor(inverse_alpha(value, config), dtype=torch.float64)
        alpha, log_alpha = to_alpha(z, config)
        assert alpha.item() == pytest.approx(value, rel=1e-9)
        assert log_alpha.item() == pytest.approx(math.log(value), rel=1e-9)
    alpha, log_alpha = to_alpha(torch.tensor([-1e4, 1e4], dtype=torch.float64), config)
    assert alpha.min().item() >= 1e-4 * (1 - 1e-12)
    assert alpha.max().item() <= 10.0 * (1 + 1e-12)
    assert torch.isfinite(log_alpha).all()


# -- sampled moments against the analytic ones (Monte Carlo, fixed seed, float64) -------------

N_DRAWS = 4000


def _draws(model, x, seed=0):
    """N_DRAWS posterior samples of the layer's output for one input x (1, ...)."""
    with balora.sampling(model, seed=seed), torch.no_grad():
        return model(x.repeat(N_DRAWS, *([1] * (x.dim() - 1))))


@pytest.mark.parametrize(("noise", "chunk"), [("example", None), ("example", 7), ("token", None)])
def test_linear_sampled_moments(noise, chunk, monkeypatch):
    if chunk:  # draw the example noise in chunks of `chunk` examples
        monkeypatch.setattr("balora.layers.MAX_NOISE_ELEMENTS", 12 * chunk)
    alpha = 0.5
    model, _ = make(CASES[0][1], alpha_init=alpha, noise=noise)
    model.eval()
    x = torch.randn(1, 3, 6, dtype=torch.float64)
    layer = model.layer
    y = _draws(model, x)  # (N, T, d_out)
    a, b = layer.lora_A.detach(), layer.lora_B.detach()
    # mean: exactly LoRA; variance of output o at position t: s² Σ_k B_ok² α Σ_j A_kj² x_tj²
    var_h = alpha * (x[0] ** 2) @ (a**2).T  # (T, r)
    var_y = S**2 * var_h @ (b**2).T  # (T, d_out)
    mean = model(x)[0]
    se = (var_y / N_DRAWS).sqrt()
    assert ((y.mean(0) - mean).abs() < 4.5 * se).all()
    rel = (y.var(0) / var_y - 1).abs()
    assert (rel < 0.15).all(), rel.max()
    # covariance across positions t=0, t=1 of output 0: shared weights (example) or not (token)
    cov = ((y[:, 0, 0] - mean[0, 0]) * (y[:, 1, 0] - mean[1, 0])).mean()
    expected = S**2 * alpha * ((b[0] ** 2) * ((a**2) @ (x[0, 0] * x[0, 1]))).sum()
    corr_scale = (var_y[0, 0] * var_y[1, 0]).sqrt()
    if noise == "example":
        assert abs(cov - expected) < 0.15 * corr_scale
        assert abs(expected) > 0.2 * corr_scale  # the check could fail
    else:
        assert abs(cov) < 0.1 * corr_scale


@pytest.mark.parametrize("noise", ["example", "token"])
@pytest.mark.parametrize("case", [CASES[3], CASES[4]], ids=["conv1d", "conv2d"])
def test_conv_sampled_moments(noise, case):
    alpha = 0.5
    model, _ = make(case[1], alpha_init=alpha, noise=noise)
    model.eval()
    x = torch.randn(1, *case[2][1:], dtype=torch.float64)
    layer = model.layer
    y = _draws(model, x)
    base = layer.base_layer
    conv = F.conv1d if isinstance(base, nn.Conv1d) else F.conv2d
    var_h = alpha * conv(x**2, layer.lora_A.detach() ** 2, None, base.stride, base.padding)
    b2 = (layer.lora_B.detach() ** 2).view(*layer.lora_B.shape, *([1] * (x.dim() - 2)))
    var_y = S**2 * conv(var_h, b2)[0]
    mean = model(x)[0]
    mask = var_y > 1e-3 * var_y.max()
    assert ((y.mean(0) - mean).abs() <= 4.5 * (var_y / N_DRAWS).sqrt() + 1e-12).all()
    rel = (y.var(0)[mask] / var_y[mask] - 1).abs()
    assert (rel < 0.2).all(), rel.max()


def test_example_noise_shared_across_positions_token_noise_not():
    # identical positions: example noise gives identical outputs, token noise does not
    x = torch.randn(1, 1, 6, dtype=torch.float64).repeat(2, 5, 1)
    for noise, same in (("example", True), ("token", False)):
        model, _ = make(CASES[0][1], alpha_init=0.5, noise=noise)
        with balora.sampling(model, seed=0), torch.no_grad():
            y = model(x)
        assert torch.allclose(y[0, 0], y[0, 4]) is same
        assert not torch.allclose(y[0], y[1])  # examples get independent noise


def test_noise_none_is_plain_lora_in_training():
    model, _ = make(CASES[0][1], noise="none")
    x = torch.randn(3, 6, dtype=torch.float64)
    model.train()
    torch.testing.assert_close(model(x), _lora_linear(model.layer, x), rtol=0, atol=1e-12)
    assert balora.kl_divergence(model).item() == 0.0


def test_grouped_conv_is_rejected_with_reason():
    model = Holder(nn.Conv2d(4, 4, 3, groups=4))
    with pytest.raises(TypeError, match="groups=4"):
        balora.apply(model, balora.BaLoRAConfig(target_modules=["layer"]))
