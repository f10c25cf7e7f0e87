"""Prediction: the uncertainty decomposition, seeding, chunking, backbone α reuse."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import balora
from tests.conftest import MLP, tiny_bert


def trained_like(source="layer", **kw):
    """An adapted MLP whose B is non-zero (as after training), so samples differ."""
    torch.manual_seed(0)
    model = MLP().double()
    cfg = balora.BaLoRAConfig(
        r=2,
        target_modules=["fc1", "fc2"],
        alpha_init=0.5,
        alpha_source=source,
        alpha_feature_dim=6,
        **kw,
    )
    balora.apply(model, cfg)
    with torch.no_grad():
        for layer in (model.fc1, model.fc2):
            layer.lora_B.normal_()
    return model


def test_classification_decomposition_matches_samples():
    model = trained_like()
    x = torch.randn(5, 6, dtype=torch.float64)
    pred = balora.predict(model, x, num_samples=16, seed=0, keep_samples=True)
    probs = pred.samples  # (S, b, C)
    assert probs.shape == (16, 5, 3)
    assert pred.num_samples == 16
    mean = probs.mean(0)
    total = -(mean * mean.log()).sum(-1)
    aleatoric = -(probs * probs.log()).sum(-1).mean(0)
    torch.testing.assert_close(pred.mean, mean)
    torch.testing.assert_close(pred.total, total)
    torch.testing.assert_close(pred.aleatoric, aleatoric)
    torch.testing.assert_close(pred.epistemic, total - aleatoric)
    assert (pred.epistemic > 0).all()
    torch.testing.assert_close(pred.mean.sum(-1), torch.ones(5, dtype=torch.float64))


def test_regression_gaussian_decomposition():
    model = trained_like()
    model.head = nn.Linear(16, 2).double()  # (mean, log-variance)
    x = torch.randn(4, 6, dtype=torch.float64)
    pred = balora.predict(
        model, x, num_samples=8, task="regression", gaussian=True, seed=1, keep_samples=True
    )
    mu, var = pred.samples[..., 0], pred.samples[..., 1].exp()
    torch.testing.assert_close(pred.mean, mu.mean(0))
    torch.testing.assert_close(pred.epistemic, mu.var(0, correction=0))
    torch.testing.assert_close(pred.aleatoric, var.mean(0))
    torch.testing.assert_close(pred.total, pred.epistemic + pred.aleatoric)
    plain = balora.predict(model, x, num_samples=8, task="regression", seed=1)
    assert plain.mean.shape == (4, 2)
    assert (plain.aleatoric == 0).all()


def test_posterior_mean_prediction_is_eval_mode():
    model = trained_like()
    x = torch.randn(3, 6, dtype=torch.float64)
    pred = balora.predict(model, x, num_samples=0)
    model.eval()
    torch.testing.assert_close(pred.mean, model(x).softmax(-1))
    assert (pred.epistemic == 0).all()
    assert pred.num_samples == 0


def test_seeded_predict_ignores_global_rng_and_restores_mode():
    model = trained_like()
    model.train()
    x = torch.randn(4, 6, dtype=torch.float64)
    torch.manual_seed(1)
    a = balora.predict(model, x, num_samples=8, seed=7)
    torch.manual_seed(2)
    torch.randn(100)
    b = balora.predict(model, x, num_samples=8, seed=7)
    torch.testing.assert_close(a.mean, b.mean, rtol=0, atol=0)
    c = balora.predict(model, x, num_samples=8, seed=8)
    assert not torch.allclose(a.mean, c.mean)
    assert model.training
    assert model.fc1.training
    state = torch.random.get_rng_state()
    balora.predict(model, x, num_samples=4, seed=3)
    assert torch.equal(state, torch.random.get_rng_state())


def test_chunking_keeps_sample_layout():
    x = torch.randn(3, 6, dtype=torch.float64)
    pred = balora.predict(
        trained_like(), x, num_samples=10, chunk_size=3, seed=0, keep_samples=True
    )
    assert pred.samples.shape == (10, 3, 3)
    # with deterministic adapters, sample s of example i must be example i's output
    model = trained_like(noise="none")
    pred = balora.predict(model, x, num_samples=5, chunk_size=2, keep_samples=True)
    model.eval()
    expected = model(x).softmax(-1).expand(5, -1, -1)
    torch.testing.assert_close(pred.samples, expected)


def test_backbone_alpha_is_computed_once_per_prediction():
    calls = []

    def features(model, args, kwargs):
        calls.append(args[0].shape[0])
        return args[0]

    torch.manual_seed(0)
    model = MLP()
    balora.apply(
        model,
        balora.BaLoRAConfig(
            r=2, target_modules=["fc1"], alpha_source="backbone", alpha_feature_dim=6
        ),
        feature_fn=features,
    )
    balora.predict(model, torch.randn(5, 6), num_samples=16, chunk_size=4, seed=0)
    assert calls == [5]


def test_predict_on_hf_model_with_dict_inputs(bert_batch):
    model = tiny_bert()
    balora.apply(model, balora.BaLoRAConfig(modules_to_save=["classifier"], alpha_init=0.5))
    with torch.no_grad():
        for layer in balora.inject.get_adapter(model).layers.values():
            layer.lora_B.normal_()
    pred = balora.predict(model, bert_batch, num_samples=4, seed=0)
    assert pred.mean.shape == (4, 2)
    assert (pred.epistemic > 0).all()


def test_predict_on_plain_model_is_deterministic():
    model = nn.Linear(4, 3)
    pred = balora.predict(model, torch.randn(2, 4), num_samples=3, seed=0)
    assert torch.allclose(pred.epistemic, torch.zeros(2), atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_samples": -1}, "num_samples"),
        ({"task": "ranking"}, "task"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"gaussian": True}, "gaussian"),
    ],
)
def test_predict_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        balora.predict(trained_like(), torch.randn(2, 6, dtype=torch.float64), **kwargs)


def test_predict_rejects_mismatched_batch():
    with pytest.raises(ValueError, match="batch size"):
        balora.predict(
            tiny_bert(),
            {"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.ones(3, 3)},
        )
