"""`BaLoRATrainer`: the KL term's normalisation under gradient accumulation (against a
hand-computed ELBO), separate NLL / KL logs, adapter checkpoints and resume, and 2 gloo
processes against one process with the same global batch."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import balora
from balora.inject import get_adapter
from balora.integrations.distributed import training_noise
from tests.conftest import tiny_bert
from tests.distributed_launch import adapter_tensors, max_abs_diff, run

transformers = pytest.importorskip("transformers")
from balora.integrations.trainer import (  # noqa: E402
    COMPLETE_MARKER,
    BaLoRATrainer,
    last_complete_checkpoint,
)

N = 7  # 2 micro-batches of 4 and 3: a short last batch


def make_model() -> nn.Module:
    model = tiny_bert()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0  # base-model dropout draws from the global RNG
    torch.manual_seed(1)
    config = balora.BaLoRAConfig(
        r=2, target_modules=["query", "value"], modules_to_save=["classifier"]
    )
    balora.apply(model, config)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for layer in get_adapter(model).layers.values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.5)
        for layer in get_adapter(model).layers.values():  # α(x) varies with the input
            layer.alpha_module.linear.weight.normal_(0.0, 1.0, generator=g)
    return model.double().train()


def dataset(n: int = N) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 64, (n, 6), generator=g)
    labels = torch.randint(0, 2, (n,), generator=g)
    return [{"input_ids": ids[i], "labels": labels[i]} for i in range(n)]


def training_args(tmp_path, **kw) -> transformers.TrainingArguments:
    base = {
        "output_dir": str(tmp_path),
        "max_steps": 1,
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 2,
        "learning_rate": 1e-2,
        "lr_scheduler_type": "constant",
        "max_grad_norm": 0.0,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": 0,
    }
    return transformers.TrainingArguments(**{**base, **kw})


class Recorder(transformers.TrainerCallback):
    """The gradients the optimizer sees."""

    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_kl_normalisation_matches_a_hand_computed_elbo(tmp_path):
    batches = []

    def collate(features):
        batch = transformers.default_data_collator(features)
        batches.append(batch)
        return batch

    recorder = Recorder()
    trainer = BaLoRATrainer(
        model=make_model(),
        args=training_args(tmp_path),
        train_dataset=dataset(),
        data_collator=collate,
        callbacks=[recorder],
        kl_weight=0.5,
    )
    trainer.train()
    assert [len(b["labels"]) for b in batches[:2]] == [4, 3]

    # by hand: the mean of the micro-batch NLLs (the Trainer's convention) plus
    # β / N times the per-example KL averaged over all 7 examples of the global batch
    model = make_model()
    nlls, kls = [], []
    for g, batch in enumerate(batches[:2]):
        with training_noise(model, seed=0, step=0, accumulation_index=g, rank=0, world_size=1):
            logits = model(input_ids=batch["input_ids"]).logits
        nlls.append(F.cross_entropy(logits, batch["labels"]))
        kls.append(balora.kl_divergence(model) * len(batch["labels"]))
    nll = (nlls[0] + nlls[1]) / 2
    kl = (kls[0] + kls[1]) / N
    loss = nll + 0.5 * kl / N
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert sorted(grads) == sorted(recorder.grads)
    for name, grad in grads.items():
        torch.testing.assert_close(recorder.grads[name], grad, rtol=1e-10, atol=1e-12, msg=name)
    # the KL term has a real gradient here (α(x) varies), so a wrong weight would show
    alpha_grads = [g for n, g in grads.items() if "alpha" in n]
    assert max(g.abs().max().item() for g in alpha_grads) > 1e-6

    logs = trainer.state.log_history[0]
    assert logs["nll"] == pytest.approx(nll.item(), rel=1e-9)
    assert logs["kl"] == pytest.approx(kl.item(), rel=1e-9)
    assert logs["kl_term"] == pytest.approx(0.5 * kl.item() / N, rel=1e-9)
    assert logs["kl_weight"] == 0.5
    assert logs["loss"] == pytest.approx(loss.item(), rel=1e-6)  # the Trainer sums in float32
    # evaluation is the posterior mean: the NLL only
    metrics = trainer.evaluate(dataset())
    model.eval()
    all_ids = torch.stack([d["input_ids"] for d in dataset()])
    all_labels = torch.stack([d["labels"] for d in dataset()])
    assert metrics["eval_loss"] == pytest.approx(
        F.cross_entropy(trainer.model.eval()(input_ids=all_ids).logits, all_labels).item(),
        rel=1e-6,
    )


def test_kl_warmup_and_bad_options(tmp_path):
    trainer = BaLoRATrainer(
        model=make_model(),
        args=training_args(tmp_path, max_steps=2, gradient_accumulation_steps=1),
        train_dataset=dataset(8),
        kl_warmup_steps=2,
    )
    trainer.train()
    assert [h["kl_weight"] for h in trainer.state.log_history[:2]] == [0.0, 0.5]
    with pytest.raises(ValueError, match="no BaLoRA adapters"):
        BaLoRATrainer(model=tiny_bert(), args=training_args(tmp_path), train_dataset=dataset())
    with pytest.raises(ValueError, match="kl_weight"):
        BaLoRATrainer(
            model=make_model(), args=training_args(tmp_path), train_dataset=dataset(), kl_weight=-1
        )


def _train(tmp_path, max_steps, resume=None, save_steps=2):
    args = training_args(
        tmp_path,
        max_steps=max_steps,
        gradient_accumulation_steps=1,
        save_strategy="steps",
        save_steps=save_steps,
    )
    trainer = BaLoRATrainer(model=make_model(), args=args, train_dataset=dataset(24))
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def test_checkpoints_hold_the_adapter_and_resume_gives_the_same_result(tmp_path):
    full = _train(tmp_path / "full", max_steps=5)
    ckpt = tmp_path / "full" / "checkpoint-4"
    assert (ckpt / COMPLETE_MARKER).is_file()
    assert (ckpt / "adapter_model.safetensors").is_file()
    assert not (ckpt / "model.safetensors").exists()  # the adapter, not the full model
    assert balora.load(tiny_bert(), ckpt) is not None  # a regular BaLoRA adapter

    # a run "killed" after step 3: checkpoint-2 complete, checkpoint-4 half-written
    killed = tmp_path / "killed"
    _train(killed, max_steps=3)
    shutil.rmtree(killed / "checkpoint-3")  # the Trainer also saves at its last step
    (killed / "checkpoint-4").mkdir()
    (killed / "checkpoint-4" / "adapter_config.json").write_text("{")
    with pytest.warns(UserWarning, match="incomplete checkpoint"):
        assert last_complete_checkpoint(killed) == str(killed / "checkpoint-2")
    with pytest.warns(UserWarning, match="incomplete checkpoint"):
        resumed = _train(killed, max_steps=5, resume=True)
    for (name, a), b in zip(full.model.named_parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)


# -- multi-process runs of examples/train_hf_trainer.py ----------------------------------------

ARGS = ["--max-steps", 6, "--per-device-batch-size", 4, "--dtype", "float64"]
TOLERANCE = 1e-12  # float64, same global batch and noise; measured 0.0


def test_two_gloo_processes_match_one_process(tmp_path):
    run("train_hf_trainer.py", "-o", tmp_path / "one", *ARGS, "--accumulation", 2)
    run("train_hf_trainer.py", "-o", tmp_path / "two", *ARGS, "--export-peft", tmp_path / "peft",
        nproc=2)  # fmt: skip
    one = adapter_tensors(tmp_path / "one" / "adapter")
    assert max_abs_diff(adapter_tensors(tmp_path / "two" / "adapter"), one) <= TOLERANCE
    assert (tmp_path / "peft" / "adapter_config.json").is_file()


@pytest.mark.slow
def test_accelerate_launch_matches_one_process(tmp_path):
    run("train_hf_trainer.py", "-o", tmp_path / "one", *ARGS, "--accumulation", 2)
    run("train_hf_trainer.py", "-o", tmp_path / "two", *ARGS, nproc=2, launcher="accelerate")
    one = adapter_tensors(tmp_path / "one" / "adapter")
    assert max_abs_diff(adapter_tensors(tmp_path / "two" / "adapter"), one) <= TOLERANCE
