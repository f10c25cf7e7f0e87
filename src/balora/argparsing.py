"""Command-line options generated from typed dataclasses.

Each field becomes ``--field-name`` with its type, default and choices; the string literal
written under a field (its "docstring") becomes the option's ``--help`` text, so the configs
are documented once. Supported field types: int, float, str, bool (``--x/--no-x``), `Literal`
(choices), ``X | None`` and sequences of str (``nargs="+"``).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import textwrap
import types
import typing
from functools import cache
from typing import Any, Literal, get_args, get_origin


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The string literal under each field of a dataclass, by field name."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # the class body
        for node, after in itertools.pairwise(body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) < len(get_args(tp)):
            return (args[0] if len(args) == 1 else tp), True
    return tp, False


def _is_str_sequence(tp: Any) -> bool:
    options = get_args(tp) if get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    return any(get_origin(o) is not None and get_args(o)[:1] == (str,) for o in options)


def add_dataclass_arguments(
    parser: argparse.ArgumentParser | Any,
    cls: type,
    *,
    exclude: tuple[str, ...] = (),
    defaults: dict[str, Any] | None = None,
    title: str | None = None,
) -> None:
    """Add one option per field of dataclass `cls` (dest = the field name)."""
    group = parser.add_argument_group(title or cls.__name__)
    hints = typing.get_type_hints(cls, include_extras=False)
    docs = field_docs(cls)
    defaults = defaults or {}
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        default = defaults.get(f.name, _default(f))
        tp, optional = _unwrap_optional(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        help_text = docs.get(f.name, "")
        kwargs: dict[str, Any] = {"dest": f.name, "default": default}
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif get_origin(tp) is Literal:
            kwargs["choices"] = list(get_args(tp))
        elif _is_str_sequence(tp):
            kwargs["nargs"] = "+"
            kwargs["metavar"] = f.name.upper()
        elif tp in (int, float, str):
            kwargs["type"] = tp
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: no command-line form for type {tp}")
        shown = list(default) if isinstance(default, tuple) else default
        if optional and default is None:
            help_text += " (default: unset)"
        else:
            help_text += f" (default: {shown})"
        group.add_argument(flag, help=help_text.strip(), **kwargs)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def dataclass_from_args(cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """Build `cls` from the parsed options (fields absent from `args` keep their default)."""
    values = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)
    }
    values.update(overrides)
    for key, value in values.items():
        if isinstance(value, list):
            values[key] = tuple(value)
    return cls(**values)
