"""Run directories: trained weights of every saveable method round-trip exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from balora.methods import Data, TrainConfig, make_method
from balora.recipes.common import load_method_weights, read_run, save_method_weights
from tests.conftest import MLP


class TiedLM(nn.Module):
    """An output layer sharing its weight with the embeddings (as SmolLM2's)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(x).mean(1))


def test_full_ft_with_tied_weights_round_trips(tmp_path):
    method = make_method("full_ft", TiedLM, train=TrainConfig(epochs=1, progress=False))
    x = torch.randint(0, 10, (8, 3))
    method.fit(Data(x, torch.randint(0, 10, (8,))))
    save_method_weights(method, tmp_path)
    loaded = make_method("full_ft", TiedLM)
    load_method_weights(loaded, tmp_path)
    torch.testing.assert_close(loaded.model(x), method.model(x), rtol=0, atol=0)
    assert loaded.model.head.weight is loaded.model.emb.weight


@pytest.mark.parametrize("name", ["lora", "balora", "ensemble"])
def test_adapter_methods_round_trip(name, tmp_path):
    from balora import BaLoRAConfig

    adapter = BaLoRAConfig(r=2, target_modules=["fc1", "fc2"], modules_to_save=["head"])
    options = {"members": 2} if name == "ensemble" else {}
    budget = TrainConfig(epochs=2, lr=1e-2, progress=False)

    def pretrained() -> nn.Module:  # the same base weights at every call, as a checkpoint
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(123)
            return MLP()

    def build():
        return make_method(name, pretrained, adapter=adapter, train=budget, **options)

    method = build()
    x = torch.randn(32, 6)
    method.fit(Data(x, (x[:, 0] > 0).long()))
    save_method_weights(method, tmp_path)
    loaded = build()
    load_method_weights(loaded, tmp_path)
    a, b = method.predict(x, 4, seed=0), loaded.predict(x, 4, seed=0)
    torch.testing.assert_close(a.mean, b.mean, rtol=0, atol=0)


def test_read_run_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a balora run directory"):
        read_run(tmp_path)
    (tmp_path / "run.json").write_text("{}")
    with pytest.raises(ValueError, match="lacks 'task'"):
        read_run(tmp_path)
