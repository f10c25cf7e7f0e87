"""Injection, freezing, α sources and the ELBO on tiny models (MLP and a random-init BERT)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import balora
from balora.inject import get_adapter
from tests.conftest import MLP, tiny_bert


def config(**kw):
    base = {"r": 2, "target_modules": ["fc1", "fc2"], "modules_to_save": ["head"]}
    return balora.BaLoRAConfig(**{**base, **kw})


def test_target_matching_list_suffix_and_regex():
    model = tiny_bert()
    balora.apply(model, balora.BaLoRAConfig(target_modules=["query", "attention.self.value"]))
    names = sorted(get_adapter(model).layers)
    assert len(names) == 4
    assert all(n.endswith(("query", "value")) for n in names)
    model = tiny_bert()
    balora.apply(model, balora.BaLoRAConfig(target_modules=r".*layer\.0\..*(query|key)"))
    assert sorted(get_adapter(model).layers) == [
        "bert.encoder.layer.0.attention.self.key",
        "bert.encoder.layer.0.attention.self.query",
    ]


def test_no_match_error_repeats_patterns_and_lists_names():
    with pytest.raises(ValueError, match=r"\['nope'\].*fc1"):
        balora.apply(MLP(), balora.BaLoRAConfig(target_modules=["nope"]))
    with pytest.raises(ValueError, match=r"modules_to_save.*classifier"):
        balora.apply(MLP(), config(modules_to_save=["classifier"]))


def test_unsupported_type_names_the_type_and_leaves_model_untouched():
    model = nn.Sequential(nn.Linear(3, 3), nn.Embedding(5, 3))
    before = copy.deepcopy(model)
    with pytest.raises(TypeError, match=r"Embedding.*supported: nn\.Linear"):
        balora.apply(model, balora.BaLoRAConfig(r=2, target_modules=["0", "1"]))
    assert isinstance(model[0], nn.Linear)
    assert "_balora" not in model.__dict__
    assert all(p.requires_grad for p in model.parameters())
    assert str(model) == str(before)


def test_refuses_to_wrap_twice():
    model = balora.apply(MLP(), config())
    with pytest.raises(ValueError, match="already has BaLoRA adapters"):
        balora.apply(model, config())


def test_compile_wrapper_is_looked_through():
    model = balora.apply(MLP(), config())
    compiled = torch.compile(model)  # lazy: nothing is compiled until the first call
    assert get_adapter(compiled) is get_adapter(model)
    with balora.sampling(compiled, seed=0):
        assert get_adapter(model).state.sampling
    with pytest.raises(ValueError, match="no BaLoRA adapters"):
        get_adapter(torch.compile(MLP()))


def test_trainable_parameters_and_unload_restores_flags():
    model = MLP()
    model.fc2.bias.requires_grad_(False)
    total_before = sum(p.numel() for p in model.parameters())
    balora.apply(model, config())
    trainable, total = balora.trainable_parameters(model)
    # A (2x6, 2x16), B (16x2, 16x2), layer α (6+1, 16+1), head (16*3+3)
    assert trainable == 12 + 32 + 32 + 32 + 7 + 17 + 51
    assert total == total_before + trainable - 51
    balora.unload(model)
    assert isinstance(model.fc1, nn.Linear)
    assert not model.fc2.bias.requires_grad
    assert model.fc1.weight.requires_grad
    assert "_balora" not in model.__dict__


@pytest.mark.parametrize("source", ["layer", "backbone", "constant"])
def test_one_step_moves_only_adapter_alpha_and_saved_modules(source):
    torch.manual_seed(0)
    model = MLP()
    balora.apply(model, config(alpha_source=source, alpha_feature_dim=6))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    for _ in range(2):  # B is zero at first: the second step moves A and α as well
        model.train()
        loss = balora.elbo_loss(F.cross_entropy(model(x), y), model, num_train=8)
        opt.zero_grad()
        loss.backward()
        opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    frozen = {n for n in before if "base_layer" in n}
    assert not changed & frozen
    assert {n for n in changed if "lora_B" in n or "lora_A" in n} == {
        f"{m}.lora_{ab}" for m in ("fc1", "fc2") for ab in "AB"
    }
    assert any(n.startswith("head.") for n in changed)
    alpha_names = {n for n in changed if "alpha" in n}
    assert alpha_names, "the α parameters received no gradient"


def _randomise_alpha(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "alpha" in name:
                p.normal_(0, 0.5)


def _alphas(model, x):
    with balora.sampling(model, seed=0), torch.no_grad():
        model.eval()
        model(x) if isinstance(x, torch.Tensor) else model(**x)
    return torch.cat([a.flatten() for a in balora.last_alpha(model).values()])


@pytest.mark.parametrize(
    ("source", "varies"), [("layer", True), ("backbone", True), ("constant", False)]
)
def test_alpha_depends_on_input_except_constant(source, varies):
    torch.manual_seed(0)
    model = balora.apply(MLP(), config(alpha_source=source, alpha_feature_dim=6))
    _randomise_alpha(model)
    a1 = _alphas(model, torch.randn(1, 6))
    a2 = _alphas(model, torch.randn(1, 6))
    assert (not torch.allclose(a1, a2)) is varies
    assert (a1 > 0).all()


def test_alpha_starts_at_prior_for_every_input():
    cfg = config(alpha_source="backbone", alpha_feature_dim=6, prior_p=0.3)
    model = balora.apply(MLP(), cfg)
    alphas = _alphas(model, torch.randn(5, 6))
    torch.testing.assert_close(alphas, torch.full_like(alphas, 0.3 / 0.7))


def test_backbone_alpha_on_bert_uses_masked_mean_of_last_hidden_state(bert_batch):
    model = tiny_bert()
    balora.apply(
        model, balora.BaLoRAConfig(alpha_source="backbone", modules_to_save=["classifier"])
    )
    net = get_adapter(model)
    assert model.balora_alpha_net.net[0].in_features == 16
    _randomise_alpha(model)
    model.eval()
    with balora.sampling(model, seed=0), torch.no_grad():
        model(**bert_batch)
    alphas = balora.last_alpha(model)
    assert len(alphas) == len(net.layers) == 4
    per_input = torch.stack([a[:, 0] for a in alphas.values()], 1)  # (b, L)
    assert not torch.allclose(per_input[0], per_input[1])
    # padding does not change α: extend sequence 0's padding with different token ids
    batch = {k: v.clone() for k, v in bert_batch.items()}
    batch["input_ids"][0, 5:] = 3
    with balora.sampling(model, seed=0), torch.no_grad():
        model(**batch)
    again = torch.stack([a[:, 0] for a in balora.last_alpha(model).values()], 1)
    torch.testing.assert_close(again, per_input)


def test_backbone_alpha_needs_feature_dim_for_plain_models():
    with pytest.raises(ValueError, match="alpha_feature_dim"):
        balora.apply(MLP(), config(alpha_source="backbone"))


def test_elbo_loss_normalisation_and_warmup():
    torch.manual_seed(0)
    model = balora.apply(MLP(), config(alpha_init=0.3))
    model.train()
    nll = F.cross_entropy(model(torch.randn(4, 6)), torch.tensor([0, 1, 2, 0]))
    kl = balora.kl_divergence(model)
    torch.testing.assert_close(balora.elbo_loss(nll, model, 100), nll + kl / 100)
    torch.testing.assert_close(balora.elbo_loss(nll, model, 100, 0.5), nll + 0.5 * kl / 100)
    warm = balora.elbo_loss(nll, model, 100, 2.0, warmup_steps=10, step=5)
    torch.testing.assert_close(warm, nll + 1.0 * kl / 100)
    assert balora.elbo_loss(nll, model, 100, warmup_steps=10, step=0) is nll
    with pytest.raises(ValueError, match="num_train"):
        balora.elbo_loss(nll, model, 0)
    with pytest.raises(ValueError, match="step"):
        balora.elbo_loss(nll, model, 10, warmup_steps=5)


def test_kl_without_a_stochastic_forward_is_an_error():
    model = balora.apply(MLP(), config())
    model.eval()
    model(torch.randn(2, 6))
    with pytest.raises(RuntimeError, match="no KL was recorded"):
        balora.kl_divergence(model)


def test_lora_dropout_only_in_training_unless_mc_dropout():
    torch.manual_seed(0)
    x = torch.randn(4, 6)
    for mc, expect_random in ((False, False), (True, True)):
        model = balora.apply(MLP(), config(noise="none", lora_dropout=0.5, mc_dropout=mc))
        with torch.no_grad():
            model.fc1.lora_B.normal_()
        model.eval()
        with balora.sampling(model, seed=0), torch.no_grad():
            y1 = model(x)
            y2 = model(x)
        assert (not torch.allclose(y1, y2)) is expect_random


def test_a_rank_above_the_layer_width_is_refused_before_any_memory_is_taken():
    model = nn.Sequential(nn.Linear(16, 8))
    with pytest.raises(ValueError, match=r"r=100000 is larger than 0 itself \(16 → 8\)"):
        balora.apply(model, balora.BaLoRAConfig(r=100_000, target_modules=["0"]))
    assert isinstance(model[0], nn.Linear)


def test_a_bad_regular_expression_names_the_field():
    with pytest.raises(ValueError, match=r"target_modules .* is not a valid regular expression"):
        balora.BaLoRAConfig(target_modules="(query")
