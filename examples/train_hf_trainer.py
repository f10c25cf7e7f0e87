"""BaLoRA with the Hugging Face Trainer, on one process or many (torchrun / accelerate launch).

    python examples/train_hf_trainer.py -o runs/hf
    torchrun --nproc-per-node 2 examples/train_hf_trainer.py -o runs/hf
    accelerate launch --multi_gpu --num_processes 2 examples/train_hf_trainer.py -o runs/hf
    python examples/train_hf_trainer.py -o runs/hf --resume          # after a killed run
    python examples/train_hf_trainer.py -o runs/hf --export-peft runs/hf/peft

A random-init tiny BERT and a synthetic task keep the example offline; swap in
``AutoModelForSequenceClassification.from_pretrained(...)`` and your tokenised dataset. The run
writes ``checkpoint-<step>/`` (adapter + optimizer, complete once ``balora_checkpoint.json``
exists) and the final adapter to ``<output-dir>/adapter``; ``--export-peft`` also writes the
posterior mean as a PEFT LoRA adapter (``PeftModel.from_pretrained`` loads it).
"""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    TrainerCallback,
    TrainingArguments,
)

import balora
from balora.integrations.distributed import save_adapter
from balora.integrations.peft import to_peft
from balora.integrations.trainer import BaLoRATrainer


def tiny_bert(seed: int) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=2,
        hidden_dropout_prob=0.0,  # base-model dropout uses the global RNG (seeded alike on
        attention_probs_dropout_prob=0.0,  # every rank); BaLoRA's noise is per rank
    )
    return BertForSequenceClassification(config)


def synthetic_dataset(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Label 1 iff token 7 occurs; sequences of 10 tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(8, 64, (n, 10), generator=g)
    labels = torch.randint(0, 2, (n,), generator=g)
    ids[labels == 1, 3] = 7
    return [
        {
            "input_ids": ids[i],
            "attention_mask": torch.ones(10, dtype=torch.long),
            "labels": labels[i],
        }
        for i in range(n)
    ]


class CrashAfter(TrainerCallback):
    """Testing: SIGKILL the process after optimizer step `step` (a killed run)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-o", "--output-dir", type=Path, required=True)
    p.add_argument("--max-steps", type=int, default=20)
    p.add_argument("--per-device-batch-size", type=int, default=8)
    p.add_argument("--accumulation", type=int, default=1)
    p.add_argument("--num-train", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--save-steps", type=int, default=0, help="checkpoint every k steps (0: off)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    p.add_argument("--crash-after-step", type=int, default=0, help="testing: SIGKILL after step k")
    p.add_argument("--export-peft", type=Path, help="also write a PEFT LoRA adapter here")
    args = p.parse_args()

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    model = tiny_bert(args.seed)
    config = balora.BaLoRAConfig(
        r=4, target_modules=["query", "value"], modules_to_save=["classifier"]
    )
    balora.apply(model, config)  # lora_A draws from the seeded global RNG: same on every rank
    model.to(getattr(torch, args.dtype))
    training_args = TrainingArguments(
        output_dir=str(args.output_dir),
        max_steps=args.max_steps,
        per_device_train_batch_size=args.per_device_batch_size,
        gradient_accumulation_steps=args.accumulation,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        seed=args.seed,
        logging_steps=5,
        save_strategy="steps" if args.save_steps else "no",
        save_steps=args.save_steps or 500,
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        ddp_backend="gloo" if distributed and not torch.cuda.is_available() else None,
        disable_tqdm=True,
    )
    trainer = BaLoRATrainer(
        model=model,
        args=training_args,
        train_dataset=synthetic_dataset(args.num_train, args.seed),
        callbacks=[CrashAfter(args.crash_after_step)] if args.crash_after_step else None,
    )
    trainer.train(resume_from_checkpoint=True if args.resume else None)
    save_adapter(trainer.model, args.output_dir / "adapter")  # rank 0, atomic
    if args.export_peft and trainer.is_world_process_zero():
        to_peft(trainer.model, args.export_peft)
    if trainer.is_world_process_zero():
        print({k: round(v, 4) for k, v in trainer.state.log_history[-2].items()}, flush=True)


if __name__ == "__main__":
    main()
