"""A temporary copy of this checkout's pipeline as its own git and DVC repository (its own DVC
cache, no run cache shared with the developer's repo), for tests that run `dvc` itself."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow import MlflowClient

REPO = Path(__file__).resolve().parents[1]
PROJECT_FILES = [
    "stages",
    "utkface",
    "dvc.yaml",
    "params.yaml",
    "pyproject.toml",
    ".gitignore",
    ".dvcignore",
    ".dvc/config",
    ".dvc/.gitignore",
    ".dvc/plots",
    "data/raw/README.md",
]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without MLflow and DVC settings, with this venv's programs
    first on PATH and a git identity; `extra` on top."""
    bin_dir = str(Path(sys.executable).parent)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    return clean | {
        "PATH": f"{bin_dir}{os.pathsep}{clean.get('PATH', '')}",
        "GIT_AUTHOR_NAME": "ci",
        "GIT_AUTHOR_EMAIL": "ci@example.com",
        "GIT_COMMITTER_NAME": "ci",
        "GIT_COMMITTER_EMAIL": "ci@example.com",
        "DVC_NO_ANALYTICS": "1",
        **extra,
    }


def run(
    args: list[str], cwd: Path, env: dict[str, str], check: bool = True
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=1500)
    if check:
        assert done.returncode == 0, (
            f"{' '.join(args)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        )
    return done


def _project(root: Path, env: dict[str, str], params: dict[str, Any]) -> Path:
    """The code of this checkout at `root` with `params` as params.yaml (never the workspace's,
    which `dvc exp run` rewrites), in a new git repository."""
    for name in PROJECT_FILES:
        source, target = REPO / name, root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            shutil.copy2(source, target)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q", "-b", "main"], root, env)
    return root


def committed_project(root: Path, env: dict[str, str], params: dict[str, Any]) -> Path:
    """`_project` committed, nothing reproduced: enough for `dvc exp run check_params`."""
    _project(root, env, params)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-q", "-m", "project"], root, env)
    return root


def reproduced_project(root: Path, env: dict[str, str], params: dict[str, Any]) -> Path:
    """`_project` committed, `dvc repro`, then dvc.lock and the metrics committed, as the
    README's contributing notes say."""
    return committed_and_reproduced(_project(root, env, params), env)


def committed_and_reproduced(root: Path, env: dict[str, str]) -> Path:
    """The git repository at `root` committed, `dvc repro`, then dvc.lock and the metrics
    committed."""
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-q", "-m", "project"], root, env)
    run(["dvc", "repro"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-q", "-m", "dvc repro"], root, env)
    return root


def copied_project(source: Path, target: Path) -> Path:
    """A copy of the reproduced project `source` at `target` that a test may change: its git
    repository, DVC cache and MLflow store (the store's absolute artifact paths moved to the
    copy, as `tracking.check_store` requires). DVC's temporary files stay behind."""
    dvc_dir = (source / ".dvc").resolve()

    def skip_dvc_tmp(folder: str, names: list[str]) -> list[str]:
        return ["tmp"] if Path(folder).resolve() == dvc_dir else []

    shutil.copytree(source, target, symlinks=True, ignore=skip_dvc_tmp)
    old, new = f"{source.resolve()}/", f"{target.resolve()}/"
    with sqlite3.connect(target / "mlflow.db") as db:
        tables = [
            name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
        ]
        for table in tables:
            for column in db.execute(f"SELECT name, type FROM pragma_table_info('{table}')"):
                if column[1].upper().startswith(("VARCHAR", "TEXT", "STRING")):
                    db.execute(
                        f'UPDATE "{table}" SET "{column[0]}" = replace("{column[0]}", ?, ?)',
                        (old, new),
                    )
    return target


def stages_run(output: str) -> set[str]:
    """The stages a `dvc repro` or `dvc queue logs` output says it ran."""
    return {line.split("'")[1] for line in output.splitlines() if "Running stage" in line}


def store_client(root: Path) -> MlflowClient:
    """A client of the project's MLflow store at `root` (also MLflow's process-wide URI)."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    return MlflowClient(uri)


def train_runs(root: Path) -> list[mlflow.entities.Run]:
    """The project's runs in its experiment, newest first."""
    client = store_client(root)
    experiment = client.get_experiment_by_name("utkface-age-gender")
    return client.search_runs([experiment.experiment_id], order_by=["start_time DESC"])
