"""Multi-process training helpers (torch.distributed: DDP, FSDP, accelerate), torch only.

Data parallelism needs nothing special from BaLoRA's maths: each process computes the mean
NLL and the mean KL of its micro-batch, DDP averages the gradients, so with equal micro-batches
the step optimises ``mean NLL + β · mean KL / N`` over the global batch. `N` is the *global*
training-set size (``len(dataset)``, not the shard a process sees). What does need care:

- **the model wrapper.** DDP / FSDP / accelerate / ``torch.compile`` wrap the adapted model;
  `unwrap` finds the module that carries the adapter (for `balora.kl_divergence`, saving).
- **the noise.** Launchers seed every process alike, so the global RNG would draw *the same*
  noise on every rank. `training_noise` draws each micro-batch's noise from a generator seeded
  by ``(seed, optimizer step, global micro-batch index)``, where the global index of
  accumulation step ``g`` on rank ``k`` of ``W`` is ``g · W + k`` (the order in which
  accelerate and the Hugging Face Trainer hand out batches). The noise is independent across
  ranks, reproducible from the seed, the same after a resume, and the same for one process
  with ``W · G`` accumulation steps as for ``W`` processes with ``G`` each.
- **files.** `save_adapter` and `save_checkpoint` write on rank 0 only (``balora.save`` is
  atomic; a checkpoint directory is assembled under a temporary name and renamed into place)
  and hold the other ranks at a barrier, so no rank reads a half-written file.

    checkpoint-<step>/
      adapter/          a BaLoRA adapter (balora.load / load_adapter_weights)
      optimizer.pt      optimizer (and scheduler) state, read with weights_only=True
      state.json        {"step": ..., "extra": {...}}
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from balora.inject import get_adapter, is_adapted
from balora.io import adapter_state_dict, read_adapter, save, write_json

CHECKPOINT_PREFIX = "checkpoint-"
_CHECKPOINT_RE = re.compile(rf"{CHECKPOINT_PREFIX}(\d+)")


def unwrap(model: nn.Module) -> nn.Module:
    """The module carrying the BaLoRA adapter inside DDP / FSDP / accelerate / compile
    wrappers (followed through ``.module`` and ``._orig_mod``)."""
    current = model
    while not is_adapted(current):  # the adapted module itself, not a wrapper
        inner = getattr(current, "module", None)
        if inner is None:
            inner = getattr(current, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            get_adapter(model)  # raises the standard "has no BaLoRA adapters" error
        current = inner
    return current


def rank_and_world_size() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return rank_and_world_size()[0] == 0


def barrier() -> None:
    """Wait for every process (a no-op without a process group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def noise_seed(seed: int, step: int, index: int) -> int:
    """A 63-bit seed for the noise of micro-batch `index` of optimizer step `step`."""
    digest = hashlib.blake2b(f"balora:{seed}:{step}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@contextmanager
def training_noise(
    model: nn.Module,
    seed: int,
    step: int,
    accumulation_index: int = 0,
    *,
    rank: int | None = None,
    world_size: int | None = None,
) -> Iterator[int]:
    """Within the block the adapters draw their noise (and adapter dropout) from a generator
    seeded by ``noise_seed(seed, step, accumulation_index · world_size + rank)``.

    `rank` and `world_size` default to the default process group's. Yields the seed used.
    """
    if rank is None or world_size is None:
        default_rank, default_world = rank_and_world_size()
        rank = default_rank if rank is None else rank
        world_size = default_world if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    if accumulation_index < 0 or step < 0:
        raise ValueError(
            f"step and accumulation_index must be >= 0, got {step}, {accumulation_index}"
        )
    state = get_adapter(unwrap(model)).state
    previous = state.seed
    micro_seed = noise_seed(seed, step, accumulation_index * world_size + rank)
    state.reseed(micro_seed)
    try:
        yield micro_seed
    finally:
        state.reseed(previous)


def save_adapter(model: nn.Module, directory: str | os.PathLike[str]) -> Path:
    """`balora.save` on rank 0 only (atomic), then a barrier; returns the directory.

    Call it on every rank: FSDP2 (``fully_shard``) parameters are gathered first (a
    collective), DDP replicas are already whole.
    """
    directory = Path(directory)
    with full_parameters(model):
        if is_main_process():
            save(unwrap(model), directory)
        barrier()
    return directory


@contextmanager
def full_parameters(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block FSDP2-sharded modules hold their full (unsharded) parameters; a no-op
    for models without ``fully_shard``. A collective: enter it on every rank."""
    from torch.distributed.fsdp import FSDPModule

    sharded = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for module in sharded:
        module.unshard()
    try:
        yield model
    finally:
        for module in sharded:
            module.reshard()


def load_adapter_weights(model: nn.Module, directory: str | os.PathLike[str]) -> nn.Module:
    """Copy a saved adapter's tensors into an already adapted model, in place (parameters,
    and therefore optimizer references, stay the same objects). Checks the checksum, the
    tensor names and the shapes."""
    inner = unwrap(model)
    _, tensors = read_adapter(directory)
    expected = adapter_state_dict(inner)
    if set(tensors) != set(expected):
        diff = sorted(set(tensors) ^ set(expected))
        raise ValueError(f"{directory} does not fit this model: tensors differ {diff[:5]}")
    with torch.no_grad():
        for name, param in expected.items():
            if tuple(param.shape) != tuple(tensors[name].shape):
                raise ValueError(
                    f"shape mismatch for {name}: saved {tuple(tensors[name].shape)}, model "
                    f"{tuple(param.shape)}"
                )
            param.copy_(tensors[name])
    return model


def save_checkpoint(
    output_dir: str | os.PathLike[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    *,
    scheduler: Any = None,
    extra: dict[str, Any] | None = None,
    keep: int | None = None,
) -> Path:
    """Write ``output_dir/checkpoint-<step>`` on rank 0, atomically, then a barrier.

    The directory is assembled under a temporary name and renamed into place, so a killed run
    leaves either the complete checkpoint or none. `keep` deletes all but the newest `keep`
    checkpoints. The optimizer state must be the same on every rank (DDP); sharded optimizers
    (FSDP) need ``torch.distributed.checkpoint`` instead.
    """
    from torch.distributed.tensor import DTensor

    if any(isinstance(p, DTensor) for p in model.parameters()):
        raise ValueError(
            "save_checkpoint keeps one copy of the optimizer state (DDP); for FSDP-sharded "
            "models use torch.distributed.checkpoint (and save_adapter for the adapter)"
        )
    output_dir = Path(output_dir)
    final = output_dir / f"{CHECKPOINT_PREFIX}{step}"
    if is_main_process():
        tmp = output_dir / f".{final.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            save(unwrap(model), tmp / "adapter")
            states = {"optimizer": optimizer.state_dict()}
            if scheduler is not None:
                states["scheduler"] = scheduler.state_dict()
            torch.save(states, tmp / "optimizer.pt")
            write_json(tmp / "state.json", {"step": step, "extra": extra or {}})
            _fsync_tree(tmp)
            if final.exists():  # re-saving a step (e.g. after a resume): swap it out
                old = output_dir / f".{final.name}.old-{os.getpid()}"
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
            _fsync_dir(output_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if keep is not None:
            for old in _checkpoints(output_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def latest_checkpoint(output_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete ``checkpoint-<step>`` in `output_dir`, or ``None``."""
    found = _checkpoints(Path(output_dir))
    return found[-1] if found else None


def load_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    scheduler: Any = None,
) -> dict[str, Any]:
    """Restore a `save_checkpoint` directory into `model` (in place) and the optimizer /
    scheduler; returns ``{"step": ..., "extra": ...}``. Every rank reads the same files."""
    path = Path(path)
    load_adapter_weights(model, path / "adapter")
    states = torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
    if optimizer is not None:
        optimizer.load_state_dict(states["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(states["scheduler"])
    return json.loads((path / "state.json").read_text())


def _checkpoints(output_dir: Path) -> list[Path]:
    if not output_dir.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in output_dir.iterdir()
        if p.is_dir() and (m := _CHECKPOINT_RE.fullmatch(p.name))
    ]
    return [p for _, p in sorted(found)]


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    for path in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
