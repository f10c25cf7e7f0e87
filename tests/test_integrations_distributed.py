"""Multi-process training: per-rank noise, rank-0 atomic files, 2 gloo processes against one
process with the same global batch, FSDP2, and resuming a killed run."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import balora
from balora.integrations.distributed import (
    latest_checkpoint,
    load_adapter_weights,
    load_checkpoint,
    noise_seed,
    save_checkpoint,
    training_noise,
    unwrap,
)
from tests.conftest import MLP
from tests.distributed_launch import adapter_tensors, max_abs_diff, run

# Same global batch, same noise per micro-batch: only the floating-point summation order may
# differ (gloo's all-reduce against local accumulation). Measured: 0.0 in float64.
TOLERANCE = 1e-12
STEPS = ["--steps", 6, "--global-batch-size", 16, "--dtype", "float64"]


def adapted(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = MLP().double()
    return balora.apply(model, balora.BaLoRAConfig(r=2, target_modules=["fc1", "fc2"]))


class Wrapper(nn.Module):
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


def _noise(model: nn.Module, x: torch.Tensor, **kw) -> torch.Tensor:
    model.train()
    with training_noise(model, **kw):
        return model(x)


def test_noise_is_reproducible_independent_across_ranks_and_keyed_by_step():
    model, x = adapted(), torch.randn(3, 6, dtype=torch.float64)
    with torch.no_grad():
        for layer in balora.inject.get_adapter(model).layers.values():
            layer.lora_B.normal_()
    kw = {"seed": 0, "step": 4, "world_size": 2}
    rank0 = _noise(model, x, rank=0, **kw)
    torch.manual_seed(123)  # the global RNG does not matter
    torch.testing.assert_close(_noise(model, x, rank=0, **kw), rank0, rtol=0, atol=0)
    torch.manual_seed(123)  # ... and ranks seeded alike by a launcher differ
    assert not torch.allclose(_noise(model, x, rank=1, **kw), rank0)
    assert not torch.allclose(_noise(model, x, **{**kw, "step": 5}, rank=0), rank0)
    # accumulation step 1 of one process = rank 1 of two processes (global micro-batch 1)
    one = _noise(model, x, seed=0, step=4, accumulation_index=1, rank=0, world_size=1)
    torch.testing.assert_close(_noise(model, x, rank=1, **kw), one, rtol=0, atol=0)
    assert balora.inject.get_adapter(model).state.seed is None  # restored
    assert len({noise_seed(0, s, i) for s in range(50) for i in range(50)}) == 2500


def test_unwrap_follows_wrappers_and_errors_clearly():
    model = adapted()
    assert unwrap(Wrapper(Wrapper(model))) is model
    assert unwrap(model) is model
    with pytest.raises(ValueError, match="no BaLoRA adapters"):
        unwrap(Wrapper(MLP()))
    with (
        pytest.raises(ValueError, match="rank must be in"),
        training_noise(model, seed=0, step=0, rank=2, world_size=2),
    ):
        pass


def test_checkpoint_round_trip_is_exact_and_atomic(tmp_path):
    model = adapted()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x = torch.randn(4, 6, dtype=torch.float64)
    for step in range(3):
        with training_noise(model, seed=0, step=step):
            loss = balora.elbo_loss(model(x).pow(2).mean(), model, num_train=10)
        opt.zero_grad()
        loss.backward()
        opt.step()
        save_checkpoint(tmp_path, model, opt, step + 1, extra={"epoch": 0}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-3"]
    (tmp_path / ".checkpoint-4.tmp-1").mkdir()  # a killed write never counts
    (tmp_path / ".checkpoint-4.tmp-1" / "state.json").write_text("{}")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-3"

    fresh = adapted()
    with torch.no_grad():
        for p in fresh.parameters():
            if p.requires_grad:
                p.normal_()
    fresh_opt = torch.optim.AdamW([p for p in fresh.parameters() if p.requires_grad], lr=0.1)
    params_before = [id(p) for p in fresh.parameters()]
    state = load_checkpoint(tmp_path / "checkpoint-3", fresh, fresh_opt)
    assert state == {"step": 3, "extra": {"epoch": 0}}
    assert [id(p) for p in fresh.parameters()] == params_before  # in place
    for (name, a), b in zip(model.named_parameters(), fresh.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)
    assert fresh_opt.state_dict()["state"][0]["step"] == 3
    # the adapter inside a checkpoint is a regular BaLoRA adapter
    loaded = balora.load(MLP().double(), tmp_path / "checkpoint-3" / "adapter")
    assert json.loads((tmp_path / "checkpoint-3" / "state.json").read_text())["step"] == 3
    assert loaded is not None


def test_load_adapter_weights_rejects_a_different_adapter(tmp_path):
    balora.save(adapted(), tmp_path)
    other = balora.apply(MLP().double(), balora.BaLoRAConfig(r=3, target_modules=["fc1", "fc2"]))
    with pytest.raises(ValueError, match="shape mismatch"):
        load_adapter_weights(other, tmp_path)
    other = balora.apply(MLP().double(), balora.BaLoRAConfig(r=2, target_modules=["fc1"]))
    with pytest.raises(ValueError, match="tensors differ"):
        load_adapter_weights(other, tmp_path)


# -- multi-process runs of examples/train_ddp.py -----------------------------------------------


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference: one process, the global batch of 16 as 2 accumulation steps of 8."""
    out = tmp_path_factory.mktemp("one")
    run("train_ddp.py", "-o", out, *STEPS, "--accumulation", 2, "--save-every", 2)
    return out


def test_two_gloo_processes_match_one_process(one_process, tmp_path):
    run("train_ddp.py", "-o", tmp_path, *STEPS, "--save-every", 2, nproc=2)
    diff = max_abs_diff(
        adapter_tensors(tmp_path / "adapter"), adapter_tensors(one_process / "adapter")
    )
    assert diff <= TOLERANCE
    # rank 0 alone wrote the checkpoints, each complete, the last two kept, nothing left over
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "checkpoint-4", "checkpoint-6"]
    assert sorted(p.name for p in (tmp_path / "checkpoint-6").iterdir()) == [
        "adapter",
        "optimizer.pt",
        "state.json",
    ]
    # the noise matters: the whole batch as one micro-batch (other noise) trains differently
    run("train_ddp.py", "-o", tmp_path / "single", *STEPS)
    other = adapter_tensors(tmp_path / "single" / "adapter")
    assert max_abs_diff(other, adapter_tensors(one_process / "adapter")) > 1e-6


def test_resume_after_a_killed_run_gives_the_same_adapter(one_process, tmp_path):
    run("train_ddp.py", "-o", tmp_path, *STEPS, "--accumulation", 2, "--save-every", 2,
        "--crash-after-step", 5, killed=True)  # fmt: skip
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    assert not (tmp_path / "adapter").exists()
    out = run("train_ddp.py", "-o", tmp_path, *STEPS, "--accumulation", 2, "--save-every", 2,
              "--resume")  # fmt: skip
    assert "resumed from" in out
    assert "at step 4" in out
    resumed = adapter_tensors(tmp_path / "adapter")
    assert max_abs_diff(resumed, adapter_tensors(one_process / "adapter")) == 0.0


@pytest.mark.slow
def test_fsdp2_fully_shard_matches_one_process(one_process, tmp_path):
    run("train_ddp.py", "-o", tmp_path, *STEPS, "--fsdp", nproc=2)
    diff = max_abs_diff(
        adapter_tensors(tmp_path / "adapter"), adapter_tensors(one_process / "adapter")
    )
    assert diff <= TOLERANCE
