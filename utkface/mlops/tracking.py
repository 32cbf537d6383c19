"""MLflow wiring: one tracking store, experiment names and lineage tags (no Keras here).

The store is `MLFLOW_TRACKING_URI` when set, otherwise `mlflow.db` (SQLite) at the repository
root. Queued DVC experiments run in a temporary copy under `.dvc/tmp/exps/`, so the root is
resolved to the repository that holds that copy: their runs land in the store that
`mlflow ui` at the repository root shows.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from utkface import paths

TRAIN_EXPERIMENT = "utkface-age-gender"
TUNE_EXPERIMENT = "utkface-age-gender-tuning"


def repo_root(start: Path | None = None) -> Path:
    """The user's repository root, also from inside a DVC queue's temporary workspace."""
    here = (start or Path.cwd()).resolve()
    parts = here.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return here


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / paths.MLFLOW_DB}"


def _artifact_location(uri: str) -> str | None:
    """Artifacts beside a SQLite store (never inside a temporary workspace); a server decides
    for itself."""
    if uri.startswith("sqlite:///"):
        store = Path(uri.removeprefix("sqlite:///")).absolute()
        return (store.parent / paths.MLFLOW_ARTIFACTS).as_uri()
    return None


def use_experiment(name: str) -> str:
    """Point MLflow at the project's store and experiment (created on first use)."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        try:
            experiment_id = mlflow.create_experiment(
                name, artifact_location=_artifact_location(uri)
            )
        except MlflowException as error:  # a tune chief and its workers start together
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment_id = MlflowClient().get_experiment_by_name(name).experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def git_commit() -> str:
    """HEAD's commit, suffixed with -dirty when tracked files have uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def data_version(
    files: Iterable[Path] = (paths.IMAGES, *map(paths.split_table, paths.SPLIT_NAMES)),
) -> str:
    """md5 over the image cache and the three split tables: what a model was trained and
    tested on. Equal versions mean comparable test metrics."""
    digest = hashlib.md5()
    for path in files:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def lineage_tags(version: str) -> dict[str, str]:
    return {
        "git_commit": git_commit(),
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME", "workspace"),
        "data_version": version,
    }


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'train': {'epochs': 3}} -> {'train.epochs': 3}, the keys `dvc exp show` uses too."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
