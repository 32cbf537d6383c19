"""MLflow wiring: one tracking store, experiment names and lineage tags (no Keras here).

The store is `MLFLOW_TRACKING_URI` when set, otherwise `mlflow.db` (SQLite) at the repository
root. Queued DVC experiments run in a temporary copy under `.dvc/tmp/exps/`, so the root is
resolved to the repository that holds that copy: their runs land in the store that
`mlflow ui` at the repository root shows.
"""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import mlflow
import yaml
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


class StoreMovedError(MlflowException):
    """A SQLite store whose artifacts are not beside it: copied or moved from another clone."""


def _local_path(location: str) -> Path | None:
    """The folder of a local artifact location; None for a remote one (s3://, http://...)."""
    parsed = urlparse(location)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path)).absolute()
    return None


def check_store(uri: str | None = None) -> None:
    """Refuse a SQLite store whose project experiments keep their artifacts anywhere but in
    `mlartifacts/` beside it. MLflow records artifact locations as absolute paths, so a
    copied or moved clone's `mlflow.db` would otherwise read and write the original clone's
    artifacts without a word. Checked once per store and process (a store does not move
    under a running process; the app looks the model up on every page run)."""
    _check_store(uri or tracking_uri())


@functools.cache
def _check_store(uri: str) -> None:
    if not uri.startswith("sqlite:///"):
        return
    store = Path(uri.removeprefix("sqlite:///")).absolute()
    if not store.exists():
        return
    beside = store.parent / paths.MLFLOW_ARTIFACTS
    client = MlflowClient(uri)
    for name in (TRAIN_EXPERIMENT, TUNE_EXPERIMENT):
        experiment = client.get_experiment_by_name(name)
        where = experiment and _local_path(experiment.artifact_location)
        if where is not None and not where.is_relative_to(beside):
            raise StoreMovedError(
                f"the tracking store {store} keeps the artifacts of experiment {name!r} in "
                f"{where}, not beside it in {beside}: it was copied or moved from another "
                f"clone. Use that clone's store (export MLFLOW_TRACKING_URI=sqlite:///"
                f"{where.parent / paths.MLFLOW_DB}), or start a new one here (move {store} "
                f"and {beside} out of the way)."
            )


# MLflow 3's UI opens an experiment without this tag in its GenAI view (traces, a chat
# assistant); with it, in the model-training view, where runs and the compare view are.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def use_experiment(name: str) -> str:
    """Point MLflow at the project's store and experiment (created on first use, tagged as
    model development: `EXPERIMENT_KIND`)."""
    uri = tracking_uri()
    check_store(uri)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        experiment_id = experiment.experiment_id
        if not EXPERIMENT_KIND.items() <= experiment.tags.items():  # made by an older version
            for key, value in EXPERIMENT_KIND.items():
                MlflowClient().set_experiment_tag(experiment_id, key, value)
    else:
        try:
            experiment_id = mlflow.create_experiment(
                name, artifact_location=_artifact_location(uri), tags=EXPERIMENT_KIND
            )
        except MlflowException as error:  # a tune chief and its workers start together
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment_id = MlflowClient().get_experiment_by_name(name).experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def _git(*args: str) -> str | None:
    """A git command's output in the current directory; None outside a repository."""
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout


def git_commit() -> str:
    """HEAD's commit ('unknown' outside a git repository). What the workspace changes on top
    of it is `workspace_changes`."""
    head = _git("rev-parse", "HEAD")
    return head.strip() if head else "unknown"


def changed_params() -> dict[str, Any]:
    """The params.yaml keys (dotted) whose values differ from HEAD's, with the workspace
    values: what `dvc exp run -S ...` set. Empty outside a git repository."""
    committed = _git("show", f"HEAD:{paths.PARAMS.as_posix()}")
    if committed is None or not paths.PARAMS.exists():
        return {}
    before = flatten(yaml.safe_load(committed) or {})
    after = flatten(yaml.safe_load(paths.PARAMS.read_text()) or {})
    return {
        k: after.get(k)
        for k in sorted(before.keys() | after.keys())
        if before.get(k) != after.get(k)
    }


def changed_files() -> list[str]:
    """Tracked files that differ from HEAD, other than those DVC itself rewrites during a run
    (params.yaml under `dvc exp run -S`, dvc.lock, the metrics files)."""
    listed = _git("diff", "--name-only", "HEAD", "--") or ""
    rewritten = (paths.PARAMS.as_posix(), paths.DVC_LOCK.as_posix())
    return [
        name
        for name in listed.splitlines()
        if name not in rewritten and not name.startswith(f"{paths.METRICS.as_posix()}/")
    ]


def _listed(changes: Mapping[str, Any] | list[str], most: int = 4) -> str:
    items = [f"{k}={v}" for k, v in changes.items()] if isinstance(changes, Mapping) else changes
    shown = ", ".join(items[:most])
    return shown + (f" (+{len(items) - most} more)" if len(items) > most else "")


def workspace_changes() -> str:
    """What this run's workspace changes on top of `git_commit`, e.g. 'params: lr=0.0005' or
    'params: seed=3; files: utkface/model/head.py'; 'none' for a clean checkout."""
    parts = []
    if params := changed_params():
        parts.append(f"params: {_listed(params)}")
    if files := changed_files():
        parts.append(f"files: {_listed(files)}")
    return "; ".join(parts) or "none"


def dvc_experiment() -> str | None:
    """The DVC experiment this process runs in (DVC sets DVC_EXP_NAME for `dvc exp run`)."""
    return os.environ.get("DVC_EXP_NAME") or None


def run_name(stage: str) -> str:
    """The MLflow run name: the DVC experiment's name, so both UIs list a run by the same name;
    outside an experiment the stage and what differs from HEAD ('train lr=0.0005') or the
    commit ('train @43cdba5')."""
    if experiment := dvc_experiment():
        return experiment
    params = changed_params()
    return f"{stage} {_listed(params, most=3)}" if params else f"{stage} @{git_commit()[:7]}"


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
        "git_changes": workspace_changes(),
        "dvc_exp_name": dvc_experiment() or "workspace",
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
