"""What happens to a task's new head (`BaLoRAConfig.modules_to_save`), by
`TrainConfig.head`:

    new       the head trains with the adapters, deterministically (the usual PEFT setup)
    adapted   the head keeps its random initialisation, frozen, and its linear / conv layers
              get the same adapter as the other targets: the Bayesian adapter covers it
              (the Bayesian-LoRA literature adapts the classifier's layers too)
    probe     the head alone is fitted on the frozen backbone first (`probe_steps`), then
              frozen while the adapters train

The frozen random weights of an ``adapted`` head are saved beside the adapter
(`HEAD_FILE`), so a loaded run never depends on drawing the same initialisation again.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from balora.config import BaLoRAConfig
from balora.dataset import Data
from balora.inject import matches
from balora.io import write_atomic
from balora.layers import wrapper_class
from balora.methods.base import Method
from balora.methods.training import train_model

HEAD_FILE = "head.safetensors"


def head_layers(model: nn.Module, heads: Sequence[str]) -> list[str]:
    """Full names of the layers that can carry an adapter inside the `heads` modules."""
    roots = [n for n, _ in model.named_modules() if n and matches(n, tuple(heads))]
    found = []
    for name, module in model.named_modules():
        if not any(name == r or name.startswith(r + ".") for r in roots):
            continue
        try:
            wrapper_class(module, name)
        except (TypeError, ValueError):
            continue
        found.append(name)
    if not found:
        raise ValueError(f"head='adapted': the head {list(heads)} holds no layer an adapter fits")
    return found


def adapted_head(config: BaLoRAConfig, model: nn.Module) -> BaLoRAConfig:
    """`config` with the head's layers among the targets and nothing left to train apart."""
    layers = head_layers(model, config.modules_to_save)
    targets = config.target_modules
    if isinstance(targets, str):  # a regular expression of full names
        extra = "|".join(re.escape(name) for name in layers)
        merged: str | tuple[str, ...] = f"(?:{targets})|(?:{extra})"
    else:
        merged = (*targets, *layers)
    return config.replace(target_modules=merged, modules_to_save=())


def freeze_heads(model: nn.Module, heads: Sequence[str]) -> None:
    for name, module in model.named_modules():
        if name and matches(name, tuple(heads)):
            module.requires_grad_(False)


def fit_probe(method: Method, model: nn.Module, train: Data, heads: Sequence[str]) -> None:
    """Train only the `heads` of the bare backbone for ``probe_steps`` steps (same optimiser
    settings as the method; no validation)."""
    model.requires_grad_(False)
    for name, module in model.named_modules():
        if name and matches(name, tuple(heads)):
            module.requires_grad_(True)
    cfg = method.train_config
    per_epoch = math.ceil(len(train) / cfg.batch_size)
    probe = copy.copy(method)
    probe.train_config = replace(
        cfg,
        epochs=math.ceil(cfg.probe_steps / per_epoch),
        max_steps=cfg.probe_steps,
        checkpoint="last",
        eval_every=None,
        patience=None,
        noise_warmup=0.0,
        diagnostics=0,
    )
    train_model(probe, model, train, None)


def head_weights(model: nn.Module, heads: Sequence[str]) -> dict[str, torch.Tensor]:
    """The base (non-adapter) parameters inside the `heads` modules of an adapted model."""
    roots = [n for n, _ in model.named_modules() if n and matches(n, tuple(heads))]
    return {
        name: p.detach().contiguous().cpu()
        for name, p in model.named_parameters()
        if any(name.startswith(r + ".") for r in roots)
        and ".lora_" not in name
        and ".alpha_module." not in name
    }


def save_head(model: nn.Module, heads: Sequence[str], directory: Path) -> None:
    tensors = head_weights(model, heads)
    write_atomic(directory / HEAD_FILE, lambda tmp: save_file(tensors, tmp))


def load_head(model: nn.Module, directory: Path) -> None:
    path = directory / HEAD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no head weights at {path} (the run adapted its head)")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in load_file(path).items():
            if name not in params or params[name].shape != tensor.shape:
                raise ValueError(f"{path} holds {name!r}, which this model lacks or shapes else")
            params[name].copy_(tensor)
