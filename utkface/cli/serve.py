"""`utkface serve`: the champion as a REST endpoint, via `mlflow models serve`.

The command replaces itself with `mlflow models serve` (exec), so a SIGTERM or Ctrl-C to it (a
process manager, `timeout`, a container stop) reaches the server: MLflow then stops its
uvicorn child, which it started to receive SIGTERM when its parent dies, and the port is free.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn

from utkface.mlops import tracking
from utkface.mlops.registry import champion_uri
from utkface.params import load_params


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model URI (default: models:/<name>@champion)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)


def run(args: argparse.Namespace) -> NoReturn:
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
    print("serve:", " ".join(command), flush=True)
    os.execve(command[0], command, env)
