"""The `utkface` console script: user commands around the pipeline and the model registry.

Each command's module is imported only when that command runs, so `utkface --help` and the
light commands (`promote`, `serve`, `use-data`, `tracking-server`) never load TensorFlow.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from utkface.inference.arrowless import keep_arrow_out
from utkface.params import ParamsError

COMMANDS: dict[str, tuple[str, str]] = {
    "use-data": ("use_data", "copy a UTKFace folder/zip/tar.gz into data/raw, dvc add it, use it"),
    "synth": ("synth", "write synthetic demo faces (UTKFace names) to a folder"),
    "promote": ("promote", "move the champion alias to a registered version (quality-gated)"),
    "predict": ("predict", "predict age and gender for image files or folders"),
    "serve": ("serve", "serve the champion over REST (mlflow models serve)"),
    "app": ("app", "web app: upload a photo, see each face's age and gender (Streamlit)"),
    "tracking-server": (
        "tracking_server",
        "start/stop a shared MLflow tracking server on PostgreSQL (loopback by default)",
    ),
}
# the commands that answer images, which need no Apache Arrow (`utkface.inference.arrowless`)
ANSWERING = ("predict", "serve")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command's name and help; only `command`'s module is imported, for
    its arguments."""
    parser = argparse.ArgumentParser(prog="utkface", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(f"utkface.cli.{module_name}")
            module.add_arguments(sub)
            sub.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Run one command; a bad params.yaml ends any of them with exit status 2, as argparse ends
    a bad argument."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    if command in ANSWERING:
        keep_arrow_out()  # before the command's module imports pandas
    args = build_parser(command).parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        status = run(args)
    except ParamsError as error:
        print(f"{args.command}: {error}", file=sys.stderr)
        status = 2
    sys.exit(status)


if __name__ == "__main__":
    main()
