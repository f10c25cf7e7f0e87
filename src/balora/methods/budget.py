"""The training budget shared by every method of a comparison (`TrainConfig`, validated on
construction) and what training reports back (`FitReport`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from balora.config import check_choice

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
    """Gradient-norm clipping, per optimizer group (the adapters and heads; the α parameters),
    so that the KL's gradient on α cannot scale the adapters' down (``None``: off)."""
    patience: int | None = None
    """Early stopping: validations (every epoch, or every eval_every steps) without
    improvement (``None``: train the whole budget)."""
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


@dataclass(frozen=True)
class Resume:
    """Where and how often the training loop writes its resumable state (not part of the
    budget: it changes nothing that training computes)."""

    path: Path
    every: int = 200
    """Steps between two writes of the state."""
    keep: bool = False
    """Keep the finished state (marked done) instead of removing it (an ensemble keeps its
    members' until the last one is done)."""
    key: str = ""
    """What the state belongs to (a hash of the method, its options, budget, seed and data):
    a state saved under another key is not resumed but discarded, with a warning."""

    def __post_init__(self) -> None:
        _positive_int("every", self.every)


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
    earlier_seconds: float = 0.0
    """Training time spent before a resume, by an earlier process (already in
    `train_seconds`; add it to a time measured around the resumed call)."""
