"""What every method shares: the training budget, the training loop and the interface.

A method is built from a model factory (a fresh base model per call), a task and a budget; it
`fit`s on training data (model selection on validation data only) and `predict`s a
`balora.Prediction` for any number of samples, so the comparison runner can treat every method
alike.

    Method(factory, task, adapter=BaLoRAConfig(...), train=TrainConfig(...))
        .fit(train: Data, val: Data | None) -> FitReport
        .predict(inputs, num_samples, seed) -> Prediction
        .save(directory) / .load(directory)      the trained state, each method its own files
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from balora.config import BaLoRAConfig, check_choice
from balora.dataset import Data, Inputs, ModelFactory, TaskKind
from balora.diagnostics import noise_diagnostics
from balora.inject import get_adapter, has_adapter, trainable_parameters
from balora.objective import kl_divergence, kl_weight_at
from balora.predict import Prediction, model_output, predict

Checkpoint = Literal["best", "last"]
HeadMode = Literal["new", "adapted", "probe"]
CHECKPOINTS: tuple[str, ...] = ("best", "last")
HEAD_MODES: tuple[str, ...] = ("new", "adapted", "probe")


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass
class TrainConfig:
    """The training budget, identical for every method of a comparison."""

    epochs: int = 3
    """Passes over the training data."""
    batch_size: int = 32
    """Examples per optimisation step."""
    lr: float = 1e-3
    """Learning rate of the adapters (and of `modules_to_save`)."""
    alpha_lr: float | None = 1e-2
    """Learning rate of the α parameters (``None``: `lr`); 1e-2 lets α(x) move within a short
    budget (docs/method-study.md)."""
    weight_decay: float = 0.0
    """AdamW weight decay (not applied to α parameters)."""
    kl_weight: float = 1.0
    """β of the ELBO."""
    kl_warmup: float = 0.0
    """Fraction of the training steps over which β warms up linearly from 0."""
    grad_clip: float | None = 1.0
    """Gradient-norm clipping (``None``: off)."""
    patience: int | None = None
    """Early stopping: epochs without validation improvement (``None``: train all epochs and
    keep the best epoch by validation NLL)."""
    max_steps: int | None = None
    """Stop after this many optimisation steps (``None``: no limit)."""
    checkpoint: Checkpoint = "best"
    """Which weights training ends with: 'best' (the lowest validation NLL over the
    validations) or 'last' (the final step: the Bayesian-LoRA literature's protocol)."""
    eval_every: int | None = None
    """Validate every this many steps, and at the end (``None``: after every epoch)."""
    head: HeadMode = "new"
    """A task's new head (`modules_to_save`): 'new' (trained with the adapters), 'adapted'
    (kept at its random initialisation, frozen, and given the same adapter as the other
    targets, so the Bayesian adapter covers it) or 'probe' (fitted alone on the frozen
    backbone first, then frozen while the adapters train). Full fine-tuning ignores it."""
    probe_steps: int = 200
    """head='probe': optimisation steps of the head alone before the adapters train."""
    noise_warmup: float = 0.0
    """Fraction of the training steps trained without noise and KL, so that B grows before
    the noise starts (a deterministic warm-up, as BayesLoRA's; a deviation from the paper)."""
    diagnostics: int = 32
    """Validation examples on which `balora.noise_diagnostics` is recorded at every
    validation (0: off)."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        _positive_int("epochs", self.epochs)
        _positive_int("batch_size", self.batch_size)
        for name in ("lr", "alpha_lr"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {self.kl_weight!r}")
        if not 0.0 <= self.kl_warmup < 1.0:
            raise ValueError(f"kl_warmup must be in [0, 1), got {self.kl_warmup!r}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip!r}")
        if self.patience is not None:
            _positive_int("patience", self.patience)
        if self.max_steps is not None:
            _positive_int("max_steps", self.max_steps)
        self.checkpoint = check_choice("checkpoint", self.checkpoint, CHECKPOINTS)  # type: ignore[assignment]
        self.head = check_choice("head", self.head, HEAD_MODES)  # type: ignore[assignment]
        if self.eval_every is not None:
            _positive_int("eval_every", self.eval_every)
        _positive_int("probe_steps", self.probe_steps)
        if not 0.0 <= self.noise_warmup < 1.0:
            raise ValueError(f"noise_warmup must be in [0, 1), got {self.noise_warmup!r}")
        if isinstance(self.diagnostics, bool) or not isinstance(self.diagnostics, int):
            raise ValueError(f"diagnostics must be an integer >= 0, got {self.diagnostics!r}")
        if self.diagnostics < 0:
            raise ValueError(f"diagnostics must be >= 0, got {self.diagnostics!r}")


@dataclass
class FitReport:
    """What training did: the history (one record per validation: epoch, step, mean training
    NLL and KL since the last record, validation NLL, noise diagnostics), the epoch and step of
    the weights kept, cost."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = -1
    best_step: int = -1
    train_seconds: float = 0.0
    steps: int = 0
    trainable_parameters: int = 0


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


class Method:
    """Base class: trains one model (`self.model`) with the shared loop; `predict` samples it.

    Subclasses set `name` and build the model in `build` (apply adapters, choose what trains).
    """

    name: ClassVar[str] = ""
    stochastic: ClassVar[bool] = True
    """Whether `predict` depends on the number of samples."""

    def __init__(
        self,
        model_factory: ModelFactory,
        task: TaskKind = "classification",
        *,
        adapter: BaLoRAConfig | None = None,
        train: TrainConfig | None = None,
        gaussian: bool = False,
        seed: int = 0,
    ) -> None:
        if task not in ("classification", "regression"):
            raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
        if gaussian and task != "regression":
            raise ValueError("gaussian=True is for task='regression'")
        self.model_factory = model_factory
        self.task: TaskKind = task
        self.adapter = adapter or BaLoRAConfig()
        self.train_config = train or TrainConfig()
        self.gaussian = gaussian
        self.seed = seed
        self.model: nn.Module | None = None

    # -- to override ------------------------------------------------------------------------
    def build(self) -> nn.Module:
        """A fresh model ready to train (adapters applied, the rest frozen)."""
        raise NotImplementedError

    def parameter_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Optimizer groups: α parameters get `alpha_lr` and no weight decay."""
        cfg = self.train_config
        alpha, rest = [], []
        for name, p in model.named_parameters():
            if p.requires_grad:
                (alpha if "alpha" in name else rest).append(p)
        groups = [{"params": rest, "lr": cfg.lr, "weight_decay": cfg.weight_decay}]
        if alpha:
            groups.append({"params": alpha, "lr": cfg.alpha_lr or cfg.lr, "weight_decay": 0.0})
        return groups

    # -- shared ------------------------------------------------------------------------------
    def fit(self, train: Data, val: Data | None = None) -> FitReport:
        """Train with the shared budget; keeps the epoch with the best validation NLL."""
        # the method's seed drives initialisation and training noise; the caller's global RNG
        # is left as it was
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.model = self.prepare(train)
            return train_model(self, self.model, train, val)

    def prepare(self, train: Data) -> nn.Module:
        """The model ready for the shared loop (default: `build`; a method that must look at
        the training data first, such as a head probe, overrides it)."""
        return self.build()

    def predict(self, inputs: Inputs, num_samples: int = 32, seed: int | None = 0) -> Prediction:
        """A `Prediction` from `num_samples` posterior samples (0: the point estimate). The
        frozen prefix before the first adapted layer runs once per batch (`balora.prefix`): the
        methods here are random only inside their adapters."""
        if self.model is None:
            raise RuntimeError(f"{self.name}: call fit() before predict()")
        return predict(
            self.model,
            inputs,
            num_samples=num_samples if self.stochastic else 0,
            task=self.task,
            seed=seed,
            gaussian=self.gaussian,
            cache_prefix=True,
            warn_without_adapter=False,
        )

    def effective_adapter(self) -> BaLoRAConfig:
        """The adapter options this method trains with (what a run records)."""
        return self.adapter

    def check_model(self, model: nn.Module) -> None:
        """Raise what `build` would raise on `model` (a fresh base model), without training:
        bad targets, unsupported layers, a rank too large. (Nothing to check by default.)"""

    def trainable_parameters(self) -> int:
        if self.model is None:
            raise RuntimeError(f"{self.name}: call fit() first")
        return trainable_parameters(self.model)[0]

    # -- persistence -------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write what the trained method needs to predict again into `directory` (created if
        needed; every file written atomically). Returns the folder."""
        raise NotImplementedError(f"saving a trained {self.name!r} method is not supported")

    def load(self, directory: str | os.PathLike[str]) -> Self:
        """Restore the trained state that `save` wrote into this method (built with the same
        options, not fitted); returns the method, ready to `predict`."""
        raise NotImplementedError(f"loading a trained {self.name!r} method is not supported")

    def build_seeded(self) -> nn.Module:
        """`build` under the method's seed, leaving the caller's global RNG as it was (the
        initial values are overwritten by `load`)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return self.build()


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


def train_model(method: Method, model: nn.Module, train: Data, val: Data | None) -> FitReport:
    """The shared loop: AdamW, the ELBO for adapted models, validation after every epoch (or
    every ``eval_every`` steps), the best or the last weights kept (``checkpoint``)."""
    cfg = method.train_config
    report = FitReport(trainable_parameters=trainable_parameters(model)[0])
    opt = torch.optim.AdamW(method.parameter_groups(model))
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    quiet_steps = int(cfg.noise_warmup * total_steps)  # deterministic warm-up: no noise, no KL
    kl_warmup = int(cfg.kl_warmup * (total_steps - quiet_steps))
    state = get_adapter(model).state if has_adapter(model) else None
    uses_kl = state is not None and get_adapter(model).config.noise != "none"
    probe = None
    if val is not None and cfg.diagnostics > 0:
        probe = val.select(slice(0, min(len(val), cfg.diagnostics)))
    generator = torch.Generator().manual_seed(method.seed)
    best = {"nll": math.inf, "state": None}
    stale = 0
    sums = {"nll": 0.0, "kl": 0.0, "seen": 0}

    def validate(epoch: int, step: int) -> None:
        nonlocal stale
        seen = max(sums["seen"], 1)
        record: dict[str, Any] = {
            "epoch": epoch,
            "step": step,
            "train_nll": sums["nll"] / seen,
            "train_kl": sums["kl"] / seen,
        }
        sums.update(nll=0.0, kl=0.0, seen=0)
        if val is not None:
            record["val_nll"] = evaluate_nll(method, model, val, cfg.batch_size * 2)
            if record["val_nll"] < best["nll"]:
                best["nll"], stale = record["val_nll"], 0
                report.best_epoch, report.best_step = epoch, step
                if cfg.checkpoint == "best":
                    best["state"] = {
                        k: v.detach().clone()
                        for k, v in model.named_parameters()
                        if v.requires_grad
                    }
            else:
                stale += 1
        if probe is not None:
            diagnostics = noise_diagnostics(
                model, probe.inputs, probe.targets, task=method.task, gaussian=method.gaussian
            )
            record["noise"] = diagnostics.to_dict()
        model.train()
        report.history.append(record)

    start = time.perf_counter()
    bar = tqdm(total=total_steps, desc=f"train {method.name}", disable=not cfg.progress)
    step = 0
    try:
        for epoch in range(cfg.epochs):
            model.train()
            for batch in train.batches(cfg.batch_size, shuffle=True, generator=generator):
                quiet = step < quiet_steps
                if state is not None:
                    state.deterministic = quiet
                output = model_output(model, batch.inputs)
                nll = nll_loss(output, batch.targets, method.task, method.gaussian)
                loss = nll
                if uses_kl and not quiet:
                    kl = kl_divergence(model)
                    beta = kl_weight_at(step - quiet_steps, cfg.kl_weight, kl_warmup)
                    loss = nll + beta * kl / len(train)
                    sums["kl"] += kl.item() * len(batch)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"{method.name}: the training loss became {loss.item()} at step {step}; "
                        "lower the learning rate"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip is not None:
                    params = [p for g in opt.param_groups for p in g["params"]]
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                sums["nll"] += nll.item() * len(batch)
                sums["seen"] += len(batch)
                step += 1
                bar.update(1)
                bar.set_postfix(nll=f"{nll.item():.3f}")
                if step >= total_steps:
                    break
                if cfg.eval_every is not None and step % cfg.eval_every == 0:
                    validate(epoch, step)
            done = step >= total_steps
            if cfg.eval_every is None or done:
                validate(epoch, step)
            if done or (cfg.patience is not None and stale >= cfg.patience):
                break
    finally:
        if state is not None:
            state.deterministic = False
        bar.close()
    if best["state"] is not None:
        with torch.no_grad():
            params = dict(model.named_parameters())
            for k, v in best["state"].items():
                params[k].copy_(v)
    else:  # no validation data, or the last weights asked for
        report.best_epoch = report.history[-1]["epoch"]
        report.best_step = step
    report.train_seconds = time.perf_counter() - start
    report.steps = step
    model.eval()
    return report
