"""Every method of a comparison behind one name: build with `make_method(name, ...)`.

Names: lora, lora_ts (temperature-scaled), mc_dropout, ensemble, blob, balora, balora_constant,
laplace, full_ft. Each is trained by the same loop and budget (`TrainConfig`), predicts a
`balora.Prediction`, and saves and loads its own trained state.
"""

from __future__ import annotations

from typing import Any

from balora.dataset import ModelFactory, TaskKind
from balora.methods.adapters import BaLoRA, BaLoRAConstant, Ensemble, FullFineTune, LoRA, MCDropout
from balora.methods.base import Method
from balora.methods.blob import BLoB
from balora.methods.budget import FitReport, Resume, TrainConfig
from balora.methods.laplace import Laplace
from balora.methods.temperature import TemperatureScaledLoRA

METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (
        LoRA,
        TemperatureScaledLoRA,
        MCDropout,
        Ensemble,
        BLoB,
        BaLoRA,
        BaLoRAConstant,
        Laplace,
        FullFineTune,
    )
}


def make_method(
    name: str, model_factory: ModelFactory, task: TaskKind = "classification", **kwargs: Any
) -> Method:
    """Build the method called `name` (see `METHODS`); options go to its constructor."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {sorted(METHODS)}")
    return METHODS[name](model_factory, task, **kwargs)


__all__ = ["METHODS", "FitReport", "Method", "Resume", "TrainConfig", "make_method"]
