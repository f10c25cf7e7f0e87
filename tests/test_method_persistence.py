"""Methods own their persistence: every method in `METHODS` saves its trained state and a
fresh method built with the same options loads it and predicts exactly the same."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from balora import BaLoRAConfig
from balora.dataset import Data
from balora.methods import METHODS, TrainConfig, make_method
from balora.runs import read_run
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
    method.save(tmp_path)
    loaded = make_method("full_ft", TiedLM).load(tmp_path)
    torch.testing.assert_close(loaded.model(x), method.model(x), rtol=0, atol=0)
    assert loaded.model.head.weight is loaded.model.emb.weight


def _pretrained(d_out: int):
    def factory() -> nn.Module:  # the same base weights at every call, as a checkpoint
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(123)
            return MLP(d_out=d_out)

    return factory


CASES = [(name, "classification") for name in METHODS] + [
    (name, "regression")
    for name in METHODS
    if name not in ("laplace", "lora_ts")  # no Gaussian head; classification only
]


@pytest.mark.parametrize(("name", "task"), CASES)
def test_every_method_round_trips(name, task, tmp_path):
    regression = task == "regression"
    adapter = BaLoRAConfig(r=2, target_modules=["fc1", "fc2"], modules_to_save=["head"])
    options = {"members": 2} if name == "ensemble" else {}
    budget = TrainConfig(epochs=2, lr=1e-2, progress=False)

    def build():
        return make_method(
            name,
            _pretrained(2 if regression else 3),
            task,
            gaussian=regression,
            adapter=adapter,
            train=budget,
            seed=3,
            **options,
        )

    x = torch.randn(32, 6)
    y = x[:, 0] if regression else (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    method = build()
    method.fit(Data(x, y), Data(x[:16], y[:16]))
    method.save(tmp_path)
    torch.manual_seed(999)  # loading must not depend on the global RNG
    loaded = build().load(tmp_path)
    for s in (0, 4):
        a, b = method.predict(x, s, seed=0), loaded.predict(x, s, seed=0)
        torch.testing.assert_close(a.mean, b.mean, rtol=0, atol=0)
        torch.testing.assert_close(a.total, b.total, rtol=0, atol=0)


def test_laplace_last_layer_kron_round_trips(tmp_path):
    adapter = BaLoRAConfig(r=2, target_modules=["fc1", "fc2"], modules_to_save=["head"])

    def build():
        return make_method(
            "laplace",
            _pretrained(3),
            adapter=adapter,
            train=TrainConfig(epochs=1, progress=False),
            subset_of_weights="last_layer",
        )

    x = torch.randn(24, 6)
    method = build()
    method.fit(Data(x, (x[:, 0] > 0).long()))
    method.save(tmp_path)
    loaded = build().load(tmp_path)
    torch.testing.assert_close(
        method.predict(x, 8, seed=1).mean, loaded.predict(x, 8, seed=1).mean, rtol=0, atol=0
    )


def test_loading_a_missing_or_other_state_is_an_error(tmp_path):
    adapter = BaLoRAConfig(r=2, target_modules=["fc1"], modules_to_save=["head"])
    with pytest.raises(FileNotFoundError, match="no BaLoRA adapter"):
        make_method("lora", _pretrained(3), adapter=adapter).load(tmp_path)
    with pytest.raises(FileNotFoundError, match="model weights"):
        make_method("full_ft", _pretrained(3)).load(tmp_path)
    method = make_method("lora", _pretrained(3), adapter=adapter, train=TrainConfig(epochs=1))
    method.fit(Data(torch.randn(8, 6), torch.zeros(8, dtype=torch.long)))
    method.save(tmp_path)
    other = BaLoRAConfig(r=2, target_modules=["fc1", "fc2"], modules_to_save=["head"])
    with pytest.raises(ValueError, match="adapted modules differ"):
        make_method("lora", _pretrained(3), adapter=other).load(tmp_path)


def test_read_run_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a balora run directory"):
        read_run(tmp_path)
    (tmp_path / "run.json").write_text("{}")
    with pytest.raises(ValueError, match="lacks 'task'"):
        read_run(tmp_path)
