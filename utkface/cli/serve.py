"""`utkface serve`: the champion as a REST endpoint: MLflow's scoring server (the one
`mlflow models serve` runs, same routes and answers) behind a request-size limit
(`utkface.inference.server`).

By default one worker process answers per usable core. On Linux the command loads the model
once and forks its workers from it (`utkface.inference.forked_server`), and stays as their
supervisor; otherwise (one worker, another system, or a model whose loading starts threads) it
replaces itself with uvicorn (exec), whose workers each load their own model. Either way a
SIGTERM or Ctrl-C to it (a process manager, `timeout`, a container stop) stops the server and
frees the port.
"""

from __future__ import annotations

import argparse
import os
import sys

from utkface.cli.arguments import positive_int
from utkface.inference import forked_server, server
from utkface.inference.processes import usable_cores
from utkface.mlops import registry, store, tracking
from utkface.params import load_params


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model URI (default: models:/<name>@champion)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=usable_cores(),
        help="server processes (default: one per usable core); on Linux forked after the "
        "model loads, so they share its weights",
    )


def run(args: argparse.Namespace) -> int:
    """1 when the store was copied from another clone, the model has no champion or the port
    cannot be bound; otherwise the server's exit code once stopped (forked workers), or this
    process becomes uvicorn and never returns."""
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
    os.environ["MLFLOW_TRACKING_URI"] = store.tracking_uri()
    print(
        f"serve: {shown} on http://{args.host}:{args.port}, requests up to {limit} bytes, "
        f"{args.workers} worker{'s' if args.workers > 1 else ''}",
        flush=True,
    )
    if args.workers > 1 and sys.platform == "linux":
        try:
            code = forked_server.serve(uri, limit, args.host, args.port, args.workers)
        except OSError as error:
            print(f"serve: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
            return 1
        if code is not None:
            return code
        print(
            "serve: the model started threads as it loaded, so each worker loads its own copy",
            file=sys.stderr,
            flush=True,
        )
    command = [sys.executable, "-m", "uvicorn", "--factory", f"{server.__name__}:create_app"]
    command += ["--host", args.host, "--port", str(args.port), "--workers", str(args.workers)]
    env = {**os.environ, server.MODEL_ENV: uri, server.LIMIT_ENV: str(limit)}
    os.execve(sys.executable, command, env)
