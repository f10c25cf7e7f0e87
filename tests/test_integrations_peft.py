"""PEFT interop: BaLoRA's posterior mean exported as a PEFT LoRA adapter loads in
``PeftModel.from_pretrained`` and gives identical outputs; PEFT adapters initialise BaLoRA."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import balora
from balora.inject import get_adapter
from balora.integrations.peft import from_peft, to_peft
from balora.predict import model_output
from tests.conftest import tiny_bert

peft = pytest.importorskip("peft")


class ConvNet(nn.Module):
    """Conv2d and Conv1d layers (kernel > 1) and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, kernel_size=3, padding=1, stride=2)
        self.seq = nn.Conv1d(5, 4, kernel_size=3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x)).flatten(2)  # (b, 5, L)
        return self.head(torch.relu(self.seq(h)).mean(-1))


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2, n_positions=32)
    return GPT2LMHeadModel(config).eval()


CASES = {
    "bert": (
        lambda: tiny_bert().double(),
        balora.BaLoRAConfig(r=4, target_modules=["query", "value"], modules_to_save=["classifier"]),
        lambda g: {"input_ids": torch.randint(1, 64, (3, 7), generator=g)},
    ),
    "gpt2": (
        lambda: _gpt2().double(),
        balora.BaLoRAConfig(r=2, lora_alpha=5, target_modules=["c_attn", "c_fc"]),
        lambda g: {"input_ids": torch.randint(0, 50, (2, 6), generator=g)},
    ),
    "conv": (
        lambda: torch.manual_seed(0) and ConvNet().double(),
        balora.BaLoRAConfig(r=2, target_modules=["conv", "seq"], modules_to_save=["head"]),
        lambda g: torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64),
    ),
}


def _randomise_adapter(model):
    """Non-zero B (and a changed head) so that a wrong export cannot pass."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in get_adapter(model).layers.values():
            layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=g) * 0.3)
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.3)
        for name in get_adapter(model).modules_to_save:
            for p in model.get_submodule(name).parameters():
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype))


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_loads_in_peft_with_identical_outputs(tmp_path, case):
    make, config, inputs_fn = CASES[case]
    model = balora.apply(make(), config)
    _randomise_adapter(model)
    model.eval()
    inputs = inputs_fn(torch.Generator().manual_seed(0))
    expected = model_output(model, inputs)
    base_out = model_output(make(), inputs)
    assert (expected - base_out).abs().max() > 1e-3  # the adapter does change the output

    to_peft(model, tmp_path / "peft")
    loaded = peft.PeftModel.from_pretrained(make(), tmp_path / "peft").eval()
    torch.testing.assert_close(model_output(loaded, inputs), expected, rtol=0, atol=1e-12)
    # and PEFT's own merge gives the same function
    merged = loaded.merge_and_unload()
    torch.testing.assert_close(model_output(merged, inputs), expected, rtol=0, atol=1e-10)


def test_export_adapts_exactly_the_same_modules(tmp_path):
    model = balora.apply(tiny_bert(), balora.BaLoRAConfig(target_modules=r".*layer\.0\..*query"))
    to_peft(model, tmp_path)
    loaded = peft.PeftModel.from_pretrained(tiny_bert(), tmp_path)
    adapted = [n for n, m in loaded.named_modules() if hasattr(m, "lora_A") and m.lora_A]
    assert [n.removeprefix("base_model.model.") for n in adapted] == list(get_adapter(model).layers)
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert meta["peft_type"] == "LORA"
    assert meta["r"] == 8
    assert meta["lora_alpha"] == 16


def _peft_adapter(tmp_path, **lora_kwargs):
    base = tiny_bert().double()
    config = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["query", "value"],
        modules_to_save=["classifier"],
        **lora_kwargs,
    )
    model = peft.get_peft_model(base, config)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
    model.save_pretrained(tmp_path / "peft")
    return model.eval()


@pytest.mark.parametrize("rslora", [False, True])
def test_from_peft_posterior_mean_equals_peft_model(tmp_path, bert_batch, rslora):
    reference = _peft_adapter(tmp_path, use_rslora=rslora)
    expected = reference(**bert_batch).logits
    model = from_peft(tiny_bert().double(), tmp_path / "peft", prior_p=0.2, noise="token")
    adapter = get_adapter(model)
    assert sorted(adapter.layers) == sorted(
        n.removeprefix("base_model.model.")
        for n, m in reference.named_modules()
        if type(m).__name__ == "Linear" and hasattr(m, "lora_A")
    )
    assert adapter.config.prior_p == 0.2
    assert adapter.config.noise == "token"
    assert adapter.modules_to_save == ["classifier"]
    model.eval()
    torch.testing.assert_close(model(**bert_batch).logits, expected, rtol=0, atol=1e-12)
    # training mode samples around that mean
    model.train()
    sampled = model(**bert_batch).logits
    assert (sampled - expected).abs().max() > 1e-6


def test_round_trip_balora_peft_balora_keeps_the_mean(tmp_path, bert_batch):
    model = balora.apply(
        tiny_bert().double(), balora.BaLoRAConfig(r=4, modules_to_save=["classifier"])
    )
    _randomise_adapter(model)
    to_peft(model, tmp_path)
    again = from_peft(tiny_bert().double(), tmp_path)
    for name, layer in get_adapter(model).layers.items():
        other = get_adapter(again).layers[name]
        torch.testing.assert_close(other.lora_A, layer.lora_A, rtol=0, atol=0)
        torch.testing.assert_close(other.lora_B, layer.lora_B, rtol=0, atol=0)
    model.eval()
    again.eval()
    torch.testing.assert_close(again(**bert_batch).logits, model(**bert_batch).logits)


def test_clear_errors(tmp_path):
    model = balora.apply(tiny_bert(), balora.BaLoRAConfig())
    balora.save(model, tmp_path / "balora")
    with pytest.raises(ValueError, match="BaLoRA adapter"):
        to_peft(model, tmp_path / "balora")
    with pytest.raises(ValueError, match=r"balora\.load"):
        from_peft(tiny_bert(), tmp_path / "balora")
    with pytest.raises(FileNotFoundError, match=r"adapter_config\.json"):
        from_peft(tiny_bert(), tmp_path / "nothing")
    _peft_adapter(tmp_path, use_dora=True)
    with pytest.raises(ValueError, match="use_dora"):
        from_peft(tiny_bert().double(), tmp_path / "peft")
    with pytest.raises(ValueError, match="come from the PEFT adapter"):
        from_peft(tiny_bert(), tmp_path / "peft", r=2)
