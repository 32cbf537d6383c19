"""The committed dvc.lock and metrics match the committed code and params, so that a fresh clone
and every queued experiment start from what the code says (DVC's workflow: change a stage,
`dvc repro`, commit dvc.lock with the metrics it writes).

Checked on a clone of HEAD: neither uncommitted edits nor the workspace that `dvc exp run`
rewrites can make it pass or fail. A fresh clone may lack outputs (not in cache, deleted);
it must never see a stage whose code, params, command or committed metrics differ from the lock.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
MISSING = {"deleted", "not in cache"}


def stale_entries(status: dict[str, list[Any]]) -> dict[str, list[str]]:
    """What `dvc status --json` reports beyond missing outputs, per stage."""
    stale: dict[str, list[str]] = {}
    for stage, items in status.items():
        for item in items:
            if isinstance(item, str):  # "changed command", "always changed"
                stale.setdefault(stage, []).append(item)
                continue
            for kind, changes in item.items():
                for path, change in changes.items():
                    missing = kind in ("changed outs", "changed deps") and change in MISSING
                    if not missing:
                        stale.setdefault(stage, []).append(f"{kind}: {path} {change}")
    return stale


def test_stale_entries_ignore_missing_outputs_only() -> None:
    status = {
        "ingest": [{"changed outs": {"data/ingested": "not in cache"}}],
        "features": [{"changed deps": {"data/ingested/labels.parquet": "deleted"}}],
        "train": [
            {"changed deps": {"stages/train.py": "modified"}},
            {"changed params": {"params.yaml": {"lr": "modified"}}},
            "changed command",
        ],
        "evaluate": [{"changed outs": {"metrics/evaluate.json": "modified"}}],
    }
    assert stale_entries(status) == {
        "train": [
            "changed deps: stages/train.py modified",
            "changed params: params.yaml {'lr': 'modified'}",
            "changed command",
        ],
        "evaluate": ["changed outs: metrics/evaluate.json modified"],
    }


@pytest.mark.skipif(not (REPO / ".git").exists(), reason="not a git checkout")
def test_committed_dvc_lock_matches_the_committed_code(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVC_")}
    done = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "--json"],
        cwd=clone,
        env=env | {"DVC_NO_ANALYTICS": "1"},
        capture_output=True,
        text=True,
        check=True,
    )
    stale = stale_entries(json.loads(done.stdout))
    assert not stale, (
        "the committed dvc.lock is stale (it does not match the committed code, params or "
        f"metrics): {json.dumps(stale, indent=2)}\nRun `dvc repro` and commit dvc.lock with "
        "the metrics/ files it writes."
    )
