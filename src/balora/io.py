"""Adapters on disk: safetensors weights plus a JSON config, written atomically, no pickle.

    directory/
      adapter_model.safetensors   adapter, α-network and modules_to_save tensors (full names)
      adapter_config.json         {"balora_version", "config", "modules", "modules_to_save",
                                   "tensors", "weights_sha256"}

Both files are first written under temporary names, flushed to disk, then moved into place
with `os.replace`; a crash while writing leaves the previous adapter as it was. The config
records the weights' SHA-256, so a torn pair (a crash between the two renames) is detected on
load instead of silently mixing two adapters.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from balora.alpha import FeatureFn
from balora.config import BaLoRAConfig
from balora.inject import apply, get_adapter, unload

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors `save` writes: every trainable tensor that BaLoRA added or unfroze."""
    adapter = get_adapter(model)
    keep = [f"{name}." for name in adapter.modules_to_save] + ["balora_alpha_net."]
    out = {}
    for name, param in model.named_parameters():
        is_adapter = ".lora_" in name or ".alpha_module." in name
        if is_adapter or any(name.startswith(k) for k in keep):
            out[name] = param.detach()
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_temp(path: Path, write: Callable[[str], None]) -> Path:
    """Write through `write(tmp_path)` to a temporary file beside `path`, flushed to disk;
    returns the temporary path (move it into place with `os.replace`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def write_atomic(path: Path, write: Callable[[str], None]) -> Path:
    """Write `path` through `write(tmp_path)` and `os.replace`: never half-written."""
    tmp = write_temp(path, write)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: Path, text: str) -> Path:
    """Write a text file atomically."""
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def finite_or_none(value: Any) -> Any:
    """`value` with every NaN / infinite float (also inside lists and dicts) replaced by None,
    and numpy / torch scalars as Python numbers."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def write_json(path: Path, data: Any) -> Path:
    """JSON without NaN or infinity (they become null), written atomically."""
    return write_text(path, json.dumps(finite_or_none(data), indent=1, allow_nan=False) + "\n")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save(model: nn.Module, directory: str | os.PathLike[str]) -> Path:
    """Write the adapter of `model` to `directory` (created if needed); returns the path."""
    from balora import __version__

    adapter = get_adapter(model)
    if any(layer.merged for layer in adapter.layers.values()):
        raise RuntimeError("cannot save a merged adapter; call balora.unmerge(model) first")
    tensors = {k: v.contiguous().cpu() for k, v in adapter_state_dict(model).items()}
    for name, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            raise ValueError(f"refusing to save: {name} holds NaN or inf values")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights_tmp = write_temp(directory / WEIGHTS_NAME, lambda p: save_file(tensors, p))
    try:
        meta = {
            "balora_version": __version__,
            "config": adapter.config.to_dict(),
            "modules": {
                name: {
                    "type": type(layer.base_layer).__name__,
                    "in_features": layer.in_features,
                    "out_features": layer.out_features,
                    "lora_A": list(layer.lora_A.shape),
                    "lora_B": list(layer.lora_B.shape),
                }
                for name, layer in adapter.layers.items()
            },
            "modules_to_save": adapter.modules_to_save,
            "tensors": {k: list(v.shape) for k, v in tensors.items()},
            "weights_sha256": _sha256(weights_tmp),
        }
        text = json.dumps(meta, indent=2)
        config_tmp = write_temp(directory / CONFIG_NAME, lambda p: Path(p).write_text(text))
    except BaseException:
        weights_tmp.unlink(missing_ok=True)
        raise
    os.replace(weights_tmp, directory / WEIGHTS_NAME)
    os.replace(config_tmp, directory / CONFIG_NAME)
    return directory


def read_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``adapter_config.json`` of a saved adapter (with clear errors)."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no BaLoRA adapter at {directory}: {path} does not exist")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from e
    for key in ("config", "modules", "tensors", "weights_sha256"):
        if not isinstance(meta, dict) or key not in meta:
            raise ValueError(f"{path} is not a BaLoRA adapter config: missing {key!r}")
    return meta


def read_adapter(
    directory: str | os.PathLike[str],
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The config and the tensors of a saved adapter, checked against the config's checksum."""
    directory = Path(directory)
    meta = read_config(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"no adapter weights at {weights}")
    if _sha256(weights) != meta["weights_sha256"]:
        raise ValueError(
            f"{weights} does not match {directory / CONFIG_NAME} (checksum differs): the "
            "adapter was only partly written; save it again"
        )
    try:
        return meta, load_file(weights)
    except (SafetensorError, OSError) as e:
        raise ValueError(f"cannot read {weights}: {e}") from e


def load(
    model: nn.Module,
    directory: str | os.PathLike[str],
    *,
    feature_fn: FeatureFn | None = None,
) -> nn.Module:
    """Re-apply a saved adapter to a base model (in place) and return it."""
    meta, tensors = read_adapter(directory)
    weights = Path(directory) / WEIGHTS_NAME
    config = BaLoRAConfig.from_dict(meta["config"])

    modules = dict(model.named_modules())
    for name, info in meta["modules"].items():
        if name not in modules:
            raise ValueError(f"the adapter was saved for module {name!r}, which this model lacks")
        base = modules[name]
        if type(base).__name__ != info["type"]:
            raise ValueError(
                f"module {name!r} is a {type(base).__name__} here but was a {info['type']}"
            )
    apply(model, config, feature_fn=feature_fn)
    adapter = get_adapter(model)
    try:
        if sorted(adapter.layers) != sorted(meta["modules"]):
            extra = sorted(set(adapter.layers) - set(meta["modules"]))
            raise ValueError(f"this model has adapted modules the saved adapter lacks: {extra}")
        params = dict(model.named_parameters())
        missing = sorted(set(adapter_state_dict(model)) - set(tensors))
        if missing:
            raise ValueError(f"{weights} lacks tensors {missing[:5]}")
        for name, tensor in tensors.items():
            if name not in params:
                raise ValueError(f"{weights} holds {name!r}, which the adapted model lacks")
            if tuple(params[name].shape) != tuple(tensor.shape):
                raise ValueError(
                    f"shape mismatch for {name}: saved {tuple(tensor.shape)}, "
                    f"model {tuple(params[name].shape)}"
                )
        with torch.no_grad():
            for name, tensor in tensors.items():
                params[name].copy_(tensor)
    except BaseException:
        unload(model)
        raise
    return model
