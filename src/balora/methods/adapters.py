"""The methods built from BaLoRA layers, full fine-tuning and the deep ensemble.

lora             noise="none": the point estimate (posterior mean = LoRA)
mc_dropout       noise="none", lora_dropout kept on when sampling
balora           the adapter config as given (input-adaptive α)
balora_constant  alpha_source="constant": variational-dropout LoRA, the non-adaptive ablation
full_ft          every parameter trains, no adapters (the accuracy reference)
ensemble         M `lora` members with different seeds; the prediction averages them
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from balora.config import BaLoRAConfig
from balora.inject import apply
from balora.methods.base import Data, FitReport, Inputs, Method, train_model
from balora.predict import Prediction, model_output, summarize


class AdapterMethod(Method):
    """A method that applies a variant of the adapter config to a fresh base model."""

    def adapter_config(self) -> BaLoRAConfig:
        return self.adapter

    def build(self) -> nn.Module:
        return apply(self.model_factory(), self.adapter_config())


class LoRA(AdapterMethod):
    name = "lora"
    stochastic = False

    def adapter_config(self) -> BaLoRAConfig:
        return self.adapter.replace(noise="none", lora_dropout=0.0, mc_dropout=False)


class MCDropout(AdapterMethod):
    name = "mc_dropout"

    def __init__(self, *args: Any, dropout: float = 0.1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
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

    def fit(self, train: Data, val: Data | None = None) -> FitReport:
        reports = [member.fit(train, val) for member in self.members]
        self.model = self.members[0].model
        return FitReport(
            history=[r for rep in reports for r in rep.history],
            best_epoch=reports[0].best_epoch,
            train_seconds=sum(r.train_seconds for r in reports),
            steps=sum(r.steps for r in reports),
            trainable_parameters=sum(r.trainable_parameters for r in reports),
        )

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


__all__ = [
    "BaLoRA",
    "BaLoRAConstant",
    "Ensemble",
    "FullFineTune",
    "LoRA",
    "MCDropout",
    "train_model",
]
