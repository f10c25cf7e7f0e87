"""`BaLoRATrainer`: the Hugging Face ``Trainer`` with BaLoRA's KL term.

The model's own loss is the NLL (``labels`` in the batch, or `compute_loss_func`); the trainer
adds ``β_t · KL / N`` so that one optimizer step minimises the minibatch negative ELBO over the
*global* batch (all accumulation steps on all processes):

    step loss = NLL (as the Trainer normalises it)  +  β_t · (1/N) · (1/B) Σ_{i in batch} KL(x_i)

with N the global training-set size (``len(train_dataset)`` by default), B the number of
examples in the global batch (counted, so a short last batch is weighted right) and
``β_t = kl_weight_at(global_step, kl_weight, kl_warmup_steps)``. The Trainer divides a
micro-batch loss by the number of accumulation steps G unless the model normalised it itself
(``num_items_in_batch``), and DDP averages over the W processes; micro-batch j's KL term is
weighted by ``b_j · W · G / B`` (or ``b_j · W / B``) to undo exactly that.

Logged next to the Trainer's ``loss`` (which is the ELBO): ``nll``, ``kl`` (per example, summed
over layers; its floor is not zero), ``kl_term`` (what entered the loss) and ``kl_weight``.
Training noise comes from `balora.integrations.distributed.training_noise` keyed by
``(args.seed, global_step, micro-batch)``: independent across ranks, reproducible, and the
same after resuming. Checkpoints hold the adapter (`balora.save`, atomic) instead of the full
model, and count only once complete: rank 0 writes ``balora_checkpoint.json`` last, and
``resume_from_checkpoint=True`` skips checkpoints without it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from balora.inject import get_adapter
from balora.integrations.distributed import load_adapter_weights, training_noise, unwrap
from balora.io import save, write_json
from balora.objective import kl_divergence, kl_weight_at

COMPLETE_MARKER = "balora_checkpoint.json"


def _num_examples(inputs: Mapping[str, Any]) -> int:
    """The batch size of a Trainer batch: the first dimension of its first tensor."""
    for value in inputs.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
    raise ValueError(f"cannot tell the batch size of a batch with keys {sorted(inputs)}")


class BaLoRATrainer(Trainer):
    """``transformers.Trainer`` for a model prepared by `balora.apply` (or `balora.load`).

    ``BaLoRATrainer(model, args, train_dataset=..., num_train=None, kl_weight=1.0,
    kl_warmup_steps=0, token_level_loss=False, **trainer_kwargs)``. `num_train` defaults to
    ``len(train_dataset)``; pass it for an iterable dataset. ``token_level_loss=True`` keeps
    transformers' normalisation of the NLL by the number of label tokens of the global batch
    (``num_items_in_batch``); use it only for models whose loss honours that argument (the
    causal LMs), and count `num_train` in the same unit (tokens). The default treats the
    model's loss as a mean over its micro-batch. Evaluation and prediction use the posterior
    mean (eval mode); for S-sample predictions call `balora.predict` on ``trainer.model``.
    """

    def __init__(
        self,
        *args: Any,
        num_train: int | None = None,
        kl_weight: float = 1.0,
        kl_warmup_steps: int = 0,
        token_level_loss: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if not token_level_loss:
            # transformers treats every model whose forward takes **kwargs as normalising its
            # loss by num_items_in_batch; many (e.g. sequence classifiers) return the plain
            # micro-batch mean, which would then be summed, not averaged, over accumulation
            # steps. Ask for the micro-batch mean and let the Trainer average.
            self.model_accepts_loss_kwargs = False
        get_adapter(unwrap(self.model))  # a clear error for a model without adapters
        if num_train is None and self.train_dataset is not None:
            try:
                num_train = len(self.train_dataset)
            except TypeError:
                num_train = None
        if self.train_dataset is not None and num_train is None:
            raise ValueError("num_train is needed for a train_dataset without len()")
        if num_train is not None and (isinstance(num_train, bool) or num_train <= 0):
            raise ValueError(f"num_train must be a positive integer, got {num_train!r}")
        if kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {kl_weight!r}")
        if kl_warmup_steps < 0:
            raise ValueError(f"kl_warmup_steps must be >= 0, got {kl_warmup_steps!r}")
        if self.args.n_gpu > 1:
            raise ValueError(
                "BaLoRATrainer does not support torch.nn.DataParallel (several GPUs in one "
                "process): launch one process per GPU with torchrun or accelerate launch"
            )
        self.num_train = num_train
        self.kl_weight = kl_weight
        self.kl_warmup_steps = kl_warmup_steps
        self._global_examples: int | None = None  # examples in the current global batch
        self._micro_index = 0  # accumulation step within the current optimizer step
        self._sums = torch.zeros(4, dtype=torch.float64)  # nll, kl sum, examples, steps
        self._beta = kl_weight  # β of the last training step (logged)

    # -- the loss ----------------------------------------------------------------------------
    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: Any) -> Any:
        batch_samples, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        local = sum(_num_examples(batch) for batch in batch_samples)
        if self.accelerator.num_processes > 1:
            count = torch.tensor(local, device=self.args.device, dtype=torch.long)
            local = int(self.accelerator.reduce(count, reduction="sum").item())
        self._global_examples = local
        self._micro_index = 0
        self._sums[3] += 1
        return batch_samples, num_items

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        index, self._micro_index = self._micro_index, self._micro_index + 1
        with training_noise(
            model,
            self.args.seed,
            self.state.global_step,
            index,
            rank=self.accelerator.process_index,
            world_size=self.accelerator.num_processes,
        ):
            return super().training_step(model, inputs, num_items_in_batch)

    def _scaled_for_accumulation(self, num_items_in_batch: Any) -> bool:
        """Whether the Trainer leaves this loss undivided by the accumulation steps (mirrors
        ``Trainer.training_step``)."""
        flag = getattr(self, "loss_is_scaled_for_ga", None)
        if flag is not None:
            return bool(flag)
        return (
            self.model_accepts_loss_kwargs and num_items_in_batch is not None
        ) or self.compute_loss_func is not None

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        if not model.training:  # evaluation: the posterior mean, NLL only
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.num_train is None:
            raise ValueError("BaLoRATrainer needs num_train (or a train_dataset with len())")
        b = _num_examples(inputs)
        loss, outputs = super().compute_loss(
            model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        kl = kl_divergence(unwrap(model)).to(loss.dtype)  # mean over this micro-batch
        world = self.accelerator.num_processes
        scaled = self._scaled_for_accumulation(num_items_in_batch)
        accumulation = 1 if scaled else getattr(self, "current_gradient_accumulation_steps", 1)
        total = self._global_examples or b * world * accumulation
        beta = self._beta = kl_weight_at(
            self.state.global_step, self.kl_weight, self.kl_warmup_steps
        )
        kl_term = beta * kl * (b * world * accumulation / total) / self.num_train
        with torch.no_grad():
            nll_share = loss.detach().double().cpu() / accumulation
            self._sums[:3] += torch.stack(
                [nll_share, kl.detach().double().cpu() * b, torch.tensor(float(b))]
            )
        loss = loss + kl_term
        return (loss, outputs) if return_outputs else loss

    # -- logging -----------------------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._sums[3] > 0:
            sums = self._sums.to(self.args.device)
            if self.accelerator.num_processes > 1:
                sums = self.accelerator.reduce(sums, reduction="sum")
            nll, kl_sum, examples, steps = sums.tolist()
            kl = kl_sum / max(examples, 1.0)
            logs["nll"] = nll / steps  # steps (and the NLL) are summed over ranks
            logs["kl"] = kl
            logs["kl_term"] = self._beta * kl / self.num_train
            logs["kl_weight"] = self._beta
            self._sums.zero_()
        super().log(logs, start_time)

    # -- checkpoints: the adapter, not the full model -----------------------------------------
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        save(unwrap(self.model), output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        self.accelerator.wait_for_everyone()  # every rank's RNG file is written
        if self.args.should_save:
            folder = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            path = Path(self._get_output_dir(trial=trial)) / folder
            write_json(path / COMPLETE_MARKER, {"global_step": self.state.global_step})
        self.accelerator.wait_for_everyone()

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        load_adapter_weights(model if model is not None else self.model, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        best = self.state.best_model_checkpoint
        if best is not None:
            load_adapter_weights(self.model, best)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> Any:
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"no complete checkpoint in {self.args.output_dir}")
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)


def last_complete_checkpoint(output_dir: str | os.PathLike[str]) -> str | None:
    """The newest ``checkpoint-<step>`` of a `BaLoRATrainer` run that was written completely."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    found = []
    for path in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        step = path.name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-")
        if step.isdigit() and path.is_dir():
            if (path / COMPLETE_MARKER).is_file():
                found.append((int(step), path))
            else:
                warnings.warn(f"skipping incomplete checkpoint {path}", stacklevel=2)
    return str(max(found)[1]) if found else None
