"""The layer rule of docs/architecture.md holds on every import, those inside functions too:
`lint-imports` checks the contracts of pyproject.toml (`[tool.importlinter]`) on this tree, and
reports the one an import injected into a copy of the tree breaks."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")  # the dev extra's command
CONFIG = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
CONTRACTS = [contract["name"] for contract in CONFIG["contracts"]]
LAYERS, NO_STAGES = CONTRACTS


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` on the packages under `root`, with the contracts of its pyproject.toml."""
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache", "--no-logo"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_tree_keeps_every_import_contract() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in result.stdout


@pytest.mark.parametrize(
    ("file", "module", "broken", "reported"),
    [
        # upward, and lazy: the import runs only when the function is called
        (
            "utkface/data/labels.py",
            "utkface.mlops.registry",
            LAYERS,
            "utkface.data is not allowed to import utkface.mlops",
        ),
        # sideways, between two packages of one layer
        (
            "utkface/model/head.py",
            "utkface.scoring.metrics",
            LAYERS,
            "utkface.model is not allowed to import utkface.scoring",
        ),
        # from the top layer, so only the stages contract breaks
        (
            "utkface/cli/main.py",
            "stages.train",
            NO_STAGES,
            "utkface is not allowed to import stages",
        ),
    ],
)
def test_an_injected_import_breaks_its_contract(
    tmp_path: Path, file: str, module: str, broken: str, reported: str
) -> None:
    for package in ("utkface", "stages"):
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("*.pyc"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    source = tmp_path / file
    text = source.read_text()
    source.write_text(f"{text}\n\ndef injected():\n    import {module}\n")
    line = text.count("\n") + 4  # the injected import's

    result = lint_imports(tmp_path)

    assert result.returncode == 1, result.stdout + result.stderr
    for name in CONTRACTS:
        assert f"{name} {'BROKEN' if name == broken else 'KEPT'}" in result.stdout
    importer = file.removesuffix(".py").replace("/", ".")
    chain = f"{importer} -> {module} (l.{line})"
    assert re.search(rf"{re.escape(reported)}:\n\n-\s+{re.escape(chain)}", result.stdout)
