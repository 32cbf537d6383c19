"""The `utkface` console script: user commands around the pipeline and the model registry."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from types import ModuleType

from stages import app_cli, predict, promote, serve, synth_cli, use_data

COMMANDS: dict[str, tuple[ModuleType, str]] = {
    "use-data": (use_data, "copy a UTKFace folder/zip/tar.gz into data/raw, dvc add it, use it"),
    "synth": (synth_cli, "write synthetic demo faces (UTKFace names) to a folder"),
    "promote": (promote, "move the champion alias to a registered version (quality-gated)"),
    "predict": (predict, "predict age and gender for image files or folders"),
    "serve": (serve, "serve the champion over REST (mlflow models serve)"),
    "app": (app_cli, "web app: upload a photo, see each face's age and gender (Streamlit)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="utkface", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    sys.exit(run(args))


if __name__ == "__main__":
    main()
