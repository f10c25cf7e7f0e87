"""BLoB: mean-field Gaussian LoRA (Wang et al., "BLoB: Bayesian Low-Rank Adaptation by
Backpropagation for Large Language Models", NeurIPS 2024), built from the BaLoRA layers.

    Ω ~ q(Ω) = Π_ij N(A_ij, σ_ij²),   σ = softplus(ρ)   (ρ learned, one per element of A)
    p(Ω)     = Π_ij N(0, σ_p²)                        (σ_p = `prior_std`)
    KL       = Σ_ij [ log(σ_p / σ_ij) + (σ_ij² + A_ij²) / (2 σ_p²) − ½ ]

B stays deterministic, as in BLoB. Unlike BaLoRA the noise level is learned per element and
does not depend on the input, and the prior does not scale with A, so the KL depends on A too
(it pulls A towards 0).

The layers are the BaLoRA wrappers with three hooks changed (`BLoBMixin`): the per-element
noise scale is σ instead of |A| (so the ``example`` noise is ``(σ ⊙ E_i) x``, one weight sample
per example, and ``token`` is the local reparameterisation ``sqrt((σ²)(x²)) ⊙ ε``), α is fixed
to 1, and the recorded KL is the closed form above. So `balora.kl_divergence`, the shared
training loop (β · KL / N) and `balora.predict` work unchanged; eval mode is the mean (LoRA).

Choices and where they differ from the BLoB code:

- σ = softplus(ρ) (BLoB's code offers softplus or σ = G²), initialised to `init_std` = 2e-3
  for every element: BLoB's default σ = G², G ~ U(0.05/√2, 0.05) spans 1.25e-3 to 2.5e-3. A is
  kaiming-uniform with bound 1/sqrt(d_in) (0.05 at d_in = 384), so σ starts at a few percent
  of |A|: the model starts as LoRA and learns how much noise the data allow.
- σ_p = `prior_std` = 0.2, BLoB's ``bayes_beta`` default.
- The KL enters the shared ELBO as β · KL / N (N training examples, β = `kl_weight`). BLoB's
  code instead weights it by 1/M (M minibatches per epoch, optionally re-weighted over the
  epoch) and steps it with a second SGD optimiser; one loop and one budget for every method is
  the point of this framework, so we do not copy that.
- Noise: one independent weight sample per example (``noise="example"``, the default) or per
  position (``"token"``); BLoB's code shares one sample per batch and decorrelates examples with
  flipout sign flips.
- `kl_reduction` and the α options of the config do not apply. `balora.save` / `balora.load`
  do not support BLoB layers.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from balora.config import BaLoRAConfig
from balora.inject import apply_with
from balora.layers import AdapterState, BaLoRALayer, ConvNd, GPT2Conv1D, Linear, wrapper_class
from balora.methods.adapters import AdapterMethod

DEFAULT_PRIOR_STD = 0.2
DEFAULT_INIT_STD = 2e-3


def gaussian_kl(mean: Tensor, std: Tensor, prior_std: float) -> Tensor:
    """``Σ KL( N(mean, std²) || N(0, prior_std²) )`` over all elements (a scalar)."""
    return (
        math.log(prior_std) - std.log() + (std * std + mean * mean) / (2 * prior_std**2) - 0.5
    ).sum()


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))  # log(expm1(y)), stable for small and large y


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


class BLoBMixin:
    """Turns a BaLoRA wrapper into a BLoB layer: learned per-element σ on A, Gaussian prior."""

    lora_A: nn.Parameter
    config: BaLoRAConfig
    last_alpha: Tensor | None
    last_kl: Tensor | None

    def __init__(
        self, base_layer: nn.Module, *args: Any, prior_std: float, init_std: float
    ) -> None:
        super().__init__(base_layer, *args)  # type: ignore[call-arg]
        self.alpha_module = None  # the noise level is σ, not α(x)
        self.prior_std = prior_std
        self.init_std = init_std
        self.lora_A_rho = nn.Parameter(torch.full_like(self.lora_A, _inverse_softplus(init_std)))

    def std(self) -> Tensor:
        """σ = softplus(ρ), shaped like A (floored so that log σ stays finite)."""
        return F.softplus(self.lora_A_rho).clamp_min(1e-12)

    def kl(self) -> Tensor:
        """The closed-form KL of this layer's A to the prior, at least in float32."""
        dtype = torch.promote_types(self.lora_A.dtype, torch.float32)
        return gaussian_kl(self.lora_A.to(dtype), self.std().to(dtype), self.prior_std)

    # -- the BaLoRALayer hooks ------------------------------------------------------------------
    def _noise_scale(self) -> Tensor:
        return self.std()

    def _alpha(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # σ already holds the scale; the wrapper multiplies the unit noise by sqrt(α) = 1
        ones = torch.ones(x.shape[0], 1, device=x.device, dtype=x.dtype)
        return ones, torch.zeros_like(ones)

    def _record(self, alpha: Tensor, log_alpha: Tensor) -> None:
        self.last_alpha = None
        # the KL does not depend on the input: every example carries the whole layer's KL,
        # so the batch mean taken by `balora.kl_divergence` is the KL itself
        self.last_kl = self.kl().expand(alpha.shape[0])

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"r={c.r}, scaling={c.scaling:g}, noise={c.noise!r}, prior_std={self.prior_std:g}, "
            f"merged={self.merged}"  # type: ignore[attr-defined]
        )


