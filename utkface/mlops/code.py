"""The project's own code as files: which modules a module imports, transitively.

A logged model carries exactly the code its pyfunc runs (`code_files` of its module), and a
test checks that each DVC stage depends on every module it imports.
"""

from __future__ import annotations

import ast
import shutil
from collections.abc import Iterable
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # holds the utkface and stages packages
PACKAGES = ("utkface", "stages")


def module_file(name: str, root: Path = PROJECT_ROOT) -> Path | None:
    """The file of module or package `name` under `root`, or None when there is none."""
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(path: Path) -> set[str]:
    """Absolute module names imported anywhere in `path` (functions included): for
    `from a.b import c`, `a.b.c` when that is a module, else `a.b`."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def code_files(modules: Iterable[str], root: Path = PROJECT_ROOT) -> list[Path]:
    """The files of `modules` and of every project module they import, transitively, with
    the `__init__.py` of each package on the way (importing `a.b.c` runs `a` and `a.b`)."""
    seen: set[Path] = set()
    pending = list(modules)
    while pending:
        name = pending.pop()
        if name.split(".")[0] not in PACKAGES:
            continue
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):
            path = module_file(".".join(parts[:depth]), root)
            if path is not None and path not in seen:
                seen.add(path)
                pending.extend(_imported_names(path))
    return sorted(seen)


def copy_code(modules: Iterable[str], destination: Path, root: Path = PROJECT_ROOT) -> Path:
    """`code_files(modules)` copied under `destination` with their package layout; returns
    the copied top-level package folder of the first module."""
    modules = list(modules)
    for path in code_files(modules, root):
        target = destination / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    return destination / modules[0].split(".")[0]
