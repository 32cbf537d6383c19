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
from utkface.mlops.tracking_server import ServerConfig, TrackingServerError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument(
        "--home",
        type=Path,
        default=tracking_server.default_home(),
        help="folder holding the database, the artifacts and the logs (default: %(default)s)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="MLflow's address (%(default)s)")
    parser.add_argument("--port", type=int, default=5000, help="MLflow's port (%(default)s)")
    parser.add_argument(
        "--db-port", type=int, default=5433, help="PostgreSQL's port on 127.0.0.1 (%(default)s)"
    )
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="listen on a non-loopback --host (the server has no authentication)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        config = ServerConfig(args.home.absolute(), args.host, args.port, args.db_port)
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