class BLoBLinear(BLoBMixin, Linear):
    """BLoB on ``nn.Linear``."""


class BLoBGPT2Conv1D(BLoBMixin, GPT2Conv1D):
    """BLoB on transformers' GPT-2 ``Conv1D``."""


class BLoBConvNd(BLoBMixin, ConvNd):
    """BLoB on ``nn.Conv1d`` / ``nn.Conv2d``."""


BLOB_CLASSES: dict[type[BaLoRALayer], type[BaLoRALayer]] = {
    Linear: BLoBLinear,
    GPT2Conv1D: BLoBGPT2Conv1D,
    ConvNd: BLoBConvNd,
}


def wrap_blob(
    module: nn.Module,
    config: BaLoRAConfig,
    state: AdapterState,
    name: str,
    index: int,
    *,
    prior_std: float = DEFAULT_PRIOR_STD,
    init_std: float = DEFAULT_INIT_STD,
) -> BaLoRALayer:
    """Wrap a base layer in the matching BLoB layer (the same type rules as `balora.apply`)."""
    cls = BLOB_CLASSES[wrapper_class(module, name)]
    return cls(module, config, state, name, index, prior_std=prior_std, init_std=init_std)


def apply_blob(
    model: nn.Module,
    config: BaLoRAConfig,
    *,
    prior_std: float = DEFAULT_PRIOR_STD,
    init_std: float = DEFAULT_INIT_STD,
) -> nn.Module:
    """`balora.apply` with BLoB layers; ``config.noise`` must be ``example`` or ``token``."""
    _check_positive("prior_std", prior_std)
    _check_positive("init_std", init_std)
    if config.noise == "none":
        raise ValueError("BLoB needs noise='example' or 'token', got noise='none'")
    if config.alpha_source == "backbone":
        raise ValueError("BLoB layers have no α; use alpha_source='constant' in their config")
    fn = partial(wrap_blob, prior_std=prior_std, init_std=init_std)
    return apply_with(model, config, feature_fn=None, wrap_fn=fn)


class BLoB(AdapterMethod):
    """BLoB-style mean-field Gaussian LoRA, trained with the shared ELBO loop."""

    name = "blob"

    def __init__(
        self,
        *args: Any,
        prior_std: float = DEFAULT_PRIOR_STD,
        init_std: float = DEFAULT_INIT_STD,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        _check_positive("prior_std", prior_std)
        _check_positive("init_std", init_std)
        self.prior_std = prior_std
        self.init_std = init_std

    def adapter_config(self) -> BaLoRAConfig:
        noise = "example" if self.adapter.noise == "none" else self.adapter.noise
        return self.adapter.replace(
            noise=noise,
            alpha_source="constant",
            alpha_per_rank=False,
            lora_dropout=0.0,
            mc_dropout=False,
        )

    def wrap(self, model: nn.Module, config: BaLoRAConfig) -> nn.Module:
        return apply_blob(model, config, prior_std=self.prior_std, init_std=self.init_std)
