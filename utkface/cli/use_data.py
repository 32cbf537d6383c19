"""`utkface use-data PATH`: point the pipeline at a user's UTKFace copy, versioned by DVC.

Copies the folder / .zip / .tar.gz into `data/raw/`, tracks it with `dvc add` (so a change to
the raw data re-runs `ingest`, and `dvc push` backs it up), and sets `ingest.source` in
params.yaml. Copying, rather than pointing at the original, is what lets DVC see every change:
the ingest stage depends on `data/raw`, which DVC hashes. A source from which ingest would admit
no image is refused before anything changes, rather than failing later in `dvc repro`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML, YAMLError

from utkface import paths
from utkface.data.admission import admit
from utkface.data.sources import ARCHIVE_SUFFIXES, iter_source
from utkface.params import Params, load_params, yaml_problem

# the params sections the admission rules read
ADMISSION_SECTIONS = ("seed", "ingest", "validate")


def raw_target(source: Path, raw_dir: Path = paths.RAW) -> Path:
    """Where `source` (resolved) is copied in `raw_dir`; raises if it does not exist, is a file
    but not an archive, or is already there."""
    if not source.exists():
        raise FileNotFoundError(f"{source}: does not exist")
    if source.is_file() and not source.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise ValueError(f"{source}: expected a folder, a .zip or a .tar.gz")
    target = raw_dir / source.name
    if target.exists():
        raise FileExistsError(f"{target}: already exists; remove it first or pick another copy")
    return target


def check_usable(source: Path, params: Params) -> None:
    """Raise ValueError, saying why, unless ingest would admit at least one file of `source`.

    Each file goes through ingest's own admission rules until one is admitted, so a usable
    source costs about one decoded image."""
    cfg = params.ingest
    files = iter_source(str(source), cfg.max_file_bytes, cfg.synthetic_count, params.seed)
    rejected: Counter[str] = Counter()
    example = ""
    for raw in files:
        admission = admit(
            [raw], cfg.image_size, cfg.max_image_pixels, params.validate_.age_max, progress=False
        )
        if not admission.labels.empty:
            return
        rejection = admission.rejections.iloc[0]
        rejected[rejection.category] += 1
        example = example or f"; e.g. {rejection.file}: {rejection.reason}"
    if not rejected:
        raise ValueError(f"{source}: no usable image: it holds no file")
    counts = ", ".join(f"{category} {count}" for category, count in rejected.most_common())
    raise ValueError(
        f"{source}: no usable image among its {rejected.total()} file(s) ({counts}{example}); "
        "expected UTKFace's images, named age_gender_race_timestamp.jpg (or .jpg.chip.jpg)"
    )


def copy_into_raw(source: Path, raw_dir: Path = paths.RAW) -> Path:
    """Copy a folder or archive into `raw_dir`; returns the copy's path."""
    source = source.expanduser().resolve()
    target = raw_target(source, raw_dir)
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
    """Exit status 2, with the reason and nothing changed, when the source is refused."""
    source = args.path.expanduser().resolve()
    try:
        read_params()
        raw_target(source)  # before reading the whole source
        check_usable(source, load_params(only=ADMISSION_SECTIONS))
        target = copy_into_raw(source)
    except (OSError, ValueError) as error:
        print(f"use-data: {error}", file=sys.stderr)
        return 2
    subprocess.run(["dvc", "add", str(target)], check=True)
    set_ingest_source(target.as_posix())
    print(f"use-data: {target} is tracked by DVC and set as ingest.source; now run: dvc repro")
    return 0
