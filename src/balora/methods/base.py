"""The interface every method shares (the budget is `balora.methods.budget`, the loop
`balora.methods.training`).

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

import os
from pathlib import Path
from typing import Any, ClassVar, Self

import torch
from torch import nn

from balora.config import BaLoRAConfig
from balora.dataset import Data, Inputs, ModelFactory, TaskKind
from balora.inject import trainable_parameters
from balora.methods.budget import FitReport, Resume, TrainConfig
from balora.methods.training import train_model
from balora.predict import Prediction, predict


class Method:
    """Base class: trains one model (`self.model`) with the shared loop; `predict` samples it.

    Subclasses set `name` and build the model in `build` (apply adapters, choose what trains).
    """

    name: ClassVar[str] = ""
    stochastic: ClassVar[bool] = True
    """Whether `predict` depends on the number of samples."""
    trains_as: ClassVar[str | None] = None
    """The method whose training this one repeats exactly (same loop, model and seed) before
    its own post-processing; `compare` trains such a pair once and lets both use it."""
    revision: ClassVar[int] = 1
    """The revision of this method's training and prediction code. Bump it with a change that
    alters what a seeded run computes (a change to the shared loop: every method's), so that a
    resumed `compare` retrains instead of reusing runs made by the older code. Revision 1 adds
    nothing to a run's fingerprint: runs written before revisions existed keep theirs."""

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
    def fit(
        self,
        train: Data,
        val: Data | None = None,
        *,
        resume: Resume | None = None,
    ) -> FitReport:
        """Train with the shared budget (`TrainConfig`: which checkpoint is kept, validation,
        the head, the warm-up); with `resume`, a resumable state is written as training goes
        (a run started again with it continues)."""
        # the method's seed drives initialisation and training noise; the caller's global RNGs
        # (CPU and CUDA) are left as they were
        with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
            torch.manual_seed(self.seed)
            self.model = self.prepare(train)
            return train_model(self, self.model, train, val, resume=resume)

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
