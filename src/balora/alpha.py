"""The α sources: how each adapted layer gets its noise level α(x) > 0.

Every source produces a pre-activation ``z`` and `to_alpha` turns it into ``(α, log α)``:

    softplus:  α = min(softplus(z) + alpha_min, alpha_max),   log α = log(α)
    log:       log α = clamp(z, log alpha_min, log alpha_max), α = exp(log α)

Sources (k = r with ``alpha_per_rank``, else 1):

    constant   z = c                          c ∈ R^k, learned              (not input-dependent)
    layer      z = W pool(x_l) + b            W ∈ R^{k x d_in}, per layer   (no extra forward)
    backbone   z = MLP(features(x))[l]        one MLP for all layers        (one frozen forward)

All sources start at ``config.initial_alpha`` for every input (zero weights, bias set by
`inverse_alpha`). The per-element KL to the dropout prior lives here too because it is a function
of α alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from balora.config import BaLoRAConfig

FeatureFn = Callable[[nn.Module, tuple[Any, ...], dict[str, Any]], Tensor]
"""``feature_fn(model, args, kwargs) -> (batch, feature_dim)``, run with adapters disabled."""


def to_alpha(z: Tensor, config: BaLoRAConfig) -> tuple[Tensor, Tensor]:
    """Map a pre-activation to ``(α, log α)`` inside ``[alpha_min, alpha_max]``."""
    if config.alpha_param == "log":
        log_alpha = z.clamp(math.log(config.alpha_min), math.log(config.alpha_max))
        return log_alpha.exp(), log_alpha
    alpha = (F.softplus(z) + config.alpha_min).clamp(max=config.alpha_max)
    return alpha, alpha.log()


def inverse_alpha(alpha: float, config: BaLoRAConfig) -> float:
    """The pre-activation ``z`` with ``to_alpha(z)[0] == alpha``."""
    if config.alpha_param == "log":
        return math.log(alpha)
    x = alpha - config.alpha_min
    return x + math.log(-math.expm1(-x))  # log(expm1(x)), stable for large and small x


def kl_per_element(alpha: Tensor, log_alpha: Tensor, prior_alpha: float) -> Tensor:
    """KL( N(a, α a²) || N(0, α_p a²) ) of one element of A; independent of a.

    ``½ [log(α_p / α) + (α + 1) / α_p − 1]``, minimal at α = α_p where it equals 1 / (2 α_p).
    """
    return 0.5 * (math.log(prior_alpha) - log_alpha + (alpha + 1.0) / prior_alpha - 1.0)


def _num_components(config: BaLoRAConfig) -> int:
    return config.r if config.alpha_per_rank else 1


class ConstantAlpha(nn.Module):
    """A learned pre-activation per layer (or per rank component): variational-dropout LoRA."""

    def __init__(self, config: BaLoRAConfig) -> None:
        super().__init__()
        self.z = nn.Parameter(
            torch.full((_num_components(config),), inverse_alpha(config.initial_alpha, config))
        )

    def forward(self, pooled: Tensor) -> Tensor:
        # (b, d_in) -> (b, k): the same value for every example
        return self.z.expand(pooled.shape[0], -1)


class LayerAlpha(nn.Module):
    """α from the layer's own pooled input: ``z = W pool(x) + b``, d_in + 1 parameters per α."""

    def __init__(self, in_features: int, config: BaLoRAConfig) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, _num_components(config))
        nn.init.zeros_(self.linear.weight)
        nn.init.constant_(self.linear.bias, inverse_alpha(config.initial_alpha, config))

    def forward(self, pooled: Tensor) -> Tensor:
        # (b, d_in) -> (b, k); the pooled input is detached so that α does not steer the base
        # features through this path (only through the noise it injects).
        return self.linear(pooled.detach().to(self.linear.weight.dtype))


class BackboneAlphaNetwork(nn.Module):
    """An MLP mapping pooled frozen-backbone features to one α (per component) for every layer."""

    def __init__(self, feature_dim: int, num_layers: int, config: BaLoRAConfig) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.num_components = _num_components(config)
        self.net = nn.Sequential(
            nn.Linear(feature_dim, config.alpha_hidden),
            nn.GELU(),
            nn.Linear(config.alpha_hidden, num_layers * self.num_components),
        )
        last = self.net[-1]
        nn.init.zeros_(last.weight)
        nn.init.constant_(last.bias, inverse_alpha(config.initial_alpha, config))

    def forward(self, features: Tensor) -> Tensor:
        # (b, F) -> (b, L, k)
        z = self.net(features.to(self.net[0].weight.dtype))
        return z.view(features.shape[0], self.num_layers, self.num_components)


def infer_feature_dim(model: nn.Module) -> int | None:
    """The hidden width of a Hugging Face model from its config, if it has one."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for key in ("hidden_size", "n_embd", "d_model", "dim"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def masked_mean(hidden: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over positions ``(b, T, H) -> (b, H)``, counting only positions where mask is 1."""
    if mask is None:
        return hidden.mean(dim=1)
    weights = mask.to(hidden.dtype).unsqueeze(-1)  # (b, T, 1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def pool_input(x: Tensor) -> Tensor:
    """Pool a raw input to ``(b, F)``: 2-D as is, ``(b, T, d)`` over T, ``(b, C, *spatial)``
    over the spatial positions."""
    if x.dim() == 2:
        return x
    if x.dim() == 3:
        return x.mean(dim=1)
    if x.dim() > 3:
        return x.flatten(2).mean(dim=2)
    raise ValueError(f"cannot pool an input of shape {tuple(x.shape)} to (batch, features)")


def default_features(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
    """Default backbone features for the ``backbone`` α source.

    Hugging Face models (they have a ``config``): the mean over non-padding positions of the
    last hidden state (``attention_mask`` from the inputs). Other models: the input itself,
    pooled by `pool_input`.
    """
    if getattr(model, "config", None) is not None and not args:
        out = model(**{**kwargs, "output_hidden_states": True, "return_dict": True})
        hidden = out.hidden_states[-1]
        if hidden.dim() == 2:
            return hidden
        return masked_mean(hidden, kwargs.get("attention_mask"))
    tensor = args[0] if args else _first_tensor(kwargs)
    return pool_input(tensor)


def _first_tensor(kwargs: Mapping[str, Any]) -> Tensor:
    for value in kwargs.values():
        if isinstance(value, Tensor):
            return value
    raise ValueError("the default feature_fn found no tensor input; pass feature_fn to apply()")
