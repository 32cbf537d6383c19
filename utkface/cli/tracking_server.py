"""`utkface tracking-server`: a team's MLflow tracking server on PostgreSQL, for development on
one machine (`utkface.mlops.tracking_server`).

`start` prints the one line to export on stdout and the rest on stderr, so
`eval "$(utkface tracking-server start)"` both starts it and points this shell at it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from utkface.mlops import tracking_server
from utkface.mlops.tracking_server import TrackingServerError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument(
        "--home",
        type=Path,
        default=tracking_server.default_home(),
        help="folder holding the database, the artifacts and the logs (default: %(default)s)",
    )
    # No defaults here: an absent flag means "what the home recorded at its start", else
    # ServerConfig's default; a given one must agree with that record for status and stop.
    parser.add_argument("--host", help="MLflow's address (the home's, else 127.0.0.1)")
    parser.add_argument("--port", type=int, help="MLflow's port (the home's, else 5000)")
    parser.add_argument(
        "--db-port", type=int, help="PostgreSQL's port on 127.0.0.1 (the home's, else 5433)"
    )
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="listen on a non-loopback --host (the server has no authentication)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        home = args.home.absolute()
        flags = {name: getattr(args, name) for name in tracking_server.RECORDED}
        flags = {name: value for name, value in flags.items() if value is not None}
        if args.action != "start":
            tracking_server.check_flags(home, flags)
        config = tracking_server.configured(home, flags)
        if args.action == "start":
            lines = tracking_server.start(config, args.allow_remote)
        elif args.action == "stop":
            lines = tracking_server.stop(config)
        else:
            up, lines = tracking_server.status(config)
    except TrackingServerError as error:
        print(f"tracking-server: {error}", file=sys.stderr)
        return 1
    for line in lines:
        print(f"tracking-server: {line}", file=sys.stderr)
    if args.action == "start":
        print(f"export MLFLOW_TRACKING_URI={config.tracking_uri}", flush=True)
    return 0 if args.action != "status" or up else 3
