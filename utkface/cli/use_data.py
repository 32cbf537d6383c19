"""`utkface use-data PATH`: point the pipeline at a user's UTKFace copy, versioned by DVC.

Copies the folder / .zip / .tar.gz into `data/raw/`, tracks it with `dvc add` (so a change to
the raw data re-runs `ingest`, and `dvc push` backs it up), and sets `ingest.source` in
params.yaml. Copying, rather than pointing at the original, is what lets DVC see every change:
the ingest stage depends on `data/raw`, which DVC hashes.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from utkface import paths
from utkface.data.sources import ARCHIVE_SUFFIXES


def copy_into_raw(source: Path, raw_dir: Path = paths.RAW) -> Path:
    """Copy a folder or archive into `raw_dir`; returns the copy's path."""
    source = source.expanduser().resolve()
    if not source.exists():
        raise FileNotFoundError(f"{source}: does not exist")
    if source.is_file() and not source.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise ValueError(f"{source}: expected a folder, a .zip or a .tar.gz")
    target = raw_dir / source.name
    if target.exists():
        raise FileExistsError(f"{target}: already exists; remove it first or pick another copy")
    raw_dir.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copy2(source, target)
    return target


def _yaml_scalar(value: str) -> str:
    """`value` as written after `source:`: plain if YAML reads it back unchanged, else quoted."""
    try:
        if yaml.safe_load(f"source: {value}") == {"source": value}:
            return value
    except yaml.YAMLError:
        pass
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a YAML double-quoted scalar


def set_ingest_source(value: str, params_file: Path = paths.PARAMS) -> None:
    """Rewrite the `source:` line of the `ingest:` section, keeping comments and layout."""
    text = params_file.read_text()
    pattern = re.compile(
        r"(^ingest:\n(?:[ \t]+.*\n|\s*\n)*?[ \t]+source:[ \t]*)"
        r"(\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\n]|'')*'|[^\s#][^\n]*?)(?=[ \t]+#|[ \t]*$)",
        re.M,
    )
    if not pattern.search(text):
        raise ValueError(f"{params_file}: no ingest.source line found")
    scalar = _yaml_scalar(value)
    params_file.write_text(pattern.sub(lambda m: m.group(1) + scalar, text, count=1))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=Path, help="UTKFace folder, Kaggle .zip or official .tar.gz")


def run(args: argparse.Namespace) -> int:
    try:
        target = copy_into_raw(args.path)
    except (OSError, ValueError) as error:
        print(f"use-data: {error}")
        return 2
    subprocess.run(["dvc", "add", str(target)], check=True)
    set_ingest_source(target.as_posix())
    print(f"use-data: {target} is tracked by DVC and set as ingest.source; now run: dvc repro")
    return 0
