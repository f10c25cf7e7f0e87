"""The frozen-prefix cache: same predictions as without it, the prefix runs on b rows only."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import balora
from balora.prefix import record_prefix, replay_prefix
from tests.conftest import MLP, tiny_bert


def _bert(targets):
    model = tiny_bert().double()
    balora.apply(model, balora.BaLoRAConfig(r=2, target_modules=targets))
    torch.manual_seed(1)
    with torch.no_grad():  # non-zero B so that the noise reaches the output
        for layer in balora.inject.get_adapter(model).layers.values():
            layer.lora_B.normal_()
    return model.eval()


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
        use_cache=False,
    )
    model = LlamaForCausalLM(config).double()
    balora.apply(model, balora.BaLoRAConfig(r=2, target_modules=r".*layers\.2\.mlp\.up_proj"))
    with torch.no_grad():
        model.model.layers[2].mlp.up_proj.lora_B.normal_()
    return model.eval()


LATER = r".*layer\.1\.attention\.self\.(query|value)"


@pytest.mark.parametrize("targets", [LATER, ["query", "value"]], ids=["later", "all-layers"])
@pytest.mark.parametrize("noise", ["example", "token"])
def test_cached_prediction_equals_uncached(bert_batch, targets, noise):
    model = _bert(targets)
    balora.inject.get_adapter(model).config.noise = noise  # same weights, other noise
    plain = balora.predict(model, bert_batch, 6, seed=3, keep_samples=True, chunk_size=4)
    cached = balora.predict(
        model, bert_batch, 6, seed=3, keep_samples=True, chunk_size=4, cache_prefix=True
    )
    assert plain.samples.std(0).max() > 1e-6  # the samples differ, so the check can fail
    torch.testing.assert_close(cached.samples, plain.samples, rtol=0, atol=1e-12)
    torch.testing.assert_close(cached.epistemic, plain.epistemic, rtol=0, atol=1e-12)


def test_prefix_runs_on_b_rows_once(bert_batch):
    model = _bert(LATER)
    rows = []
    model.bert.embeddings.word_embeddings.register_forward_hook(
        lambda m, args, out: rows.append(args[0].shape[0])
    )
    balora.predict(model, bert_batch, 8, seed=0)
    assert rows == [8 * 4]
    rows.clear()
    balora.predict(model, bert_batch, 8, seed=0, cache_prefix=True)
    assert rows == [4]  # recorded once on the b = 4 inputs, replayed for the samples


def test_record_keeps_the_top_most_unadapted_modules(bert_batch):
    model = _bert(LATER)
    record = record_prefix(model, bert_batch)
    assert record.names == ("bert.embeddings", "bert.encoder.layer.0")
    assert record.batch_size == 4
    model.eval()
    for layer in balora.inject.get_adapter(model).layers.values():
        assert all(m is not layer for m in record.modules)


def test_causal_lm_with_rotary_tables_and_gqa():
    model = _llama()
    ids = torch.randint(0, 64, (3, 5), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    record = record_prefix(model, inputs)
    assert "model.layers.0" in record.names
    assert "model.layers.1" in record.names
    plain = balora.predict(model, inputs, 4, seed=1, keep_samples=True)
    cached = balora.predict(model, inputs, 4, seed=1, keep_samples=True, cache_prefix=True)
    assert plain.samples.std(0).max() > 1e-6
    torch.testing.assert_close(cached.samples, plain.samples, rtol=0, atol=1e-12)


def test_tensor_input_model():
    torch.manual_seed(0)
    model = MLP().double()
    balora.apply(model, balora.BaLoRAConfig(r=2, target_modules=["fc2"]))
    with torch.no_grad():
        model.fc2.lora_B.normal_()
    x = torch.randn(5, 6, dtype=torch.float64)
    plain = balora.predict(model, x, 7, task="regression", seed=2, keep_samples=True)
    cached = balora.predict(
        model, x, 7, task="regression", seed=2, keep_samples=True, cache_prefix=True
    )
    assert record_prefix(model.eval(), x).names == ("fc1",)
    torch.testing.assert_close(cached.samples, plain.samples, rtol=0, atol=1e-12)


def test_replay_rejects_a_batch_it_was_not_recorded_for(bert_batch):
    model = _bert(LATER)
    record = record_prefix(model, bert_batch)
    with replay_prefix(record, 2), pytest.raises(RuntimeError, match="batch dimension"):
        model(**{k: v.repeat(3, 1) for k, v in bert_batch.items()})
    # the modules compute again after the block
    assert "forward" not in model.bert.embeddings.__dict__
    model(**bert_batch)


def test_record_needs_eval_mode_and_adapters(bert_batch):
    model = _bert(LATER).train()
    with pytest.raises(ValueError, match="eval mode"):
        record_prefix(model, bert_batch)
    with pytest.raises(ValueError, match="no BaLoRA adapters"):
        record_prefix(tiny_bert(), bert_batch)
    record = record_prefix(model.eval(), bert_batch)
    with pytest.raises(ValueError, match="positive integer"), replay_prefix(record, 0):
        pass


def test_no_adapter_called_means_nothing_cached():
    class Skips(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 3)
            self.unused = nn.Linear(3, 3)

        def forward(self, x):
            return self.a(x)

    model = Skips()
    balora.apply(model, balora.BaLoRAConfig(r=2, target_modules=["unused"]))
    assert record_prefix(model.eval(), torch.randn(2, 3)).names == ()


class _SharedActivation(nn.Module):
    """One activation module called before and after the adapted layer (as EfficientNet's
    shared swish): it must not be replayed."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.act = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.fc2(self.act(self.fc1(x)))))


def test_module_called_again_after_the_first_adapter_is_not_replayed():
    torch.manual_seed(0)
    model = _SharedActivation().double()
    balora.apply(model, balora.BaLoRAConfig(r=2, target_modules=["fc2"]))
    with torch.no_grad():
        model.fc2.lora_B.normal_()
    x = torch.randn(5, 6, dtype=torch.float64)
    assert record_prefix(model.eval(), x).names == ("fc1",)  # not "act"
    plain = balora.predict(model, x, 4, task="regression", seed=3, keep_samples=True)
    cached = balora.predict(
        model, x, 4, task="regression", seed=3, keep_samples=True, cache_prefix=True
    )
    torch.testing.assert_close(cached.samples, plain.samples, rtol=0, atol=1e-12)
