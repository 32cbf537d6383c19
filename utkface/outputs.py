"""How stages write their small JSON outputs: indented and newline-terminated, the form git
diffs, `dvc metrics` and a reader all take."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
