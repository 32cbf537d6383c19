"""`utkface use-data PATH`: point the pipeline at a user's UTKFace copy, versioned by DVC.

Copies the folder / .zip / .tar.gz into `data/raw/`, tracks it with `dvc add` (so a change to
the raw data re-runs `ingest`, and `dvc push` backs it up), and sets `ingest.source` in
params.yaml. Copying, rather than pointing at the original, is what lets DVC see every change:
the ingest stage depends on `data/raw`, which DVC hashes.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML, YAMLError

from utkface import paths
from utkface.data.sources import ARCHIVE_SUFFIXES
from utkface.params import yaml_problem


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


def _round_trip() -> YAML:
    """ruamel.yaml in round-trip mode: comments, key order, quoting and flow style survive."""
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096  # a long path stays on its line
    # ruamel writes None as an empty value; params.yaml spells it `null` (`lr: null`)
    yaml.representer.add_representer(
        type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    return yaml


def read_params(params_file: Path = paths.PARAMS) -> tuple[YAML, Any]:
    """`params_file` read for a round trip, and its reader; ValueError when it is not YAML or
    has no `ingest.source` line."""
    yaml = _round_trip()
    try:
        params = yaml.load(params_file)
    except YAMLError as error:
        raise ValueError(f"{params_file}: not valid YAML: {yaml_problem(error)}") from None
    ingest = params.get("ingest") if isinstance(params, dict) else None
    if not isinstance(ingest, dict) or "source" not in ingest:
        raise ValueError(f"{params_file}: no ingest.source line found")
    return yaml, params


def set_ingest_source(value: str, params_file: Path = paths.PARAMS) -> None:
    """Set `ingest.source` in `params_file`, keeping its comments and layout."""
    yaml, params = read_params(params_file)
    params["ingest"]["source"] = value
    yaml.dump(params, params_file)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=Path, help="UTKFace folder, Kaggle .zip or official .tar.gz")


def run(args: argparse.Namespace) -> int:
    """2, with nothing copied, for a bad params.yaml or PATH."""
    try:
        read_params()
        target = copy_into_raw(args.path)
    except (OSError, ValueError) as error:
        print(f"use-data: {error}", file=sys.stderr)
        return 2
    subprocess.run(["dvc", "add", str(target)], check=True)
    set_ingest_source(target.as_posix())
    print(f"use-data: {target} is tracked by DVC and set as ingest.source; now run: dvc repro")
    return 0
