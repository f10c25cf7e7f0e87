"""The entries of a comparison: a method name, its constructor options and its label."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from balora.config import BaLoRAConfig
from balora.methods import METHODS


def slug(label: str) -> str:
    """A label as a file-name-safe string."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", label).strip("-") or "method"


@dataclass(frozen=True)
class MethodSpec:
    """One entry of a comparison: a method name (see `balora.methods.METHODS`), its
    constructor options and its label in the results.

    The option ``adapter`` may hold changes to the comparison's adapter config for this method
    alone (a dict of `BaLoRAConfig` fields, or a whole `BaLoRAConfig`), e.g.
    ``MethodSpec("balora", {"adapter": {"kl_reduction": "layer"}}, label="balora-layer-kl")``.
    """

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    label: str | None = None

    def __post_init__(self) -> None:
        if self.name not in METHODS:
            raise ValueError(f"unknown method {self.name!r}; available: {sorted(METHODS)}")
        if not isinstance(self.options, Mapping):
            raise TypeError(f"options of {self.name!r} must be a dict, got {self.options!r}")
        object.__setattr__(self, "options", _jsonable(dict(self.options), f"{self.name} options"))

    @classmethod
    def parse(cls, entry: str | tuple[str, Mapping[str, Any]] | MethodSpec) -> MethodSpec:
        """Accept ``"name"``, ``("name", {options})`` or a `MethodSpec`."""
        if isinstance(entry, MethodSpec):
            return entry
        if isinstance(entry, str):
            return cls(entry)
        if isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str):
            return cls(entry[0], dict(entry[1]))
        raise TypeError(
            f"a method must be a name, a (name, options) tuple or a MethodSpec, got {entry!r}"
        )

    def adapter_for(self, base: BaLoRAConfig) -> BaLoRAConfig:
        changes = self.options.get("adapter")
        return base if changes is None else base.replace(**changes)

    def constructor_options(self) -> dict[str, Any]:
        return {k: v for k, v in self.options.items() if k != "adapter"}


def _jsonable(value: Any, what: str) -> Any:
    """`value` as plain JSON types (configs become dicts); anything else is an error, because
    options go into results.json and into the resume fingerprint."""
    if isinstance(value, BaLoRAConfig):
        return value.to_dict()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, what) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v, what) for v in value]
    raise TypeError(
        f"{what} must be JSON-serialisable (numbers, strings, lists, dicts, BaLoRAConfig) for "
        f"results.json and the resume fingerprint, got {type(value).__name__}: {value!r}"
    )


def resolve_methods(entries: Sequence[Any]) -> list[MethodSpec]:
    """Parse the method entries and give each a unique label: its name, or, when two entries
    share a name, the name followed by its options (``ensemble[members=3]``)."""
    if isinstance(entries, str | MethodSpec) or not entries:
        raise ValueError(f"methods must be a non-empty list of methods, got {entries!r}")
    specs = [MethodSpec.parse(e) for e in entries]
    counts: dict[str, int] = {}
    for s in specs:
        counts[s.name] = counts.get(s.name, 0) + 1
    out = []
    for s in specs:
        if s.label is None:
            label = s.name
            if counts[s.name] > 1 and s.options:
                opts = ",".join(
                    f"{k}={json.dumps(v, sort_keys=True)}" for k, v in sorted(s.options.items())
                )
                label = f"{s.name}[{opts}]"
            s = dataclasses.replace(s, label=label)
        out.append(s)
    # labels name the run files too, so they must stay distinct once made file-safe
    labels = [slug(s.label) for s in out]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise ValueError(f"methods must have unique labels; repeated: {dupes} (give each a label)")
    return out
