"""A new task is one recipe and one registry line: a toy task defined here (points in the
plane, a tiny MLP) goes through ``balora train → evaluate → predict`` by the CLI without any
change to the commands or the CLI."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from balora.cli import main
from balora.dataset import Data
from balora.errors import UserError
from balora.tasks import TASKS
from balora.tasks.recipe import ClassificationRecipe, Encoded, LoadedTask, TrainedTask
from tests.conftest import MLP


@dataclass
class ToyConfig:
    """Points in the plane, labelled by the sign of x + y."""

    examples: int = 96
    """How many points (half train, a quarter each validation and test)."""
    split_seed: int = 0
    """Seed of the points."""


def _points(n: int, seed: int) -> Data:
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))
    return Data(x, (x.sum(1) > 0).long())


def _model() -> MLP:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the "pretrained" backbone: the same at every call
        return MLP(d_in=2, d_out=2)


class ToyRecipe(ClassificationRecipe):
    name = "toy"
    summary = "points in the plane"
    config_class = ToyConfig

    def load(self, cfg: ToyConfig, *, progress: bool) -> LoadedTask:
        data = _points(cfg.examples, cfg.split_seed)
        half, three = cfg.examples // 2, 3 * cfg.examples // 4
        return LoadedTask(
            train=data.select(slice(0, half)),
            val=data.select(slice(half, three)),
            test=data.select(slice(three, None)),
            model_factory=_model,
            target_modules=("fc1", "fc2"),
            modules_to_save=("head",),
            record={"label_names": ["negative", "positive"]},
        )

    def load_trained(self, cfg: ToyConfig, run: dict[str, Any]) -> TrainedTask:
        return TrainedTask(_model)

    def read_inputs(self, cfg, run, items, file) -> list[str]:
        if not items:
            raise UserError("give points as x,y")
        return list(items)

    def encode_inputs(self, cfg, run, trained, items: list[str]) -> Encoded:
        points = torch.tensor([[float(v) for v in item.split(",")] for item in items])
        return Encoded(list(items), Data(points, torch.zeros(len(items), dtype=torch.long)))

    def read_evaluation(self, cfg, run, source) -> None:
        return None

    def evaluation_data(self, cfg: ToyConfig, run, trained, read):
        return self.load(cfg, progress=False).test, None, {}


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(TASKS, "toy", ToyRecipe())  # the one registry line


def test_a_toy_task_through_the_cli(toy, tmp_path: Path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--task", "toy", "--examples", "64", "--method", "balora", "-o", str(run)]
    assert main([*argv, "--epochs", "3", "--lr", "0.02", "--no-progress"]) == 0
    record = json.loads((run / "run.json").read_text())
    assert record["task"] == "toy"
    assert record["data"] == {"examples": 64, "split_seed": 0}
    assert record["adapter"]["target_modules"] == ["fc1", "fc2"]
    assert main(["evaluate", str(run), "--num-samples", "4"]) == 0
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["examples"] == 16
    capsys.readouterr()
    assert main(["predict", str(run), "--format", "jsonl", "--", "2,2", "-2,-2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == ["2,2", "-2,-2"]
    assert {r["label"] for r in rows} <= {"negative", "positive"}
    assert main(["predict", str(run)]) == 2
    assert "give points" in capsys.readouterr().err


def test_the_toy_task_is_listed_with_its_options(toy, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--task", "toy", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the help
    assert "toy: points in the plane" in out
    assert "--examples" in out
    assert "How many points" in out
