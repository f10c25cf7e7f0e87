"""Fingerprints of a comparison's configuration: what the data, the base model and the
options were, so that a resumed comparison never mixes runs made under another one."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from balora.dataset import Data, ModelFactory, tensor_digest
from balora.predict import model_output

NOT_FINGERPRINTED = ("name", "methods", "seeds")
"""Config entries that do not enter the fingerprint: a rerun may rename the comparison, add
methods or add seeds and still reuse the runs already done."""


def hash_of(data: Any) -> str:
    """A short, stable hash of JSON-able data."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def tensors_of(data: Data) -> dict[str, Tensor]:
    """Every tensor of `data` by name: ``inputs`` (or ``inputs.<key>``) and ``targets``."""
    if isinstance(data.inputs, Tensor):
        named = {"inputs": data.inputs}
    else:
        named = {f"inputs.{k}": v for k, v in data.inputs.items()}
    return {**named, "targets": data.targets}


def data_fingerprint(data: Data) -> dict[str, Any]:
    """Size, shapes, dtypes and a content hash of a `Data` (every byte of every tensor)."""
    named = {k: t for k, t in tensors_of(data).items() if isinstance(t, Tensor)}
    shapes = {
        k: [list(t.shape), str(t.dtype).removeprefix("torch.")] for k, t in sorted(named.items())
    }
    return {"n": len(data), "tensors": shapes, "checksum": tensor_digest(named)}


def model_fingerprint(model: nn.Module, model_factory: ModelFactory) -> dict[str, Any]:
    """What the factory built: its name, the model class, the parameter count and a checksum
    of the parameters."""
    summary = []
    count = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            count += p.numel()
            p64 = p.detach().double()
            summary.append(
                [name, list(p.shape), f"{float(p64.sum()):.9e}", f"{float(p64.abs().sum()):.9e}"]
            )
    factory_name = getattr(model_factory, "__qualname__", type(model_factory).__qualname__)
    return {
        "factory": f"{getattr(model_factory, '__module__', '?')}.{factory_name}",
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "parameters": count,
        "checksum": hash_of(summary),
    }


def inspect_model(model_factory: ModelFactory, train: Data) -> dict[str, Any]:
    """Build the base model once (torch RNG seeded with 0 and restored afterwards, so a randomly
    initialised model is described reproducibly), fingerprint it, and warm up with one
    forward / backward pass and optimiser step on a few training examples, so that one-off costs
    (lazy imports and initialisation, allocator growth) do not land in the first run's timing."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = model_factory()
        info = model_fingerprint(model, model_factory)
        model.train()
        out = model_output(model, train.select(slice(0, min(8, len(train)))).inputs)
        if out.requires_grad:
            out.float().sum().backward()
            torch.optim.AdamW(p for p in model.parameters() if p.requires_grad).step()
    del model, out
    return info


def fingerprint_of(config: Mapping[str, Any]) -> str:
    """The hash of a run configuration, leaving out what a rerun may change (name, methods,
    seeds)."""
    return hash_of({k: v for k, v in config.items() if k not in NOT_FINGERPRINTED})


def diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``path: old -> new`` for every leaf where two nested dicts differ."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in old:
                out.append(f"{path}: (absent) -> {new[key]!r}")
            elif key not in new:
                out.append(f"{path}: {old[key]!r} -> (absent)")
            else:
                out += diff(old[key], new[key], path)
        return out
    return [] if old == new else [f"{prefix}: {old!r} -> {new!r}"]
