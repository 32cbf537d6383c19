"""`utkface synth OUT_DIR`: write synthetic demo faces, e.g. to try `utkface predict`."""

from __future__ import annotations

import argparse
from pathlib import Path

from utkface.data.synthetic import write_synthetic


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    written = write_synthetic(args.out_dir, args.count, args.seed)
    print(f"synth: wrote {len(written)} synthetic faces to {args.out_dir}")
    return 0
