"""docs/architecture.md says true things about the tree: its module map names every module of
the library and every stage, its layer diagram draws the layers import-linter checks
(tests/unit/test_import_contract.py), and its list of the code a registered model carries is
what `mlops.code` copies into it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from utkface.inference.pyfunc_logging import PYFUNC_MODULE
from utkface.mlops.code import code_files

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs/architecture.md").read_text()
MODULE_MAP = DOC.split("```")[1]  # the first code block
LAYER_DIAGRAM = DOC.split("```")[3]  # the second


def _words(text: str) -> set[str]:
    return set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text))


def test_the_module_map_names_every_module_and_stage() -> None:
    named = _words(MODULE_MAP)
    modules = {
        path.stem
        for folder in ("utkface", "stages")
        for path in (REPO / folder).rglob("*.py")
        if path.stem != "__init__"
    }
    packages = {path.parent.name for path in (REPO / "utkface").rglob("__init__.py")}
    assert modules - named == set()
    assert packages - named == set()


def test_the_module_map_names_no_module_that_is_gone() -> None:
    """Every `name.py` and `name/` the map mentions exists."""
    files = {path.name for path in REPO.glob("**/*.py") if ".venv" not in path.parts}
    folders = {path.name for path in [*REPO.glob("*"), *REPO.glob("*/*")] if path.is_dir()}
    for name in re.findall(r"([a-z_]+\.py)\b", MODULE_MAP):
        assert name in files, name
    for name in re.findall(r"^\s*([a-z_]+)/", MODULE_MAP, re.M):
        assert name in folders, name


def test_the_layer_diagram_draws_the_layers_contract_in_order() -> None:
    """Top to bottom and left to right, the names left of each row's description."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = (c for c in config["contracts"] if c["type"] == "layers")
    layers = [name.strip() for layer in contract["layers"] for name in layer.split("|")]
    drawn = [
        name
        for line in LAYER_DIAGRAM.splitlines()
        for name in re.findall(r"\w+", line.strip().split("   ")[0])
    ]
    assert drawn == layers


def test_the_carried_code_list_is_what_the_registered_model_carries() -> None:
    section = DOC.split("The registered model carries only the code")[1].split("loads from")[0]
    listed = {name for name in re.findall(r"`([a-z_/]+\.py)`", section)}
    carried = {
        path.relative_to(REPO / "utkface").as_posix()
        for path in code_files([PYFUNC_MODULE])
        if path.name != "__init__.py"
    }
    assert listed == carried
