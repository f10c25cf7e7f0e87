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

import csv
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as save_bytes
from torch import nn

from balora._version import __version__
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


def write_files(writers: Mapping[Path, Callable[[str], None]]) -> None:
    """Write several files that belong together (e.g. weights and their config): each to a
    flushed temporary file first, then all moved into place, so a failure while writing leaves
    every previous file as it was."""
    done: list[tuple[Path, Path]] = []
    try:
        for path, write in writers.items():
            done.append((write_temp(path, write), path))
    except BaseException:
        for tmp, _ in done:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, path in done:
        os.replace(tmp, path)


def publish_dir(final: Path, build: Callable[[Path], None]) -> Path:
    """Build a folder in a temporary sibling through `build(tmp_dir)` and rename it into place
    (atomic on POSIX): `final` exists complete or not at all. An existing `final` is replaced;
    if a concurrent writer publishes `final` first, its folder is kept."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        shutil.rmtree(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp's 0o700 would make a cache private once renamed
    try:
        build(tmp)
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.is_dir():  # not a concurrent writer that got there first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """Write a UTF-8 CSV file atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)

    return write_atomic(path, write)


def cache_dir(*parts: str, root: str | os.PathLike[str] | None = None) -> Path:
    """balora's cache folder joined with `parts`: `root`, else ``$BALORA_CACHE``, else
    ``~/.cache/balora`` (read at call time, so tests and users can point it elsewhere)."""
    if root is None:
        env = os.environ.get("BALORA_CACHE")
        root = env if env else Path.home() / ".cache" / "balora"
    return Path(root).joinpath(*parts)


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
    adapter = get_adapter(model)
    if any(layer.merged for layer in adapter.layers.values()):
        raise RuntimeError("cannot save a merged adapter; call balora.unmerge(model) first")
    tensors = {k: v.contiguous().cpu() for k, v in adapter_state_dict(model).items()}
    for name, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            raise ValueError(f"refusing to save: {name} holds NaN or inf values")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f"cannot save an adapter to {directory}: it is a file")
    directory.mkdir(parents=True, exist_ok=True)
    weights = save_bytes(tensors)
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
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
    }
    text = json.dumps(meta, indent=2)
    write_files(
        {
            directory / WEIGHTS_NAME: lambda p: Path(p).write_bytes(weights),
            directory / CONFIG_NAME: lambda p: Path(p).write_text(text),
        }
    )
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
    try:
        _copy_saved(model, meta, tensors, weights)
    except BaseException:
        unload(model)
        raise
    return model


def load_state(model: nn.Module, directory: str | os.PathLike[str]) -> nn.Module:
    """Copy a saved adapter's tensors into `model`, which already carries the same adapter
    (built the way it was trained, e.g. by a method's ``build``, so layer variants such as
    BLoB's round-trip too). Every saved tensor must be there, and nothing else."""
    meta, tensors = read_adapter(directory)
    _copy_saved(model, meta, tensors, Path(directory) / WEIGHTS_NAME)
    return model


def _copy_saved(
    model: nn.Module, meta: dict[str, Any], tensors: dict[str, torch.Tensor], weights: Path
) -> None:
    adapter = get_adapter(model)
    if sorted(adapter.layers) != sorted(meta["modules"]):
        extra = sorted(set(adapter.layers) - set(meta["modules"]))
        lacking = sorted(set(meta["modules"]) - set(adapter.layers))
        raise ValueError(
            f"the model's adapted modules differ from the saved adapter's: the model also has "
            f"{extra}, the adapter also has {lacking}"
        )
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
