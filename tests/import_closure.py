"""The ``mmpd_core`` files a notebook runs: its imports, followed transitively through the
library (function-local imports included, parent packages' ``__init__`` included)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

PACKAGE = "mmpd_core"
# Names the package's ``__init__`` loads lazily (PEP 562 ``__getattr__``), with their module:
# ``from mmpd_core import create_model`` runs ``mmpd_core/models``.
LAZY = {name: "mmpd_core.models" for name in ("MODELS", "Backbone", "create_model", "load_encoder")}


def module_file(root: Path, dotted: str) -> Path | None:
    """The file of module ``dotted`` under ``root`` (a package's ``__init__.py``), or None."""
    path = root.joinpath(*dotted.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def imported_modules(tree: ast.AST, current: str = "") -> set[str]:
    """Dotted names of the package's modules a syntax tree imports (``from a import b``: the
    module ``a.b`` when it exists, else ``a``; relative imports resolved against ``current``)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = current.split(".")[: -node.level]
                base = ".".join([*parent, base] if base else parent)
            if base.split(".")[0] == PACKAGE:
                names.add(base)
                names.update(f"{base}.{a.name}" for a in node.names)
                if base == PACKAGE:
                    names.update(LAZY[a.name] for a in node.names if a.name in LAZY)
    return names


def closure(root: Path, start: set[str]) -> set[Path]:
    """Every file of the package that importing the modules ``start`` executes."""
    seen: set[Path] = set()
    todo = list(start)
    while todo:
        dotted = todo.pop()
        parts = dotted.split(".")
        for depth in range(1, len(parts) + 1):  # parent packages run their __init__ first
            name = ".".join(parts[:depth])
            path = module_file(root, name)
            if path is None or path in seen:
                continue
            seen.add(path)
            package = name if path.name == "__init__.py" else ".".join(name.split(".")[:-1])
            todo.extend(imported_modules(ast.parse(path.read_text()), package + ".x"))
    return seen


def notebook_closure(root: Path, notebook: Path) -> set[Path]:
    """The package files a notebook's code cells import, transitively."""
    cells = json.loads(notebook.read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    return closure(root, imported_modules(ast.parse(code)))
