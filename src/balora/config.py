"""`BaLoRAConfig`: every option of a BaLoRA adapter, validated on construction.

A bad value raises `ValueError` naming the field and the value, so a typo in a config file or a
CLI flag fails before any model is touched. The config is JSON-serialisable (`to_dict` /
`from_dict`) and is stored next to the adapter weights by `balora.save`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

AlphaSource = Literal["layer", "backbone", "constant"]
NoiseStructure = Literal["example", "token", "none"]
KLReduction = Literal["element", "layer"]
AlphaParam = Literal["softplus", "log"]

ALPHA_SOURCES: tuple[str, ...] = ("layer", "backbone", "constant")
NOISE_STRUCTURES: tuple[str, ...] = ("example", "token", "none")
KL_REDUCTIONS: tuple[str, ...] = ("element", "layer")
ALPHA_PARAMS: tuple[str, ...] = ("softplus", "log")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """`value` (or a str-valued enum's value) if it is one of `choices`, else a `ValueError`
    naming the option `name`."""
    value = getattr(value, "value", value)  # accept str-valued enums
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def _positive(name: str, value: Any, *, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
        raise ValueError(
            f"{name} must be a finite {'integer' if integer else 'number'}, got {value!r}"
        )
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


@dataclass
class BaLoRAConfig:
    """Configuration of BaLoRA adapters.

    The layer is ``y = f0(x) + (lora_alpha / r) * B (Ω x)`` with the stochastic factor
    ``Ω ~ N(A, α(x) A²)`` element-wise; see the README and METHOD.md for the equations.
    """

    r: int = 8
    """Rank of the adapter."""
    lora_alpha: float = 16.0
    """LoRA scaling numerator: the update is scaled by ``lora_alpha / r``."""
    target_modules: Sequence[str] | str = ("query", "value")
    """Modules to adapt. A string is a regular expression matched against the full module name
    (``re.fullmatch``); each entry of a list matches a module whose full name equals it or ends
    with ``"." + entry``."""
    modules_to_save: Sequence[str] = ()
    """Extra modules (e.g. a new classification head) trained in full and saved with the
    adapter; matched like list entries of `target_modules`."""
    prior_p: float = 0.5
    """Dropout rate of the prior ``N(0, α_p A²)`` with ``α_p = p / (1 - p)``. 0.5 (α_p = 1, the
    noise as large as the update) won every validation screen of the regime study, over 0.1
    and 0.3 (docs/regime.md)."""
    alpha_source: AlphaSource = "layer"
    """Where α(x) comes from: ``layer`` (a linear map of the layer's own pooled input),
    ``backbone`` (an MLP on pooled features of the frozen backbone) or ``constant`` (a learned
    per-layer scalar, not input-dependent)."""
    alpha_per_rank: bool = False
    """One α per rank component instead of one per layer."""
    alpha_init: float | None = None
    """Initial α (``None``: the prior's ``α_p``, where the KL is smallest)."""
    alpha_param: AlphaParam = "softplus"
    """``softplus``: α = softplus(z) + alpha_min; ``log``: α = exp(z), z clamped to the bounds."""
    alpha_min: float = 1e-6
    """Floor of α (keeps log α finite)."""
    alpha_max: float = 100.0
    """Ceiling of α."""
    alpha_hidden: int = 256
    """Hidden width of the ``backbone`` α network (two layers)."""
    alpha_feature_dim: int | None = None
    """Width of the pooled backbone features; ``None`` infers it from ``model.config``."""
    noise: NoiseStructure = "example"
    """``example``: one weight sample per example shared by all its positions; ``token``: local
    reparameterisation, independent per position; ``none``: plain LoRA."""
    kl_reduction: KLReduction = "element"
    """``element``: the KL is summed over the r * d_in elements of A (the weight-space ELBO),
    which pins α(x) near α_p (docs/method-study.md); ``layer``: one KL term per adapted layer
    (per α component), which frees α(x). The per-element KL won the regime study's validation
    screens on text, images and the LLM; MOFs chose the per-layer one (docs/regime.md)."""
    lora_dropout: float = 0.0
    """Dropout on the adapter's input during training."""
    mc_dropout: bool = False
    """Keep `lora_dropout` active when sampling (the MC-dropout baseline)."""

    def __post_init__(self) -> None:
        _positive("r", self.r, integer=True)
        _positive("lora_alpha", self.lora_alpha)
        if isinstance(self.target_modules, str):
            if not self.target_modules:
                raise ValueError("target_modules must not be empty, got ''")
            try:
                re.compile(self.target_modules)
            except re.error as e:
                raise ValueError(
                    f"target_modules {self.target_modules!r} is not a valid regular expression "
                    f"({e}); give module names as a list, or fix the expression"
                ) from None
        else:
            self.target_modules = _names("target_modules", self.target_modules)
            if not self.target_modules:
                raise ValueError("target_modules must name at least one module, got []")
        self.modules_to_save = _names("modules_to_save", self.modules_to_save)
        if not (isinstance(self.prior_p, (int, float)) and 0.0 < self.prior_p < 1.0):
            raise ValueError(f"prior_p must be in (0, 1), got {self.prior_p!r}")
        self.alpha_source = check_choice("alpha_source", self.alpha_source, ALPHA_SOURCES)
        self.noise = check_choice("noise", self.noise, NOISE_STRUCTURES)
        self.kl_reduction = check_choice("kl_reduction", self.kl_reduction, KL_REDUCTIONS)
        self.alpha_param = check_choice("alpha_param", self.alpha_param, ALPHA_PARAMS)
        _positive("alpha_min", self.alpha_min)
        _positive("alpha_max", self.alpha_max)
        if self.alpha_max <= self.alpha_min:
            raise ValueError(
                f"alpha_max must exceed alpha_min, got alpha_max={self.alpha_max!r} "
                f"<= alpha_min={self.alpha_min!r}"
            )
        if self.alpha_init is not None:
            _positive("alpha_init", self.alpha_init)
            if not self.alpha_min < self.alpha_init < self.alpha_max:
                raise ValueError(
                    f"alpha_init must lie in (alpha_min, alpha_max) = "
                    f"({self.alpha_min}, {self.alpha_max}), got {self.alpha_init!r}"
                )
        _positive("alpha_hidden", self.alpha_hidden, integer=True)
        if self.alpha_feature_dim is not None:
            _positive("alpha_feature_dim", self.alpha_feature_dim, integer=True)
        if not (isinstance(self.lora_dropout, (int, float)) and 0.0 <= self.lora_dropout < 1.0):
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if not isinstance(self.mc_dropout, bool):
            raise ValueError(f"mc_dropout must be a bool, got {self.mc_dropout!r}")
        if not isinstance(self.alpha_per_rank, bool):
            raise ValueError(f"alpha_per_rank must be a bool, got {self.alpha_per_rank!r}")
        if self.mc_dropout and self.lora_dropout == 0.0:
            raise ValueError("mc_dropout=True needs lora_dropout > 0, got lora_dropout=0.0")

    @property
    def scaling(self) -> float:
        """The LoRA scale ``lora_alpha / r``."""
        return self.lora_alpha / self.r

    @property
    def prior_alpha(self) -> float:
        """The prior's relative variance ``α_p = p / (1 - p)``."""
        return self.prior_p / (1.0 - self.prior_p)

    @property
    def initial_alpha(self) -> float:
        """α at initialisation: `alpha_init`, or ``α_p`` when unset."""
        return self.prior_alpha if self.alpha_init is None else self.alpha_init

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (sequences become lists)."""
        out = dataclasses.asdict(self)
        for key in ("target_modules", "modules_to_save"):
            if not isinstance(out[key], str):
                out[key] = list(out[key])
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BaLoRAConfig:
        """Build a config from `to_dict` output; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown BaLoRAConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(data))

    def replace(self, **changes: Any) -> BaLoRAConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _names(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence | set | frozenset):
        raise ValueError(f"{name} must be a list of module names, got {value!r}")
    out = tuple(value)
    for item in out:
        if not isinstance(item, str) or not item:
            raise ValueError(f"{name} entries must be non-empty strings, got {item!r}")
    return out
