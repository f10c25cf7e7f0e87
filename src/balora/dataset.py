"""In-memory datasets and the names shared by every layer above the core.

`Data` holds the inputs of a split (a tensor, or a dict of tensors as Hugging Face models take
them) and its targets, all with the same first dimension; methods train on it, the comparison
runner evaluates on it, and every task turns its files into it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

TaskKind = Literal["classification", "regression"]
"""What a model predicts: class logits, or regression outputs."""
Inputs = Tensor | Mapping[str, Any]
"""Model inputs: a tensor (passed positionally) or a dict (passed as keyword arguments)."""
ModelFactory = Callable[[], nn.Module]
"""Returns a fresh base model at every call."""


@dataclass
class Data:
    """A dataset held in memory: inputs (a tensor, or a dict of tensors as for Hugging Face
    models) and targets, all with the same first dimension."""

    inputs: Inputs
    targets: Tensor

    def __post_init__(self) -> None:
        sizes = {"targets": self.targets.shape[0]}
        if isinstance(self.inputs, Tensor):
            sizes["inputs"] = self.inputs.shape[0]
        elif isinstance(self.inputs, Mapping):
            sizes.update({k: v.shape[0] for k, v in self.inputs.items()})
        else:
            raise TypeError(
                f"inputs must be a tensor or a dict of tensors, got {type(self.inputs)}"
            )
        if len(set(sizes.values())) != 1:
            raise ValueError(f"Data fields disagree on the number of examples: {sizes}")
        if sizes["targets"] == 0:
            raise ValueError("Data is empty")

    def __len__(self) -> int:
        return self.targets.shape[0]

    def select(self, index: Tensor | slice) -> Data:
        """The examples at `index`."""
        if isinstance(self.inputs, Tensor):
            return Data(self.inputs[index], self.targets[index])
        return Data({k: v[index] for k, v in self.inputs.items()}, self.targets[index])

    def batches(
        self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[Data]:
        """Minibatches in order, or shuffled with `generator`. Trailing positions that are
        padding in every sequence of a batch (``attention_mask`` all 0) are cut off."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            yield self.select(order[start : start + batch_size]).trim_padding()

    def trim_padding(self) -> Data:
        """Drop trailing positions where ``attention_mask`` is 0 for every example (right
        padding only, so positions of real tokens do not move)."""
        if isinstance(self.inputs, Tensor) or "attention_mask" not in self.inputs:
            return self
        mask = self.inputs["attention_mask"]
        used = mask.any(dim=0).nonzero()
        length = int(used.max()) + 1 if used.numel() else 1
        if length == mask.shape[1]:
            return self
        trimmed = {
            k: v[:, :length] if v.dim() >= 2 and v.shape[1] == mask.shape[1] else v
            for k, v in self.inputs.items()
        }
        return Data(trimmed, self.targets)

    def to(self, device: torch.device | str) -> Data:
        """The same examples with every tensor on `device`."""
        if isinstance(self.inputs, Tensor):
            return Data(self.inputs.to(device), self.targets.to(device))
        return Data({k: v.to(device) for k, v in self.inputs.items()}, self.targets.to(device))


def tensor_digest(tensors: Mapping[str, Tensor]) -> str:
    """A content hash of named tensors: every name, shape, dtype and byte."""
    h = hashlib.blake2b(digest_size=16)
    for key, t in sorted(tensors.items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{key}{list(t.shape)}{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"")
    return h.hexdigest()
