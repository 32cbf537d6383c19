"""`utkface serve`: the champion as a REST endpoint, via `mlflow models serve`."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from utkface.mlops import tracking
from utkface.mlops.registry import champion_uri
from utkface.params import load_params


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model URI (default: models:/<name>@champion)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)


def run(args: argparse.Namespace) -> int:
    uri = args.model or champion_uri(load_params().register_.model_name)
    # mlflow starts uvicorn from PATH: put this environment's scripts first
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking.tracking_uri(),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    command = [
        str(Path(bin_dir) / "mlflow"),
        "models",
        "serve",
        "-m",
        uri,
        "--env-manager",
        "local",
        "--host",
        args.host,
        "--port",
        str(args.port),
    ]
    print("serve:", " ".join(command))
    return subprocess.call(command, env=env)
