"""Injection: put BaLoRA layers into any ``nn.Module``, and take them out again.

Target matching (as PEFT): a string is a regular expression that must match a module's full
name (``re.fullmatch``); each entry of a list matches a module whose full name equals it or
ends with ``"." + entry``. `apply` freezes every parameter except the adapters', the α
network's and those of ``modules_to_save``, and remembers the original ``requires_grad`` flags so
that `unload` and `merge_and_unload` give the model back as it was.

The model-level bookkeeping lives in ``model._balora`` (an `Adapter`); a forward pre-hook on the
model clears the per-forward KL records and, for the ``backbone`` α source, runs the frozen
backbone once (no grad, adapters disabled, eval mode) to compute every layer's α for the batch.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from balora.alpha import BackboneAlphaNetwork, FeatureFn, default_features, infer_feature_dim
from balora.config import BaLoRAConfig
from balora.layers import AdapterState, BaLoRALayer, check_rank, wrap, wrapper_class

ALPHA_NET_NAME = "balora_alpha_net"
ADAPTER_KEY = "_balora"
"""Where `apply` keeps the `Adapter` in the model's ``__dict__`` (not a submodule, not a
parameter, so it never reaches a state dict)."""


@dataclass(eq=False)
class Adapter:
    """What `apply` attached to a model."""

    config: BaLoRAConfig
    state: AdapterState
    layers: dict[str, BaLoRALayer]
    modules_to_save: list[str]
    feature_fn: FeatureFn
    hook: RemovableHandle
    requires_grad: dict[str, bool] = field(default_factory=dict)
    in_backbone_pass: bool = False


def get_adapter(model: nn.Module) -> Adapter:
    """The `Adapter` of a model prepared by `apply`, or a `ValueError`. A ``torch.compile``
    wrapper is looked through (its ``_orig_mod`` is the adapted model)."""
    adapter = _find_adapter(model)
    if adapter is None:
        raise ValueError(
            f"{type(model).__name__} has no BaLoRA adapters; call balora.apply(model, config)"
        )
    return adapter


def has_adapter(model: nn.Module) -> bool:
    return _find_adapter(model) is not None


def is_adapted(module: nn.Module) -> bool:
    """Whether `module` itself carries the adapter (not a wrapper around the adapted model)."""
    return ADAPTER_KEY in module.__dict__


def _find_adapter(model: nn.Module) -> Adapter | None:
    if ADAPTER_KEY in model.__dict__:
        return model.__dict__[ADAPTER_KEY]
    compiled = model._modules.get("_orig_mod")  # torch.compile's OptimizedModule
    return None if compiled is None else compiled.__dict__.get(ADAPTER_KEY)


def matches(name: str, patterns: str | tuple[str, ...] | list[str]) -> bool:
    """Whether a full module name matches `target_modules`-style patterns."""
    if isinstance(patterns, str):
        return re.fullmatch(patterns, name) is not None
    return any(name == p or name.endswith("." + p) for p in patterns)


def _no_match_error(what: str, patterns: Any, model: nn.Module) -> ValueError:
    leaves = [n for n, m in model.named_modules() if n and not list(m.children())]
    shown = ", ".join(leaves[:12]) + (", ..." if len(leaves) > 12 else "")
    if not isinstance(patterns, str):
        patterns = list(patterns)
    return ValueError(
        f"{what} {patterns!r} matched no module of {type(model).__name__}; "
        f"some module names: {shown}"
    )


WrapFn = Callable[[nn.Module, BaLoRAConfig, AdapterState, str, int], BaLoRALayer]
"""``wrap_fn(base_layer, config, state, name, index) -> layer``: builds one wrapper."""


def apply(
    model: nn.Module, config: BaLoRAConfig, *, feature_fn: FeatureFn | None = None
) -> nn.Module:
    """Wrap the modules matched by ``config.target_modules`` in BaLoRA layers, in place.

    Everything but the adapters, the α network and ``config.modules_to_save`` is frozen.
    ``feature_fn(model, args, kwargs) -> (batch, features)`` overrides the pooled backbone
    features of the ``backbone`` α source (default: `balora.alpha.default_features`).
    Returns the same model.
    """
    return apply_with(model, config, feature_fn=feature_fn, wrap_fn=wrap)


def check_targets(model: nn.Module, config: BaLoRAConfig) -> list[str]:
    """The names of the modules `config` adapts in `model`, after every check `apply` makes
    (matches, supported types, ranks, no overlap with `modules_to_save`), without changing or
    allocating anything: a configuration can be checked before training starts."""
    if not isinstance(config, BaLoRAConfig):
        raise TypeError(f"config must be a BaLoRAConfig, got {type(config).__name__}")
    if has_adapter(model):
        raise ValueError("the model already has BaLoRA adapters; call balora.unload(model) first")
    modules = dict(model.named_modules())
    names = [n for n in modules if n and matches(n, config.target_modules)]
    if not names:
        raise _no_match_error("target_modules", config.target_modules, model)
    to_save = [n for n in modules if n and matches(n, config.modules_to_save)]
    missing = [p for p in config.modules_to_save if not any(matches(n, (p,)) for n in to_save)]
    if missing:
        raise _no_match_error("modules_to_save", missing, model)
    overlap = sorted(set(names) & set(to_save))
    if overlap:
        raise ValueError(f"modules {overlap} are both targets and modules_to_save")
    for name in names:
        check_rank(modules[name], name, config.r, wrapper_class(modules[name], name))
    return names


def apply_with(
    model: nn.Module, config: BaLoRAConfig, *, feature_fn: FeatureFn | None, wrap_fn: WrapFn
) -> nn.Module:
    """`apply` with the wrapper factory as a parameter (used by layer variants such as the
    BLoB baseline, `balora.methods.blob`)."""
    names = check_targets(model, config)
    to_save = [n for n, _ in model.named_modules() if n and matches(n, config.modules_to_save)]

    state = AdapterState(config)
    modules = dict(model.named_modules())
    # wrap everything first so that an unsupported module leaves the model untouched
    layers = {n: wrap_fn(modules[n], config, state, n, i) for i, n in enumerate(names)}
    for name, layer in layers.items():
        layer.train(modules[name].training)  # a new module starts in training mode
    requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    model.requires_grad_(False)
    for name, layer in layers.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer)
        for pname, param in layer.named_parameters():
            param.requires_grad_(not pname.startswith("base_layer."))
    for name in to_save:
        model.get_submodule(name).requires_grad_(True)

    if config.alpha_source == "backbone" and config.noise != "none":
        feature_dim = config.alpha_feature_dim or infer_feature_dim(model)
        if feature_dim is None:
            raise ValueError(
                "alpha_source='backbone' needs alpha_feature_dim (the width of the pooled "
                f"features): {type(model).__name__} has no config.hidden_size to infer it from"
            )
        weight = next(iter(layers.values())).lora_A
        net = BackboneAlphaNetwork(feature_dim, len(layers), config)
        net.train(model.training)
        model.add_module(ALPHA_NET_NAME, net.to(device=weight.device, dtype=weight.dtype))
    hook = model.register_forward_pre_hook(_pre_forward, with_kwargs=True)
    model.__dict__[ADAPTER_KEY] = Adapter(
        config=config,
        state=state,
        layers=layers,
        modules_to_save=to_save,
        feature_fn=feature_fn or default_features,
        hook=hook,
        requires_grad=requires_grad,
    )
    return model


def _pre_forward(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    adapter = model.__dict__.get(ADAPTER_KEY)
    if adapter is None or adapter.in_backbone_pass:
        return None
    for layer in adapter.layers.values():
        layer.last_kl = layer.last_alpha = None
    state = adapter.state
    needs_alpha = (
        adapter.config.alpha_source == "backbone"
        and adapter.config.noise != "none"
        and not state.disabled
        and not state.backbone_fixed
        and (model.training or state.sampling)
    )
    if needs_alpha:
        state.backbone_z = backbone_alpha_preactivations(model, args, kwargs)
    return None


def backbone_alpha_preactivations(
    model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> torch.Tensor:
    """Run the frozen backbone (no grad, adapters off, eval mode) and the α network: (b, L, k)."""
    adapter = get_adapter(model)
    modes = [(m, m.training) for m in model.modules()]
    adapter.in_backbone_pass = True
    try:
        model.eval()
        with torch.no_grad(), disable_adapters(model):
            features = adapter.feature_fn(model, args, kwargs)
    finally:
        adapter.in_backbone_pass = False
        for m, mode in modes:
            m.training = mode
    return model.get_submodule(ALPHA_NET_NAME)(features)


def _replace_with_base(model: nn.Module, adapter: Adapter) -> None:
    for name, layer in adapter.layers.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer.base_layer)
    if ALPHA_NET_NAME in model._modules:
        del model._modules[ALPHA_NET_NAME]
    adapter.hook.remove()
    del model.__dict__[ADAPTER_KEY]
    for pname, param in model.named_parameters():
        param.requires_grad_(adapter.requires_grad.get(pname, param.requires_grad))


def unload(model: nn.Module) -> nn.Module:
    """Remove the adapters (unmerging first) and return the base model, in place."""
    adapter = get_adapter(model)
    for layer in adapter.layers.values():
        if layer.merged:
            layer.unmerge()
    _replace_with_base(model, adapter)
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Fold the posterior mean into the base weights and remove the adapters, in place."""
    adapter = get_adapter(model)
    for layer in adapter.layers.values():
        if not layer.merged:
            layer.merge()
    _replace_with_base(model, adapter)
    return model


def merge(model: nn.Module) -> None:
    """Fold every adapter's posterior mean into its base weight (reversible by `unmerge`)."""
    for layer in get_adapter(model).layers.values():
        layer.merge()


def unmerge(model: nn.Module) -> None:
    """Undo `merge`."""
    for layer in get_adapter(model).layers.values():
        layer.unmerge()


@contextmanager
def disable_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block the model computes exactly its base function (merged adapters are
    unmerged for the block and merged again after it)."""
    adapter = get_adapter(model)
    merged = [layer for layer in adapter.layers.values() if layer.merged]
    for layer in merged:
        layer.unmerge()
    previous, adapter.state.disabled = adapter.state.disabled, True
    try:
        yield model
    finally:
        adapter.state.disabled = previous
        for layer in merged:
            layer.merge()


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def last_alpha(model: nn.Module) -> dict[str, torch.Tensor]:
    """α of each adapted layer in the last stochastic forward pass: name -> (b, k)."""
    return {
        name: layer.last_alpha
        for name, layer in get_adapter(model).layers.items()
        if layer.last_alpha is not None
    }
