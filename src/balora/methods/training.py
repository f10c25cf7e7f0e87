"""The shared training loop of every method: AdamW, the ELBO for adapted models, validation
after every epoch (or every ``eval_every`` steps) with the noise diagnostics, the best or the
last weights kept, and a resumable state.

Resuming: given a `Resume` (a path and a number of steps), the loop writes its whole state
every ``every`` steps (trainable weights, optimiser, the step, the batch order's generator
at the start of the epoch, the global RNG that draws the noise, the history, the best weights
so far; `torch.save` of tensors and plain values, read back with ``weights_only=True``),
atomically. A run started again with the same state path continues from there and ends with
exactly the weights an uninterrupted run would have; the file is removed at the end.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from balora.dataset import Data, TaskKind
from balora.diagnostics import noise_diagnostics
from balora.inject import get_adapter, has_adapter, trainable_parameters
from balora.io import write_atomic
from balora.methods.budget import FitReport, Resume
from balora.objective import kl_divergence, kl_weight_at
from balora.predict import model_output

if TYPE_CHECKING:
    from balora.methods.base import Method


def nll_loss(output: Tensor, targets: Tensor, task: TaskKind, gaussian: bool) -> Tensor:
    """Mean negative log-likelihood of a minibatch: cross-entropy, Gaussian NLL with a
    (mean, log-variance) head, or squared error (a unit-variance Gaussian, constant dropped)."""
    if task == "classification":
        return F.cross_entropy(output, targets)
    if gaussian:
        mean, log_var = output[..., 0], output[..., 1]
        return 0.5 * (log_var + (targets - mean) ** 2 / log_var.exp()).mean() + 0.5 * math.log(
            2 * math.pi
        )
    return 0.5 * F.mse_loss(output.reshape(targets.shape), targets)


def evaluate_nll(method: Method, model: nn.Module, data: Data, batch_size: int) -> float:
    """Mean NLL of the point estimate (posterior mean) on `data`."""
    was_training = model.training
    model.eval()
    total = 0.0
    with torch.no_grad():
        for batch in data.batches(batch_size):
            out = model_output(model, batch.inputs)
            loss = nll_loss(out, batch.targets, method.task, method.gaussian)
            total += loss.item() * len(batch)
    model.train(was_training)
    return total / len(data)


class _Loop:
    """One training run's state, so that it can be saved and resumed."""

    def __init__(self, method: Method, model: nn.Module, train: Data, val: Data | None) -> None:
        cfg = method.train_config
        self.method, self.model, self.train, self.val, self.cfg = method, model, train, val, cfg
        self.opt = torch.optim.AdamW(method.parameter_groups(model))
        total = cfg.epochs * math.ceil(len(train) / cfg.batch_size)
        self.total = total if cfg.max_steps is None else min(total, cfg.max_steps)
        self.quiet = int(cfg.noise_warmup * self.total)  # deterministic warm-up: no noise/KL
        self.kl_warmup = int(cfg.kl_warmup * (self.total - self.quiet))
        self.state = get_adapter(model).state if has_adapter(model) else None
        self.uses_kl = self.state is not None and get_adapter(model).config.noise != "none"
        self.probe = None
        if val is not None and cfg.diagnostics > 0:
            self.probe = val.select(slice(0, min(len(val), cfg.diagnostics)))
        self.generator = torch.Generator().manual_seed(method.seed)
        self.report = FitReport(trainable_parameters=trainable_parameters(model)[0])
        self.best: dict[str, Any] = {"nll": math.inf, "state": None}
        self.stale = 0
        self.sums = {"nll": 0.0, "kl": 0.0, "seen": 0}
        self.step = self.epoch = self.batch = 0
        self.epoch_generator = self.generator.get_state()
        self.seconds = 0.0

    # -- validation ------------------------------------------------------------------------
    def validate(self) -> None:
        model, cfg = self.model, self.cfg
        seen = max(self.sums["seen"], 1)
        record: dict[str, Any] = {
            "epoch": self.epoch,
            "step": self.step,
            "train_nll": self.sums["nll"] / seen,
            "train_kl": self.sums["kl"] / seen,
        }
        self.sums = {"nll": 0.0, "kl": 0.0, "seen": 0}
        if self.val is not None:
            record["val_nll"] = evaluate_nll(self.method, model, self.val, cfg.batch_size * 2)
            # weights from a deterministic warm-up never trained with noise: not a candidate
            candidate = self.step > self.quiet or self.quiet == 0
            if candidate and record["val_nll"] < self.best["nll"]:
                self.best["nll"], self.stale = record["val_nll"], 0
                self.report.best_epoch, self.report.best_step = self.epoch, self.step
                if cfg.checkpoint == "best":
                    self.best["state"] = self._weights()
            elif candidate:
                self.stale += 1
        if self.probe is not None:
            diagnostics = noise_diagnostics(
                model,
                self.probe.inputs,
                self.probe.targets,
                task=self.method.task,
                gaussian=self.method.gaussian,
            )
            record["noise"] = diagnostics.to_dict()
        model.train()
        self.report.history.append(record)

    def _weights(self) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in self.model.named_parameters() if v.requires_grad}

    # -- one step ----------------------------------------------------------------------------
    def optimise(self, batch: Data) -> float:
        method, model, cfg = self.method, self.model, self.cfg
        quiet = self.step < self.quiet
        if self.state is not None:
            self.state.deterministic = quiet
        output = model_output(model, batch.inputs)
        nll = nll_loss(output, batch.targets, method.task, method.gaussian)
        loss = nll
        if self.uses_kl and not quiet:
            kl = kl_divergence(model)
            beta = kl_weight_at(self.step - self.quiet, cfg.kl_weight, self.kl_warmup)
            loss = nll + beta * kl / len(self.train)
            self.sums["kl"] += kl.item() * len(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"{method.name}: the training loss became {loss.item()} at step {self.step}; "
                "lower the learning rate"
            )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            # per optimizer group: the KL's gradient reaches only the α parameters and, summed
            # over every element of A, can be 1e4 times the adapters' own; one joint norm scaled
            # the adapters' gradient down with it and slowed their training (docs/regime.md)
            for group in self.opt.param_groups:
                torch.nn.utils.clip_grad_norm_(group["params"], cfg.grad_clip)
        self.opt.step()
        self.sums["nll"] += nll.item() * len(batch)
        self.sums["seen"] += len(batch)
        self.step += 1
        return nll.item()

    def batches(self) -> Iterator[Data]:
        """This epoch's shuffled batches, from where a resumed run left off."""
        self.generator.set_state(self.epoch_generator)
        it = self.train.batches(self.cfg.batch_size, shuffle=True, generator=self.generator)
        for i, batch in enumerate(it):
            if i >= self.batch:
                self.batch = i + 1
                yield batch

    # -- saving and resuming -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": 1,
            "weights": self._weights(),
            "optimizer": self.opt.state_dict(),
            "counters": [self.step, self.epoch, self.batch, self.stale],
            "epoch_generator": self.epoch_generator,
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "sums": dict(self.sums),
            "best": dict(self.best),
            "report": [self.report.history, self.report.best_epoch, self.report.best_step],
            "seconds": self.seconds,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        params = dict(self.model.named_parameters())
        if set(state["weights"]) != {k for k, v in params.items() if v.requires_grad}:
            raise ValueError("the saved training state belongs to another model or method")
        with torch.no_grad():
            for k, v in state["weights"].items():
                params[k].copy_(v)
        self.opt.load_state_dict(state["optimizer"])
        self.step, self.epoch, self.batch, self.stale = state["counters"]
        self.epoch_generator = state["epoch_generator"]
        torch.set_rng_state(state["rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.sums, self.best = state["sums"], state["best"]
        history, self.report.best_epoch, self.report.best_step = state["report"]
        self.report.history = history
        self.seconds = state["seconds"]

    def save(self, resume: Resume, done: bool = False) -> None:
        state = {**self.state_dict(), "key": resume.key, "done": done}
        write_atomic(resume.path, lambda tmp: torch.save(state, tmp))

    # -- the loop ----------------------------------------------------------------------------
    def run(self, resume: Resume | None) -> FitReport:
        cfg = self.cfg
        saving = resume is not None
        state_path = resume.path if resume is not None else None
        if saving and state_path.is_file():
            try:
                state = torch.load(state_path, map_location="cpu", weights_only=True)
            except Exception as e:  # a torn or foreign file: say so rather than guess
                raise ValueError(f"cannot resume from {state_path}: {e}") from e
            if state.get("key", "") != resume.key:
                warnings.warn(
                    f"{state_path} holds the training state of another configuration; "
                    "starting afresh",
                    stacklevel=2,
                )
                os.unlink(state_path)
                state = None
        else:
            state = None
        if state is not None:
            self.load_state_dict(state)
            self.report.earlier_seconds = self.seconds
            if state.get("done"):  # a finished training kept for its caller (an ensemble)
                self.report.train_seconds, self.report.steps = self.seconds, self.step
                self.model.eval()
                return self.report
        start = time.perf_counter() - self.seconds
        bar = tqdm(
            total=self.total,
            initial=self.step,
            desc=f"train {self.method.name}",
            disable=not cfg.progress,
        )
        try:
            while self.epoch < cfg.epochs and self.step < self.total:
                self.model.train()
                for batch in self.batches():
                    nll = self.optimise(batch)
                    bar.update(1)
                    bar.set_postfix(nll=f"{nll:.3f}")
                    if self.step >= self.total:
                        break
                    if cfg.eval_every is not None and self.step % cfg.eval_every == 0:
                        self.validate()
                    if saving and self.step % resume.every == 0:
                        self.seconds = time.perf_counter() - start
                        self.save(resume)
                done = self.step >= self.total
                if cfg.eval_every is None or done:
                    self.validate()
                if done or (cfg.patience is not None and self.stale >= cfg.patience):
                    break
                self.epoch += 1
                self.batch = 0
                self.epoch_generator = self.generator.get_state()
        finally:
            if self.state is not None:
                self.state.deterministic = False
            bar.close()
        if self.best["state"] is not None:
            with torch.no_grad():
                params = dict(self.model.named_parameters())
                for k, v in self.best["state"].items():
                    params[k].copy_(v)
        else:  # no validation data, or the last weights asked for
            self.report.best_epoch = self.report.history[-1]["epoch"]
            self.report.best_step = self.step
        self.report.train_seconds = time.perf_counter() - start
        self.report.steps = self.step
        self.model.eval()
        if saving and resume.keep:
            self.seconds = self.report.train_seconds
            self.save(resume, done=True)
        elif saving and state_path.is_file():
            os.unlink(state_path)
        return self.report


def train_model(
    method: Method,
    model: nn.Module,
    train: Data,
    val: Data | None,
    *,
    resume: Resume | None = None,
) -> FitReport:
    """Train `model` with `method`'s budget (module docstring); resumable through `resume`."""
    return _Loop(method, model, train, val).run(resume)
