"""The package layout is the architecture: each layer of ``bundle/scripts`` imports only from layers below it."""

from __future__ import annotations

import ast
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "bundle" / "scripts"
LAYERS = {"io": 0, "physics": 0, "cli": 1, "perfusion": 2, "simulation": 3, "learning": 3, "clinical": 4}
"""Lower imports nothing above it; equal ranks are siblings that must not import each other."""


def scripts_imports(path: Path) -> set[str]:
    """The ``scripts`` packages (first component under ``scripts``) that a module imports."""
    module = path.relative_to(SCRIPTS).with_suffix("").parts
    package = list(module[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            target = base + (node.module.split(".") if node.module else [a.name for a in node.names][:1])
            found.add(target[0])
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("scripts."):
            found.add(node.module.split(".")[1])
    return found


def test_every_module_belongs_to_a_layer():
    for path in SCRIPTS.rglob("*.py"):
        if path.parent == SCRIPTS and path.name == "__init__.py":
            continue
        assert path.relative_to(SCRIPTS).parts[0].removesuffix(".py") in LAYERS, path


def test_imports_flow_downwards_only():
    wrong = []
    for path in SCRIPTS.rglob("*.py"):
        if path.parent == SCRIPTS and path.name == "__init__.py":
            continue
        layer = path.relative_to(SCRIPTS).parts[0].removesuffix(".py")
        for target in scripts_imports(path) - {layer}:
            if LAYERS[target] >= LAYERS[layer]:
                wrong.append(f"{path.relative_to(SCRIPTS)} imports scripts.{target}")
    assert not wrong, wrong
