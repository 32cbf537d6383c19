"""`utkface app`: start the web app (`utkface/app/page.py`) with `streamlit run`.

The page gets the model URI in `UTKFACE_APP_MODEL` and the tracking store in
`MLFLOW_TRACKING_URI`; Streamlit is bound to 127.0.0.1 by default, headless, sends no usage
statistics and never shows tracebacks in the browser. The command replaces itself with
Streamlit (exec), so a SIGTERM or Ctrl-C to it stops the server and frees the port.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from utkface import app
from utkface.mlops import store, tracking
from utkface.mlops.registry import champion_uri
from utkface.params import load_params

PAGE = Path(app.__file__).resolve().with_name("page.py")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", metavar="URI", help="model URI (default: models:/<name>@champion)"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: this machine only)"
    )
    parser.add_argument("--port", type=int, default=8501, help="default: 8501")


def run(args: argparse.Namespace) -> int:
    """1 for a store copied from another clone; otherwise this process becomes Streamlit and
    never returns."""
    uri = args.model or champion_uri(load_params(only=("register",)).register_.model_name)
    try:
        tracking.check_store()
    except tracking.StoreMovedError as error:
        print(f"app: {error}", file=sys.stderr)
        return 1
    env = {**os.environ, "MLFLOW_TRACKING_URI": store.tracking_uri(), app.MODEL_ENV: uri}
    command = [
        *(sys.executable, "-m", "streamlit", "run", str(PAGE)),
        *("--server.address", args.host, "--server.port", str(args.port)),
        *("--server.headless", "true", "--server.fileWatcherType", "none"),
        *("--browser.gatherUsageStats", "false", "--client.showErrorDetails", "none"),
        *("--client.toolbarMode", "minimal"),
    ]
    print(f"app: serving {uri} on http://{args.host}:{args.port}", flush=True)
    os.execve(sys.executable, command, env)
