"""The methods built from BaLoRA layers, full fine-tuning and the deep ensemble.

lora             noise="none": the point estimate (posterior mean = LoRA)
mc_dropout       noise="none", lora_dropout kept on when sampling
balora           the adapter config as given (input-adaptive α)
balora_constant  alpha_source="constant": variational-dropout LoRA, the non-adaptive ablation
full_ft          every parameter trains, no adapters (the accuracy reference)
ensemble         M `lora` members with different seeds; the prediction averages them
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Self

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from balora.config import BaLoRAConfig
from balora.dataset import Data, Inputs
from balora.inject import apply, check_targets
from balora.io import load_state, save, write_atomic
from balora.methods.base import Method
from balora.methods.budget import FitReport, Resume
from balora.methods.heads import adapted_head, fit_probe, freeze_heads, load_head, save_head
from balora.predict import Prediction, model_output, summarize

ADAPTER_DIR = "adapter"
MODEL_FILE = "model.safetensors"


class AdapterMethod(Method):
    """A method that applies a variant of the adapter config to a fresh base model, with the
    task's head handled by ``TrainConfig.head`` (`balora.methods.heads`); saved as one adapter
    folder (`balora.save`), loaded into a freshly built model."""

    def adapter_config(self) -> BaLoRAConfig:
        return self.adapter

    def wrap(self, model: nn.Module, config: BaLoRAConfig) -> nn.Module:
        """Put the adapters on `model` (layer variants override this)."""
        return apply(model, config)

    def effective_adapter(self) -> BaLoRAConfig:
        return self.adapter_config()

    def check_model(self, model: nn.Module) -> None:
        config = self.adapter_config()
        if self.head_mode == "adapted":
            config = adapted_head(config, model)
        check_targets(model, config)

    @property
    def heads(self) -> tuple[str, ...]:
        return tuple(self.adapter.modules_to_save)

    @property
    def head_mode(self) -> str:
        return self.train_config.head if self.heads else "new"

    def build(self) -> nn.Module:
        model = self.model_factory()
        config = self.adapter_config()
        if self.head_mode == "adapted":
            config = adapted_head(config, model)
        model = self.wrap(model, config)
        if self.head_mode == "probe":
            freeze_heads(model, self.heads)
        return model

    def prepare(self, train: Data) -> nn.Module:
        if self.head_mode != "probe":
            return self.build()
        model = self.model_factory()
        fit_probe(self, model, train, self.heads)
        model = self.wrap(model, self.adapter_config())
        freeze_heads(model, self.heads)  # saved with the adapter (modules_to_save), not trained
        return model

    def save_adapter(self, model: nn.Module, directory: Path) -> None:
        """One adapter folder (and an adapted head's frozen weights)."""
        save(model, directory)
        if self.head_mode == "adapted":
            save_head(model, self.heads, directory)

    def load_adapter(self, directory: Path) -> nn.Module:
        model = load_state(self.build_seeded(), directory)
        if self.head_mode == "adapted":
            load_head(model, directory)
        return model.eval()

    def save(self, directory: str | os.PathLike[str]) -> Path:
        if self.model is None:
            raise RuntimeError(f"{self.name}: call fit() before save()")
        self.save_adapter(self.model, Path(directory) / ADAPTER_DIR)
        return Path(directory)

    def load(self, directory: str | os.PathLike[str]) -> Self:
        self.model = self.load_adapter(Path(directory) / ADAPTER_DIR)
        return self


class LoRA(AdapterMethod):
    name = "lora"
    stochastic = False

    def adapter_config(self) -> BaLoRAConfig:
        return self.adapter.replace(noise="none", lora_dropout=0.0, mc_dropout=False)


class MCDropout(AdapterMethod):
    """LoRA with dropout on the adapters' input, kept on when sampling. The rate is `dropout`,
    else the adapter config's ``lora_dropout`` when it is set, else 0.1."""

    name = "mc_dropout"

    def __init__(self, *args: Any, dropout: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if dropout is None:
            dropout = self.adapter.lora_dropout if self.adapter.lora_dropout > 0 else 0.1
        if not 0.0 < dropout < 1.0:
            raise ValueError(f"mc_dropout: dropout must be in (0, 1), got {dropout!r}")
        self.dropout = dropout

    def adapter_config(self) -> BaLoRAConfig:
        return self.adapter.replace(noise="none", lora_dropout=self.dropout, mc_dropout=True)


class BaLoRA(AdapterMethod):
    name = "balora"

    def adapter_config(self) -> BaLoRAConfig:
        return self.adapter.replace(lora_dropout=0.0, mc_dropout=False)


class BaLoRAConstant(AdapterMethod):
    name = "balora_constant"

    def adapter_config(self) -> BaLoRAConfig:
        return self.adapter.replace(alpha_source="constant", lora_dropout=0.0, mc_dropout=False)


class FullFineTune(Method):
    """Every parameter trains (learning rate `lr`, default: the budget's lr)."""

    name = "full_ft"
    stochastic = False

    def __init__(self, *args: Any, lr: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if lr is not None:
            self.train_config = type(self.train_config)(**{**vars(self.train_config), "lr": lr})

    def build(self) -> nn.Module:
        return self.model_factory().requires_grad_(True)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        if self.model is None:
            raise RuntimeError("full_ft: call fit() before save()")
        # save_model drops the duplicates of tied weights (e.g. an LM head shared with the
        # embeddings), which save_file refuses
        model = self.model
        write_atomic(Path(directory) / MODEL_FILE, lambda tmp: save_model(model, tmp))
        return Path(directory)

    def load(self, directory: str | os.PathLike[str]) -> Self:
        path = Path(directory) / MODEL_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no model weights at {path}")
        model = self.build_seeded()
        load_model(model, path)
        self.model = model.eval()
        return self


def _member_path(path: Path, m: int | str) -> Path:
    return path.with_name(f"{path.stem}.member{m}{path.suffix}")


def member_states(path: Path) -> list[Path]:
    """The ensemble members' training states kept beside the state `path` (see `Ensemble.fit`)."""
    return sorted(path.parent.glob(_member_path(path, "*").name))


class Ensemble(Method):
    """M LoRA members trained with seeds ``seed * 1000 + m``; members are averaged."""

    name = "ensemble"
    stochastic = False

    def __init__(self, *args: Any, members: int = 5, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if isinstance(members, bool) or not isinstance(members, int) or members < 2:
            raise ValueError(f"members must be an integer >= 2, got {members!r}")
        self.members: list[LoRA] = [
            LoRA(
                self.model_factory,
                self.task,
                adapter=self.adapter,
                train=self.train_config,
                gaussian=self.gaussian,
                seed=self.seed * 1000 + m,
            )
            for m in range(members)
        ]

    def fit(
        self,
        train: Data,
        val: Data | None = None,
        *,
        resume: Resume | None = None,
    ) -> FitReport:
        """Train the members one after another; with `resume`, each member's state (finished
        ones too) is kept beside its path until the last member is done."""
        states = [
            None
            if resume is None
            else replace(resume, path=_member_path(resume.path, m), keep=True)
            for m in range(len(self.members))
        ]
        reports = [
            member.fit(train, val, resume=state)
            for member, state in zip(self.members, states, strict=True)
        ]
        if resume is not None and not resume.keep:
            for state in states:
                state.path.unlink(missing_ok=True)
        self.model = self.members[0].model
        return FitReport(
            history=[r for rep in reports for r in rep.history],
            best_epoch=reports[0].best_epoch,
            best_step=reports[0].best_step,
            train_seconds=sum(r.train_seconds for r in reports),
            steps=sum(r.steps for r in reports),
            trainable_parameters=sum(r.trainable_parameters for r in reports),
            earlier_seconds=sum(r.earlier_seconds for r in reports),
        )

    def effective_adapter(self) -> BaLoRAConfig:
        return self.members[0].effective_adapter()

    def check_model(self, model: nn.Module) -> None:
        self.members[0].check_model(model)

    @torch.no_grad()
    def predict(self, inputs: Inputs, num_samples: int = 32, seed: int | None = 0) -> Prediction:
        if self.model is None:
            raise RuntimeError("ensemble: call fit() before predict()")
        outs = []
        for member in self.members:
            member.model.eval()
            outs.append(model_output(member.model, inputs))
        return summarize(torch.stack(outs), self.task, len(outs), gaussian=self.gaussian)

    def trainable_parameters(self) -> int:
        return sum(m.trainable_parameters() for m in self.members)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """One adapter folder per member: ``member-<m>/``."""
        if self.model is None:
            raise RuntimeError("ensemble: call fit() before save()")
        for m, member in enumerate(self.members):
            member.save_adapter(member.model, Path(directory) / f"member-{m}")
        return Path(directory)

    def load(self, directory: str | os.PathLike[str]) -> Self:
        for m, member in enumerate(self.members):
            member.model = member.load_adapter(Path(directory) / f"member-{m}")
        self.model = self.members[0].model
        return self


__all__ = [
    "BaLoRA",
    "BaLoRAConstant",
    "Ensemble",
    "FullFineTune",
    "LoRA",
    "MCDropout",
]
