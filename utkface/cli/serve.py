"""`utkface serve`: the champion as a REST endpoint: MLflow's scoring server (the one
`mlflow models serve` runs, same routes and answers) behind a request-size limit
(`utkface.inference.server`).

The command replaces itself with the server (exec), so a SIGTERM or Ctrl-C to it (a process
manager, `timeout`, a container stop) stops the server and frees the port.
"""

from __future__ import annotations

import argparse
import os
import sys

from utkface.inference import server
from utkface.mlops import registry, store, tracking
from utkface.params import load_params

WORKERS = 1  # on 2 cores, 2 used twice the memory for no more requests/s (docs/benchmarks.md)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model URI (default: models:/<name>@champion)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument(
        "--workers",
        type=int,
        default=WORKERS,
        help=f"server processes, each with its own copy of the model (default {WORKERS})",
    )


def run(args: argparse.Namespace) -> int:
    """1 when the store was copied from another clone or the model has no champion; otherwise
    this process becomes the server and never returns."""
    params = load_params(only=("register",))
    try:
        tracking.check_store()
    except tracking.StoreMovedError as error:
        print(f"serve: {error}", file=sys.stderr)
        return 1
    uri, shown = args.model, args.model
    if uri is None:  # the champion's folder in the store, loaded in place (not copied)
        name = params.register_.model_name
        if (uri := registry.champion_files(name)) is None:
            print(f"serve: {registry.no_champion(name)}", file=sys.stderr)
            return 1
        shown = f"{registry.champion_uri(name)} ({uri})"
    limit = params.register_.max_request_bytes
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": store.tracking_uri(),
        server.MODEL_ENV: uri,
        server.LIMIT_ENV: str(limit),
    }
    command = [sys.executable, "-m", "uvicorn", "--factory", f"{server.__name__}:create_app"]
    command += ["--host", args.host, "--port", str(args.port), "--workers", str(args.workers)]
    print(
        f"serve: {shown} on http://{args.host}:{args.port}, requests up to {limit} bytes",
        flush=True,
    )
    os.execve(sys.executable, command, env)
