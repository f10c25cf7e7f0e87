"""The package's own imports go one way: core ← methods ← (experiments, tasks) ← commands ← cli.

Every ``import`` of a ``balora`` module in the source (also inside functions) is read with
`ast` and checked against the layer rule, so an upward import or a cycle between layers fails
here instead of surfacing as a circular-import error later.
"""

from __future__ import annotations

import ast
from pathlib import Path

import balora

SOURCE = Path(balora.__file__).parent

# Layer of each top-level part of the package; anything else is the core library.
LAYERS = {
    "methods": 1,
    "integrations": 1,
    "experiments": 2,
    "tasks": 2,
    "commands": 3,
    "cli": 4,
    "__main__": 5,
}
SIBLINGS = {"experiments", "tasks"}  # same layer, independent of each other


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports() -> list[tuple[str, str, int]]:
    """``(importing module, imported module, line)`` for every balora import in the source."""
    found = []
    for path in sorted(SOURCE.rglob("*.py")):
        relative = path.relative_to(SOURCE.parent).with_suffix("")
        importer = ".".join(p for p in relative.parts if p != "__init__")
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            found += [(importer, n, node.lineno) for n in names if n.split(".")[0] == "balora"]
    return found


def test_imports_point_down_the_layers():
    wrong = []
    for importer, imported, line in _imports():
        if imported == "balora" and importer != "balora":
            wrong.append(f"{importer}:{line} imports the package root")
            continue
        a, b = _part(importer), _part(imported)
        la, lb = LAYERS.get(a, 0), LAYERS.get(b, 0)
        if importer == "balora":  # the public API is the core's
            la = 0
        if lb > la or (a != b and {a, b} == SIBLINGS):
            wrong.append(f"{importer}:{line} imports {imported}")
    assert not wrong, "imports against the layer rule:\n" + "\n".join(wrong)


def test_the_rule_is_checked_on_real_imports():
    imports = _imports()
    assert len(imports) > 100
    assert any(_part(a) == "commands" and _part(b) == "tasks" for a, b, _ in imports)
