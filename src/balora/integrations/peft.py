"""PEFT interop: start BaLoRA from a PEFT LoRA adapter, deploy its posterior mean as one.

    PEFT LoRA dir ──from_peft──► BaLoRA (A = PEFT's A, B = PEFT's B, α at its initial value)
    BaLoRA model  ──to_peft────► PEFT LoRA dir: A, B (the posterior mean) + modules_to_save

The posterior mean of BaLoRA is exactly LoRA (``y = f0(x) + s B A x``), so the exported
adapter gives, under ``PeftModel.from_pretrained(base, dir)`` in eval mode, the same outputs as
the BaLoRA model in eval mode: deterministic deployment on the standard stack. What the export
drops is what only sampling needs: the α networks (``α(x)``) and the prior. Both files are
written together atomically (`balora.io.write_files`).

PEFT's on-disk layout (peft 0.13 to 0.21): ``adapter_config.json`` (a ``LoraConfig``) and
``adapter_model.safetensors`` with keys ``base_model.model.<module>.lora_A.weight`` (r x d_in,
or a conv kernel with r output channels), ``...lora_B.weight`` (d_out x r, with trailing 1s for
convolutions) and ``base_model.model.<module>.<tensor>`` for ``modules_to_save``. The target
modules are written as one regular expression of the exact module names, so PEFT adapts the
same modules and no others.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from balora.config import BaLoRAConfig
from balora.inject import apply, get_adapter
from balora.io import CONFIG_NAME, WEIGHTS_NAME, write_files

PREFIX = "base_model.model."
# BaLoRAConfig fields that the PEFT adapter determines; the rest are BaLoRA options.
_FROM_ADAPTER = ("r", "lora_alpha", "target_modules", "modules_to_save")
# LoraConfig features with no BaLoRA counterpart: (field, value that means "off").
_UNSUPPORTED: tuple[tuple[str, Any], ...] = (
    ("use_dora", False),
    ("rank_pattern", {}),
    ("alpha_pattern", {}),
    ("layer_replication", None),
    ("lora_bias", False),
    ("target_parameters", None),
    ("trainable_token_indices", None),
)


def to_peft(
    model: nn.Module,
    directory: str | os.PathLike[str],
    *,
    base_model_name_or_path: str | None = None,
    task_type: str | None = None,
) -> Path:
    """Write the posterior mean of `model`'s BaLoRA adapter as a PEFT LoRA adapter.

    `task_type` (e.g. ``"SEQ_CLS"``, ``"CAUSAL_LM"``) selects the ``PeftModel`` subclass that
    ``PeftModel.from_pretrained`` builds; ``None`` gives the generic one. Returns the directory.
    """
    from peft import LoraConfig

    adapter = get_adapter(model)
    directory = Path(directory)
    _refuse_balora_dir(directory)
    tensors: dict[str, torch.Tensor] = {}
    fan_in_fan_out = False
    for name, layer in adapter.layers.items():
        a, b = layer.lora_A.detach(), layer.lora_B.detach()
        if a.dim() > 2:  # convolution: B is a 1x1 conv kernel in PEFT
            b = b.reshape(*b.shape, *([1] * (a.dim() - 2)))
        fan_in_fan_out |= type(layer).__name__ == "GPT2Conv1D"
        tensors[f"{PREFIX}{name}.lora_A.weight"] = a
        tensors[f"{PREFIX}{name}.lora_B.weight"] = b
    for name in adapter.modules_to_save:
        for key, value in model.get_submodule(name).state_dict().items():
            tensors[f"{PREFIX}{name}.{key}"] = value.detach()
    tensors = {k: v.contiguous().cpu() for k, v in tensors.items()}
    for key, value in tensors.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ValueError(f"refusing to export: {key} holds NaN or inf values")

    config = adapter.config
    lora = LoraConfig(
        r=config.r,
        lora_alpha=config.lora_alpha,
        target_modules=_exact_regex(adapter.layers),
        modules_to_save=list(adapter.modules_to_save) or None,
        lora_dropout=config.lora_dropout,
        fan_in_fan_out=fan_in_fan_out,
        bias="none",
        base_model_name_or_path=base_model_name_or_path,
        task_type=task_type,
        inference_mode=True,
    )
    meta = {k: list(v) if isinstance(v, set) else v for k, v in lora.to_dict().items()}
    text = json.dumps(meta, indent=2, sort_keys=True, default=str)
    directory.mkdir(parents=True, exist_ok=True)
    write_files(
        {
            directory / WEIGHTS_NAME: lambda p: save_file(tensors, p, metadata={"format": "pt"}),
            directory / CONFIG_NAME: lambda p: Path(p).write_text(text),
        }
    )
    return directory


def from_peft(model: nn.Module, directory: str | os.PathLike[str], **options: Any) -> nn.Module:
    """Apply BaLoRA to a base `model` (in place), initialised from a PEFT LoRA adapter.

    A and B (and the ``modules_to_save`` tensors) are copied from the adapter, so the model in
    eval mode (the posterior mean) computes what ``PeftModel.from_pretrained(model, directory)``
    computes; α starts at its initial value. `options` are the BaLoRA-only fields of
    `BaLoRAConfig` (``prior_p``, ``alpha_source``, ``noise``, ...); ``r``, ``lora_alpha``,
    ``target_modules`` and ``modules_to_save`` come from the adapter. rsLoRA adapters are
    converted (B rescaled to the scale ``lora_alpha / r``); DoRA, rank / alpha patterns and
    other LoRA variants are refused.
    """
    clash = sorted(set(options) & set(_FROM_ADAPTER))
    if clash:
        raise ValueError(f"{clash} come from the PEFT adapter; pass only BaLoRA options")
    directory = Path(directory)
    meta, tensors = _read_peft(directory)
    pairs = _lora_pairs(tensors, directory)
    r, lora_alpha = int(meta["r"]), float(meta["lora_alpha"])
    config = BaLoRAConfig(
        **options,
        r=r,
        lora_alpha=lora_alpha,
        target_modules=_exact_regex(pairs),
        modules_to_save=_modules_to_save(meta, tensors, model),
    )
    # rsLoRA scales by lora_alpha / sqrt(r); fold the ratio into B
    b_factor = math.sqrt(r) if meta.get("use_rslora") else 1.0
    apply(model, config)
    adapter = get_adapter(model)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, (a, b) in pairs.items():
            layer = adapter.layers[name]
            _copy(layer.lora_A, a, f"{name}.lora_A")
            _copy(layer.lora_B, b.reshape(b.shape[0], -1) * b_factor, f"{name}.lora_B")
        for name in adapter.modules_to_save:
            for key in model.get_submodule(name).state_dict():
                full = f"{name}.{key}"
                if f"{PREFIX}{full}" in tensors and full in params:
                    _copy(params[full], tensors[f"{PREFIX}{full}"], full)
    return model


def _read_peft(directory: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    config_path, weights = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"no PEFT adapter at {directory}: {config_path} does not exist")
    meta = json.loads(config_path.read_text())
    if "weights_sha256" in meta:
        raise ValueError(f"{directory} holds a BaLoRA adapter; load it with balora.load")
    if meta.get("peft_type") != "LORA":
        raise ValueError(f"{config_path}: peft_type must be 'LORA', got {meta.get('peft_type')!r}")
    for key, off in _UNSUPPORTED:
        if meta.get(key, off) not in (off, None, {}, False):
            raise ValueError(
                f"{config_path}: {key}={meta[key]!r} has no BaLoRA counterpart; "
                "only plain LoRA (and rsLoRA) adapters can be imported"
            )
    if not weights.is_file():
        raise FileNotFoundError(
            f"no {WEIGHTS_NAME} in {directory} (pickled .bin adapters are not read; re-save "
            "the adapter with safe_serialization=True)"
        )
    return meta, load_file(weights)


def _lora_pairs(
    tensors: dict[str, torch.Tensor], directory: Path
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    pattern = re.compile(rf"{re.escape(PREFIX)}(.+)\.lora_([AB])(?:\.[^.]+)?\.weight")
    found: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        match = pattern.fullmatch(key)
        if match:
            found.setdefault(match.group(1), {})[match.group(2)] = value
    if not found:
        raise ValueError(f"{directory / WEIGHTS_NAME} holds no lora_A / lora_B weights")
    incomplete = sorted(name for name, ab in found.items() if set(ab) != {"A", "B"})
    if incomplete:
        raise ValueError(f"{directory / WEIGHTS_NAME}: {incomplete} lack lora_A or lora_B")
    return {name: (ab["A"], ab["B"]) for name, ab in found.items()}


def _modules_to_save(
    meta: dict[str, Any], tensors: dict[str, torch.Tensor], model: nn.Module
) -> list[str]:
    """Full names of the PEFT ``modules_to_save`` whose tensors the adapter holds."""
    patterns = meta.get("modules_to_save") or []
    names = []
    for name, module in model.named_modules():
        if name and any(name == p or name.endswith("." + p) for p in patterns):
            keys = [f"{PREFIX}{name}.{k}" for k in module.state_dict()]
            if keys and all(k in tensors for k in keys):
                names.append(name)
    return names


def _exact_regex(names: Any) -> str:
    """A regular expression that fully matches exactly these module names."""
    return "(?:" + "|".join(re.escape(n) for n in sorted(names)) + ")"


def _copy(param: torch.Tensor, value: torch.Tensor, name: str) -> None:
    if tuple(param.shape) != tuple(value.shape):
        raise ValueError(
            f"shape mismatch for {name}: adapter {tuple(value.shape)}, model {tuple(param.shape)}"
        )
    param.copy_(value)


def _refuse_balora_dir(directory: Path) -> None:
    path = directory / CONFIG_NAME
    if path.is_file():
        try:
            is_balora = "weights_sha256" in json.loads(path.read_text())
        except (OSError, ValueError):
            is_balora = False
        if is_balora:
            raise ValueError(
                f"{directory} holds a BaLoRA adapter (same file names as PEFT's); export the "
                "PEFT adapter to another directory"
            )
