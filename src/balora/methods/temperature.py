"""LoRA with temperature scaling: the first thing a practitioner tries for calibration.

    1. fit LoRA exactly as the `lora` method does (same loop, budget and checkpoint);
    2. fit one temperature T > 0 on the validation split by minimising the NLL of
       softmax(logits / T) (Guo et al., "On Calibration of Modern Neural Networks", 2017),
       in float64 with L-BFGS over log T;
    3. predict softmax(logits / T): the same accuracy as LoRA, recalibrated confidence.

Classification only; it needs validation data (a regression task is refused at construction).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Self

import torch

from balora.dataset import Data, Inputs
from balora.io import write_json
from balora.methods.adapters import LoRA
from balora.methods.budget import FitReport
from balora.predict import Prediction, model_output, summarize

TEMPERATURE_FILE = "temperature.json"


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, steps: int = 100) -> float:
    """The T > 0 minimising the mean NLL of softmax(logits / T) against `labels`."""
    logits, labels = logits.detach().double().cpu(), labels.detach().long().cpu()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    if not math.isfinite(t) or t <= 0:
        raise FloatingPointError(f"lora_ts: the fitted temperature is {t}")
    return t


class TemperatureScaledLoRA(LoRA):
    """LoRA, then a temperature fitted on the validation split."""

    name = "lora_ts"
    stochastic = False
    trains_as = "lora"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.task != "classification":
            raise NotImplementedError(
                "lora_ts: temperature scaling divides class logits, so it is for "
                "classification tasks only"
            )
        self.temperature: float | None = None

    def fit(self, train: Data, val: Data | None = None, **options: Any) -> FitReport:
        if val is None:
            raise ValueError("lora_ts fits its temperature on validation data: give val")
        report = super().fit(train, val, **options)
        self.temperature = fit_temperature(self._logits(val), val.targets)
        report.history[-1]["temperature"] = self.temperature
        return report

    @torch.no_grad()
    def _logits(self, data: Data) -> torch.Tensor:
        self.model.eval()
        batch_size = self.train_config.batch_size * 2
        return torch.cat([model_output(self.model, b.inputs) for b in data.batches(batch_size)])

    @torch.no_grad()
    def predict(self, inputs: Inputs, num_samples: int = 32, seed: int | None = 0) -> Prediction:
        if self.model is None or self.temperature is None:
            raise RuntimeError("lora_ts: call fit() before predict()")
        self.model.eval()
        logits = model_output(self.model, inputs) / self.temperature
        return summarize(logits.unsqueeze(0), "classification", 0)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        if self.temperature is None:
            raise RuntimeError("lora_ts: call fit() before save()")
        super().save(directory)
        write_json(Path(directory) / TEMPERATURE_FILE, {"temperature": self.temperature})
        return Path(directory)

    def load(self, directory: str | os.PathLike[str]) -> Self:
        super().load(directory)
        path = Path(directory) / TEMPERATURE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no temperature at {path}")
        try:
            self.temperature = float(json.loads(path.read_text())["temperature"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"cannot read the temperature in {path}: {e}") from e
        return self
