"""Frozen-prefix cache for S-sample prediction: run the unadapted prefix once per batch.

When adapters sit only in the later layers, everything a forward pass computes before the first
adapted layer is the same for every posterior sample. `record_prefix` runs the model once on the
b-row batch and keeps the output of every top-most module that finished before the first BaLoRA
layer was called and is called only once in the pass (e.g. the embeddings and the unadapted
blocks).
Inside `replay_prefix(record, n)` those modules return their recorded output repeated n times
along the batch dimension instead of computing it, so a forward pass over the batch repeated
n times computes only the adapted suffix n times::

    embeddings ─► block 0 ─► ... ─► block k-1 ─┬► block k (adapted) ─► ... ─► head
    └────────── recorded once on b rows ───────┘└──────── runs on n·b rows ─────────┘

    record = record_prefix(model, inputs)         # one prefix pass over b rows
    with replay_prefix(record, n):
        model(**repeated_inputs)                  # rows s·b + i = example i, as in `predict`

Assumptions, true of ordinary models in eval mode: a recorded module is called once per forward
pass, nothing before the first adapter is random, and rows are independent (row i of a module's
output depends only on example i), so the output for the repeated batch is the recorded output
repeated. Tensors whose first dimension is not the batch size (e.g. rotary tables of shape
(1, T, d)) are passed through unchanged. `balora.predict(..., cache_prefix=True)` uses this.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from balora.inject import get_adapter
from balora.layers import BaLoRALayer

__all__ = ["PrefixRecord", "record_prefix", "replay_prefix"]


@dataclass(frozen=True)
class PrefixRecord:
    """Outputs of the top-most modules that ran before the first adapted layer, on b rows."""

    batch_size: int
    names: tuple[str, ...]
    modules: tuple[nn.Module, ...]
    outputs: tuple[Any, ...]


def _call(model: nn.Module, inputs: Tensor | Mapping[str, Any]) -> Any:
    return model(inputs) if isinstance(inputs, Tensor) else model(**inputs)


@torch.no_grad()
def record_prefix(model: nn.Module, inputs: Tensor | Mapping[str, Any]) -> PrefixRecord:
    """Run `model` on `inputs`; keep the outputs of the modules that finished before its first
    adapted layer and that the forward pass calls exactly once.

    The model must be in eval mode (dropout in the prefix would make samples differ). Costs one
    posterior-mean pass over the b rows of `inputs`.
    """
    get_adapter(model)  # a model without adapters has no prefix to cache
    if any(m.training for m in model.modules()):
        raise ValueError("record_prefix needs the model in eval mode (call model.eval())")
    sizes = {v.shape[0] for v in _tensors(inputs) if v.dim() > 0}
    if len(sizes) != 1:
        raise ValueError(f"inputs need one batch size, got first dimensions {sorted(sizes)}")
    batch_size = sizes.pop()

    calls: dict[int, int] = {}
    finished: dict[int, tuple[int, Any]] = {}  # id -> (finish order, output)
    stop_at: list[int] = []

    def before(module: nn.Module, args: Any) -> None:
        calls[id(module)] = calls.get(id(module), 0) + 1

    def after(module: nn.Module, args: Any, output: Any) -> None:
        # outputs are kept only for modules that finish before the first adapter
        finished[id(module)] = (len(finished), None if stop_at else output)

    def stop(module: nn.Module, args: Any) -> None:
        if not stop_at:
            stop_at.append(len(finished))

    named = [(n, m) for n, m in model.named_modules() if m is not model]
    handles = []
    try:
        for _, module in named:
            if isinstance(module, BaLoRALayer):
                handles.append(module.register_forward_pre_hook(stop))
            else:
                handles.append(module.register_forward_pre_hook(before))
                handles.append(module.register_forward_hook(after))
        # the whole forward runs: a module is only a prefix module if it is called once in all
        # of it (EfficientNet calls one shared activation module before and after its adapters)
        _call(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    end = stop_at[0] if stop_at else -1  # no adapter ran: nothing is known to be a prefix
    done = {
        name: module
        for name, module in named
        if id(module) in finished
        and finished[id(module)][0] < end
        and calls.get(id(module)) == 1
        and not any(isinstance(m, BaLoRALayer) for m in module.modules())
    }
    top = [
        name
        for name in done
        if not any(name.startswith(other + ".") for other in done if other != name)
    ]
    return PrefixRecord(
        batch_size=batch_size,
        names=tuple(top),
        modules=tuple(done[n] for n in top),
        outputs=tuple(finished[id(done[n])][1] for n in top),
    )


def _tensors(obj: Any) -> Iterator[Tensor]:
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, Mapping):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, tuple | list):
        for value in obj:
            yield from _tensors(value)


def _repeat(obj: Any, times: int, batch_size: int) -> Any:
    """A copy of `obj` with every tensor whose first dimension is the batch size repeated."""
    if isinstance(obj, Tensor):
        if obj.dim() > 0 and obj.shape[0] == batch_size:
            return obj.repeat(times, *([1] * (obj.dim() - 1)))
        return obj
    if isinstance(obj, Mapping):
        items = {k: _repeat(v, times, batch_size) for k, v in obj.items()}
        return type(obj)(**items) if hasattr(obj, "to_tuple") else type(obj)(items)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a named tuple
        return type(obj)(*(_repeat(v, times, batch_size) for v in obj))
    if isinstance(obj, tuple | list):
        return type(obj)(_repeat(v, times, batch_size) for v in obj)
    return obj


@contextmanager
def replay_prefix(record: PrefixRecord, times: int) -> Iterator[None]:
    """Within the block the recorded modules return their output repeated `times` along the
    batch dimension (a fresh copy per call) instead of computing it."""
    if isinstance(times, bool) or not isinstance(times, int) or times < 1:
        raise ValueError(f"times must be a positive integer, got {times!r}")
    rows = times * record.batch_size
    saved = []
    for name, module, output in zip(record.names, record.modules, record.outputs, strict=True):

        def replay(*args: Any, _name: str = name, _output: Any = output, **kwargs: Any) -> Any:
            leading = {t.shape[0] for t in _tensors((args, kwargs)) if t.dim() > 0}
            if leading and rows not in leading and leading != {1}:
                raise RuntimeError(
                    f"replay_prefix: {_name} was called with batch dimension(s) "
                    f"{sorted(leading)}; the record is for {record.batch_size} rows x {times}"
                )
            return _repeat(_output, times, record.batch_size)

        saved.append((module, module.__dict__.get("forward")))
        module.forward = replay
    try:
        yield
    finally:
        for module, previous in saved:
            if previous is None:
                del module.forward
            else:
                module.forward = previous
