"""Noise diagnostics: does the posterior noise reach the output, and where does it fade?

One adapted layer adds ``s·B·Ω·x`` with ``Ω ~ N(A, α A²)``; its noise is a fraction ``√α`` of
the LoRA update ``s·B·A·x``, so it only matters once the update matters. On a batch of inputs,
`noise_diagnostics` measures, per adapted layer (in one posterior-mean pass, the noise in
closed form by `BaLoRALayer.noise_moments`):

    base_norm     mean over positions of ‖W₀x‖ (the frozen layer's output)
    update_norm   mean of ‖s·B·A·x‖ (the posterior-mean update)
    noise_std     mean of sqrt(E‖s·B·(Ω−A)·x‖²) (the injected noise)
    alpha         5 / 50 / 95 % quantiles of α(x) over the inputs

and at the output, from S posterior samples:

    output_std    std over samples of the logits (centred per sample, so softmax-invariant)
                  or of the regression means, averaged over inputs and outputs
    nll_mean, nll_sampled, nll_gap   with targets: the NLL of the posterior mean (S = 0), of
                  the S-sample predictive, and mean − sampled (> 0: sampling helps)

Norms are per position over the output units (channels for convolutions).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from balora.dataset import Inputs, TaskKind
from balora.inject import backbone_alpha_preactivations, get_adapter, has_adapter
from balora.layers import BaLoRALayer, ConvNd
from balora.predict import Prediction, model_output, predict


@dataclass(frozen=True)
class LayerNoise:
    """One adapted layer's share of the output and of the noise (see the module docstring)."""

    name: str
    base_norm: float
    update_norm: float
    noise_std: float | None
    alpha_q05: float | None
    alpha_q50: float | None
    alpha_q95: float | None


@dataclass(frozen=True)
class NoiseDiagnostics:
    """`noise_diagnostics`' answer; `to_dict` for history and results files."""

    layers: list[LayerNoise]
    num_samples: int
    output_std: float
    nll_mean: float | None = None
    nll_sampled: float | None = None

    @property
    def nll_gap(self) -> float | None:
        """NLL at S = 0 minus NLL at S samples (positive: sampling lowers the NLL)."""
        if self.nll_mean is None or self.nll_sampled is None:
            return None
        return self.nll_mean - self.nll_sampled

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_samples": self.num_samples,
            "output_std": self.output_std,
            "nll_mean": self.nll_mean,
            "nll_sampled": self.nll_sampled,
            "nll_gap": self.nll_gap,
            "layers": [asdict(layer) for layer in self.layers],
        }


def _norms(t: Tensor, channels_first: bool) -> Tensor:
    """Per-position L2 norms over the output units."""
    if channels_first:
        t = t.movedim(1, -1)
    return t.double().pow(2).sum(-1).sqrt().reshape(-1)


def _captured_inputs(model: nn.Module, inputs: Inputs) -> dict[str, Tensor]:
    """Each adapted layer's input in one posterior-mean pass."""
    layers = get_adapter(model).layers
    seen: dict[str, Tensor] = {}

    def keeper(name: str):
        def hook(_module: nn.Module, args: tuple[Any, ...], _output: Any) -> None:
            seen.setdefault(name, args[0].detach())  # the first call (a module may be reused)

        return hook

    hooks = [layer.register_forward_hook(keeper(name)) for name, layer in layers.items()]
    try:
        model_output(model, inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def _layer_noise(name: str, layer: BaLoRALayer, x: Tensor) -> LayerNoise:
    conv = isinstance(layer, ConvNd)
    base = layer.base_layer(x)
    update, var, alpha = layer.noise_moments(x)
    noise_std = None
    if var is not None:
        summed = var.movedim(1, -1) if conv else var
        noise_std = float(summed.double().clamp_min(0).sum(-1).sqrt().mean())
    q = [None] * 3
    if alpha is not None:
        q = np.quantile(alpha.double().cpu().numpy(), [0.05, 0.5, 0.95]).tolist()
    return LayerNoise(
        name=name,
        base_norm=float(_norms(base, conv).mean()),
        update_norm=float(_norms(update, conv).mean()),
        noise_std=noise_std,
        alpha_q05=q[0],
        alpha_q50=q[1],
        alpha_q95=q[2],
    )


def _nll(pred: Prediction, targets: Tensor) -> float:
    if pred.task == "classification":
        p = pred.mean.double().gather(1, targets.view(-1, 1).long()).squeeze(1)
        return float(-p.clamp_min(1e-300).log().mean())
    mean = pred.mean.double().reshape(-1)
    var = pred.total.double().reshape(-1).clamp_min(1e-12)
    y = targets.double().reshape(-1).to(mean.device)
    return float((0.5 * (torch.log(2 * math.pi * var) + (y - mean) ** 2 / var)).mean())


def _output_std(samples: Tensor, task: TaskKind, gaussian: bool) -> float:
    """Std over samples (S, b, ...) of centred logits or of regression means."""
    if task == "classification":
        logits = samples.double().clamp_min(1e-300).log()  # log-probs: logits up to a shift
        values = logits - logits.mean(-1, keepdim=True)
    else:
        values = samples[..., 0] if gaussian else samples
    return float(values.double().std(0, correction=0).mean())


@torch.no_grad()
def noise_diagnostics(
    model: nn.Module,
    inputs: Inputs,
    targets: Tensor | None = None,
    *,
    task: TaskKind = "classification",
    gaussian: bool = False,
    num_samples: int = 10,
    seed: int = 0,
) -> NoiseDiagnostics:
    """Where the noise of an adapted model goes on one batch of `inputs` (module docstring).

    Works on any model: without adapters the layer list is empty and the output spread is
    whatever the model's own sampling gives (MC dropout) or zero. The model's modes are
    restored afterwards; `seed` fixes the samples.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        layers: list[LayerNoise] = []
        if has_adapter(model):
            adapter = get_adapter(model)
            captured = _captured_inputs(model, inputs)
            state = adapter.state
            if adapter.config.alpha_source == "backbone" and adapter.config.noise != "none":
                args, kwargs = ((inputs,), {}) if isinstance(inputs, Tensor) else ((), inputs)
                state.backbone_z = backbone_alpha_preactivations(model, args, dict(kwargs))
            try:
                for name, layer in adapter.layers.items():
                    if name in captured:
                        layers.append(_layer_noise(name, layer, captured[name]))
            finally:
                state.backbone_z = None
        sampled = predict(
            model,
            inputs,
            num_samples,
            task,
            seed=seed,
            keep_samples=True,
            gaussian=gaussian,
            warn_without_adapter=False,
        )
        output_std = _output_std(sampled.samples, task, gaussian)
        nll_mean = nll_sampled = None
        if targets is not None:
            mean = predict(model, inputs, 0, task, gaussian=gaussian)
            nll_mean, nll_sampled = _nll(mean, targets), _nll(sampled, targets)
        return NoiseDiagnostics(layers, num_samples, output_std, nll_mean, nll_sampled)
    finally:
        for m, mode in modes:
            m.training = mode
