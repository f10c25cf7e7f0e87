"""BaLoRA layer wrappers: the frozen base layer plus a stochastic low-rank update.

    x ──► base_layer ───────────────────────────────────────────────► (+) ──► y
    │                                                                  ▲
    └──► dropout ──► A x  (b, ..., r)  ──► + sqrt(α(x)) · noise ──► B ─┘ × lora_alpha / r

``A`` (r x d_in, or a conv kernel with r output channels) is the mean of the Gaussian factor
``Ω ~ N(A, α(x) A²)``; ``B`` (d_out x r, zero-initialised) is deterministic. The noise is

- ``example``: ``(|A| ⊙ E_i) x`` with ``E_i ~ N(0, 1)^{r x d_in}`` drawn once per example and
  shared by all its positions (a true weight sample per input);
- ``token``: ``sqrt((A²)(x²)) ⊙ ε`` with ``ε ~ N(0, 1)^r`` per position (local
  reparameterisation: the exact per-position marginal);
- ``none``: no noise (plain LoRA through the same code path).

Modes: training samples; eval is the posterior mean (exactly LoRA); sampling is switched on
explicitly through the shared `AdapterState` (see `balora.sampling`). `merge` folds the mean
``s B A`` into the base weight, never a sample.

One wrapper class per base type (`Linear`, `GPT2Conv1D`, `ConvNd`), chosen by `wrap` from an
ordered list of checks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from balora.alpha import ConstantAlpha, LayerAlpha, kl_per_element, to_alpha
from balora.config import BaLoRAConfig

# Bound on the random numbers of one `example` noise draw (b * r * d_in); larger batches are
# processed in chunks of examples so that memory stays bounded.
MAX_NOISE_ELEMENTS = 1 << 24


@dataclass(eq=False)
class AdapterState:
    """Run-time switches shared by all BaLoRA layers of one model."""

    config: BaLoRAConfig
    sampling: bool = False
    disabled: bool = False
    # True while training without noise (a deterministic warm-up): train mode is then LoRA.
    deterministic: bool = False
    seed: int | None = None
    # Pre-activations of the `backbone` α source for the current batch: (b, L, k).
    backbone_z: Tensor | None = None
    # True while `predict` supplies `backbone_z` for repeated samples of one batch.
    backbone_fixed: bool = False
    _generators: dict[torch.device, torch.Generator] = field(default_factory=dict)

    def generator(self, device: torch.device) -> torch.Generator | None:
        """The seeded generator for `device`, or ``None`` (global RNG) when no seed is set."""
        if self.seed is None:
            return None
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]

    def reseed(self, seed: int | None) -> None:
        self.seed = seed
        self._generators.clear()

    def randn(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        g = self.generator(like.device)
        return torch.randn(shape, generator=g, device=like.device, dtype=like.dtype)

    def rand(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        g = self.generator(like.device)
        return torch.rand(shape, generator=g, device=like.device, dtype=like.dtype)


class BaLoRALayer(nn.Module):
    """Base class of the wrappers; subclasses define how A and B act for one base type."""

    def __init__(
        self,
        base_layer: nn.Module,
        config: BaLoRAConfig,
        state: AdapterState,
        name: str,
        layer_index: int,
    ) -> None:
        super().__init__()
        check_rank(base_layer, name, config.r, type(self))
        self.base_layer = base_layer
        self.config = config
        self.state = state
        self.name = name
        self.layer_index = layer_index
        self.scaling = config.scaling
        self.merged = False
        weight = base_layer.weight
        factory = {"device": weight.device, "dtype": weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(self._a_shape(config.r), **factory))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, config.r, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear and PEFT
        self.alpha_module: nn.Module | None = None
        if config.noise == "none":  # plain LoRA: no α to infer
            pass
        elif config.alpha_source == "layer":
            self.alpha_module = LayerAlpha(self.in_features, config).to(**factory)
        elif config.alpha_source == "constant":
            self.alpha_module = ConstantAlpha(config).to(**factory)
        # backbone: α comes from the model-level network through `state`
        # Last α (detached, (b, k)) and per-example KL ((b,), with grad) of a stochastic forward.
        self.last_alpha: Tensor | None = None
        self.last_kl: Tensor | None = None

    # -- per-type geometry (overridden) -------------------------------------------------------
    in_features: int
    out_features: int

    def _a_shape(self, r: int) -> tuple[int, ...]:
        return (r, self.in_features)

    def _project_a(self, x: Tensor, weight: Tensor) -> Tensor:
        """Apply an A-shaped weight: (b, ..., d_in) -> (b, ..., r)."""
        return F.linear(x, weight)

    def _project_b(self, h: Tensor, weight: Tensor | None = None) -> Tensor:
        """Apply B (or a B-shaped `weight`): (b, ..., r) -> (b, ..., d_out)."""
        return F.linear(h, self.lora_B if weight is None else weight)

    def _pool(self, x: Tensor) -> Tensor:
        """Pool an input over its positions: (b, ..., d_in) -> (b, d_in)."""
        return x.flatten(1, -2).mean(dim=1) if x.dim() > 2 else x

    def _project_per_example(self, x: Tensor, weights: Tensor) -> Tensor:
        """Apply a different A-shaped weight to each example: weights (b, r, d_in)."""
        flat = x.reshape(x.shape[0], -1, x.shape[-1])  # (b, T, d_in)
        out = torch.bmm(flat, weights.transpose(1, 2))  # (b, T, r)
        return out.reshape(*x.shape[:-1], weights.shape[1])

    def _alpha_view(self, alpha: Tensor, h: Tensor) -> Tensor:
        """Broadcast α (b, k) against h (b, ..., r)."""
        return alpha.view(alpha.shape[0], *([1] * (h.dim() - 2)), alpha.shape[1])

    def delta_weight(self) -> Tensor:
        """The posterior-mean update ``s B A`` in the base weight's layout."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def _base_weight(self) -> Tensor:
        return self.base_layer.weight

    # -- forward ------------------------------------------------------------------------------
    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        state, config = self.state, self.config
        if state.disabled:
            return self.base_layer(x, *args, **kwargs)
        if self.merged and self.training:
            raise RuntimeError(f"{self.name}: cannot train a merged adapter; call unmerge first")
        result = self.base_layer(x, *args, **kwargs)
        stochastic = (
            (self.training and not state.deterministic) or state.sampling
        ) and config.noise != "none"
        dropout_on = config.lora_dropout > 0 and (
            self.training or (state.sampling and config.mc_dropout)
        )
        if not stochastic:
            self.last_alpha = self.last_kl = None
        if self.merged and dropout_on:
            raise RuntimeError(f"{self.name}: MC-dropout sampling needs an unmerged adapter")
        if self.merged and not stochastic:
            return result

        squeeze = x.dim() == 1  # an unbatched vector: treat as a batch of one
        xa = x.unsqueeze(0) if squeeze else x
        xa = xa.to(self.lora_A.dtype)
        if dropout_on:
            keep = 1.0 - config.lora_dropout
            xa = xa * (state.rand(tuple(xa.shape), xa) < keep).to(xa.dtype) / keep
        if stochastic:
            alpha, log_alpha = self._alpha(xa)  # (b, k)
            self._record(alpha, log_alpha)
            if config.noise == "example":
                # one per-example matmul with the sampled weight Ω_i = A + sqrt(α_i) |A| ⊙ E_i
                # (the mean is left out of Ω when it is already inside a merged weight)
                h = self._sample_example(xa, alpha.sqrt(), with_mean=not self.merged)
            else:
                noise = self._unit_noise(xa)
                h = self._alpha_view(alpha.sqrt(), noise) * noise
                if not self.merged:
                    h = self._project_a(xa, self.lora_A) + h
        else:
            h = self._project_a(xa, self.lora_A)  # rank-space activation (b, ..., r)
        delta = self.scaling * self._project_b(h)
        if squeeze:
            delta = delta.squeeze(0)
        return result + delta.to(result.dtype)

    def _noise_scale(self) -> Tensor:
        """Per-element standard deviation of Ω at α = 1, shaped like A: ``|A|``."""
        return self.lora_A.abs()

    def _unit_noise(self, x: Tensor) -> Tensor:
        """`token` noise of the rank-space activation at α = 1: (b, ..., r)."""
        scale = self._noise_scale()
        var = self._project_a(x * x, scale * scale)
        eps = self.state.randn(tuple(var.shape), var)
        return var.clamp_min(1e-30).sqrt() * eps

    def _sample_example(self, x: Tensor, alpha_sqrt: Tensor, with_mean: bool) -> Tensor:
        """`example` noise: ``Ω_i x`` with ``Ω_i = A + sqrt(α_i) (|A| ⊙ E_i)`` (or the noise
        term alone when `with_mean` is False), in chunks of examples that bound the random
        numbers drawn. x (b, ..., d_in), alpha_sqrt (b, k) -> (b, ..., r)."""
        scale = self._noise_scale()
        b = x.shape[0]
        step = max(1, MAX_NOISE_ELEMENTS // scale.numel())
        parts = []
        for start in range(0, b, step):
            chunk = x[start : start + step]
            e = self.state.randn((chunk.shape[0], *scale.shape), scale)  # (c, r, d_in, ...)
            s = alpha_sqrt[start : start + step]
            s = s.view(*s.shape, *([1] * (e.dim() - 2)))  # (c, k, 1, ...)
            weights = s * (scale * e)
            if with_mean:
                weights = weights + self.lora_A
            parts.append(self._project_per_example(chunk, weights))
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def _alpha(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.alpha_module is not None:
            z = self.alpha_module(self._pool(x))
        else:
            z_all = self.state.backbone_z
            if z_all is None:
                raise RuntimeError(
                    f"{self.name}: the backbone α was not computed; call the adapted model "
                    "itself (its forward hook computes α), not a submodule"
                )
            if z_all.shape[0] != x.shape[0]:
                raise RuntimeError(
                    f"{self.name}: the backbone α was computed for {z_all.shape[0]} examples but "
                    f"this layer sees {x.shape[0]}; the 'backbone' α source needs layers whose "
                    "first input dimension is the model's batch dimension"
                )
            z = z_all[:, self.layer_index]
        return to_alpha(z, self.config)

    def _record(self, alpha: Tensor, log_alpha: Tensor) -> None:
        self.last_alpha = alpha.detach()
        kl = kl_per_element(alpha, log_alpha, self.config.prior_alpha)  # (b, k)
        if self.config.kl_reduction == "element":
            # each α component governs numel(A) / k elements of A
            self.last_kl = kl.sum(dim=-1) * (self.lora_A.numel() / kl.shape[-1])
        else:
            self.last_kl = kl.mean(dim=-1)

    @torch.no_grad()
    def noise_moments(self, x: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """What this layer adds to its base output for input `x`, in closed form:
        ``(s·B·A·x, Var[s·B·(Ω−A)·x], α(x))``, the variance per output unit and position (the
        exact marginal of either noise structure; ``None`` and ``None`` without noise)."""
        x = x.to(self.lora_A.dtype)
        update = self.scaling * self._project_b(self._project_a(x, self.lora_A))
        if self.config.noise == "none":
            return update, None, None
        alpha, _ = self._alpha(x)  # (b, k)
        scale = self._noise_scale()
        var_h = self._project_a(x * x, scale * scale)  # (b, ..., r): Var of (scale ⊙ E) x
        var_h = self._alpha_view(alpha, var_h) * var_h
        # the rank components draw independent rows of E: their variances add through B²
        var = self.scaling**2 * self._project_b(var_h, self.lora_B * self.lora_B)
        return update, var, alpha

    # -- merging ------------------------------------------------------------------------------
    def merge(self) -> None:
        """Fold the posterior mean ``s B A`` into the base weight."""
        if self.merged:
            raise RuntimeError(f"{self.name} is already merged")
        delta = self.delta_weight()
        if not torch.isfinite(delta).all():
            raise ValueError(f"{self.name}: the adapter holds NaN or inf values; refusing to merge")
        weight = self._base_weight()
        weight.data += delta.to(weight.dtype)
        self.merged = True

    def unmerge(self) -> None:
        """Subtract the merged mean from the base weight again."""
        if not self.merged:
            raise RuntimeError(f"{self.name} is not merged")
        weight = self._base_weight()
        weight.data -= self.delta_weight().to(weight.dtype)
        self.merged = False

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"r={c.r}, scaling={self.scaling:g}, noise={c.noise!r}, alpha_source="
            f"{c.alpha_source!r}, merged={self.merged}"
        )


class Linear(BaLoRALayer):
    """Wraps ``nn.Linear`` (weight d_out x d_in)."""

    def __init__(self, base_layer: nn.Linear, *args: Any) -> None:
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        super().__init__(base_layer, *args)


class GPT2Conv1D(BaLoRALayer):
    """Wraps transformers' GPT-2 style ``Conv1D`` (a linear layer with weight d_in x d_out)."""

    def __init__(self, base_layer: nn.Module, *args: Any) -> None:
        self.in_features, self.out_features = base_layer.weight.shape
        super().__init__(base_layer, *args)

    def delta_weight(self) -> Tensor:
        return super().delta_weight().T


class ConvNd(BaLoRALayer):
    """Wraps ``nn.Conv1d`` / ``nn.Conv2d`` (groups=1, zero padding).

    A is a convolution with the base kernel's geometry and r output channels; B is a 1x1
    convolution. The `token` variance is ``conv(x², A²)`` with the same stride and padding.
    """

    def __init__(self, base_layer: nn.Conv1d | nn.Conv2d, *args: Any) -> None:
        self.in_features, self.out_features = base_layer.in_channels, base_layer.out_channels
        self._conv = F.conv1d if isinstance(base_layer, nn.Conv1d) else F.conv2d
        self._spatial = 1 if isinstance(base_layer, nn.Conv1d) else 2
        super().__init__(base_layer, *args)

    def _a_shape(self, r: int) -> tuple[int, ...]:
        return (r, self.in_features, *self.base_layer.kernel_size)

    def _project_a(self, x: Tensor, weight: Tensor, groups: int = 1) -> Tensor:
        base = self.base_layer
        return self._conv(x, weight, None, base.stride, base.padding, base.dilation, groups)

    def _project_b(self, h: Tensor, weight: Tensor | None = None) -> Tensor:
        weight = self.lora_B if weight is None else weight
        return self._conv(h, weight.view(*weight.shape, *([1] * self._spatial)))

    def _pool(self, x: Tensor) -> Tensor:
        return x.flatten(2).mean(dim=2)  # (b, C, *spatial) -> (b, C)

    def _project_per_example(self, x: Tensor, weights: Tensor) -> Tensor:
        b = x.shape[0]
        base = self.base_layer
        if all(k == 1 for k in base.kernel_size) and not any(base.padding):
            # 1x1 kernel: a batched matmul over positions, (b, r, C) @ (b, C, N), much faster
            # than a grouped convolution with b groups
            strided = x[(..., *(slice(None, None, s) for s in base.stride))]
            out = torch.bmm(weights.reshape(b, weights.shape[1], -1), strided.flatten(2))
            return out.view(b, weights.shape[1], *strided.shape[2:])
        # one grouped convolution: (1, b*C, ...) with b groups of r kernels each
        out = self._project_a(
            x.reshape(1, -1, *x.shape[2:]), weights.reshape(-1, *weights.shape[2:]), groups=b
        )
        return out.view(b, weights.shape[1], *out.shape[2:])

    def _alpha_view(self, alpha: Tensor, h: Tensor) -> Tensor:
        return alpha.view(*alpha.shape, *([1] * (h.dim() - 2)))  # (b, k, 1, ...)

    def delta_weight(self) -> Tensor:
        # (d_out, r) x (r, C_in, *k) -> (d_out, C_in, *k)
        return self.scaling * torch.tensordot(self.lora_B, self.lora_A, dims=1)

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        if x.dim() != self._spatial + 2:
            raise ValueError(
                f"{self.name}: expected a batched input with {self._spatial + 2} dimensions, "
                f"got shape {tuple(x.shape)}"
            )
        return super().forward(x, *args, **kwargs)


def _is_gpt2_conv1d(module: nn.Module) -> bool:
    cls = type(module)
    return cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers")


SUPPORTED_TYPES = "nn.Linear, transformers Conv1D (GPT-2), nn.Conv1d, nn.Conv2d"


def check_rank(module: nn.Module, name: str, r: int, cls: type[BaLoRALayer]) -> None:
    """Refuse a rank above the layer's width (before its A and B take memory)."""
    if issubclass(cls, ConvNd):
        d_in, d_out = module.in_channels, module.out_channels
    elif issubclass(cls, GPT2Conv1D):
        d_in, d_out = module.weight.shape
    else:
        d_in, d_out = module.in_features, module.out_features
    if r > max(d_in, d_out):
        raise ValueError(
            f"r={r} is larger than {name} itself ({d_in} → {d_out}): choose r <= "
            f"{max(d_in, d_out)} (LoRA uses 4 to 64)"
        )


class UnsupportedLayerError(TypeError):
    """A targeted module that no BaLoRA wrapper fits (the message lists what is supported)."""


def wrapper_class(module: nn.Module, name: str) -> type[BaLoRALayer]:
    """The wrapper class for a base layer (an ordered list of checks), or raise
    `UnsupportedLayerError`."""
    if isinstance(module, BaLoRALayer):
        raise ValueError(f"{name} is already a BaLoRA layer")
    if isinstance(module, nn.Linear):
        return Linear
    if _is_gpt2_conv1d(module):
        return GPT2Conv1D
    if isinstance(module, nn.Conv1d | nn.Conv2d):
        if module.groups != 1 or module.padding_mode != "zeros":
            raise UnsupportedLayerError(
                f"cannot adapt {name}: {type(module).__name__} with groups={module.groups}, "
                f"padding_mode={module.padding_mode!r}; only groups=1 with zero padding is "
                "supported (target the pointwise convolutions instead)"
            )
        overrides = type(module).forward not in (nn.Conv1d.forward, nn.Conv2d.forward)
        if overrides and any(k != 1 for k in module.kernel_size):
            # e.g. TF-style "same" padding applied inside forward: the A path would not see it
            raise UnsupportedLayerError(
                f"cannot adapt {name}: {type(module).__name__} overrides forward (its padding "
                f"is not in .padding) and has kernel {tuple(module.kernel_size)}; only 1x1 "
                "kernels are supported for such subclasses"
            )
        return ConvNd
    raise UnsupportedLayerError(
        f"cannot adapt {name}: unsupported module type {type(module).__name__}; "
        f"supported: {SUPPORTED_TYPES}"
    )


def wrap(
    module: nn.Module, config: BaLoRAConfig, state: AdapterState, name: str, index: int
) -> BaLoRALayer:
    """Wrap a base layer in the matching BaLoRA layer, or raise `UnsupportedLayerError`."""
    return wrapper_class(module, name)(module, config, state, name, index)
