"""MLflow wiring: one tracking store, experiment names, lineage tags, datasets (no Keras here).

The store is `MLFLOW_TRACKING_URI` when set, otherwise `mlflow.db` (SQLite) at the repository
root. Queued DVC experiments run in a temporary copy under `.dvc/tmp/exps/`, so the root is
resolved to the repository that holds that copy: their runs land in the store that
`mlflow ui` at the repository root shows.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import subprocess
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import mlflow.data
import pandas as pd
from mlflow import MlflowClient
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.exceptions import MlflowException

from utkface import paths
from utkface.mlops.store import local_path, sqlite_store, tracking_uri

if TYPE_CHECKING:
    from dvc.repo import Repo

TRAIN_EXPERIMENT = "utkface-age-gender"
TUNE_EXPERIMENT = "utkface-age-gender-tuning"
DATA_FILES = (paths.IMAGES, *map(paths.split_table, paths.SPLIT_NAMES))
SPLIT_CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}


def _artifact_location(uri: str) -> str | None:
    """Artifacts beside a SQLite store (never inside a temporary workspace); a server decides
    for itself."""
    store = sqlite_store(uri)
    return None if store is None else (store.parent / paths.MLFLOW_ARTIFACTS).as_uri()


class StoreMovedError(MlflowException):
    """A SQLite store whose artifacts are not beside it: copied or moved from another clone."""


def check_store(uri: str | None = None) -> None:
    """Refuse a SQLite store whose project experiments keep their artifacts anywhere but in
    `mlartifacts/` beside it. MLflow records artifact locations as absolute paths, so a
    copied or moved clone's `mlflow.db` would otherwise read and write the original clone's
    artifacts without a word. Checked once per store and process (a store does not move
    under a running process; the app looks the model up on every page run)."""
    _check_store(uri or tracking_uri())


@functools.cache
def _check_store(uri: str) -> None:
    store = sqlite_store(uri)
    if store is None or not store.exists():
        return
    beside = store.parent / paths.MLFLOW_ARTIFACTS
    client = MlflowClient(uri)
    for name in (TRAIN_EXPERIMENT, TUNE_EXPERIMENT):
        experiment = client.get_experiment_by_name(name)
        where = experiment and local_path(experiment.artifact_location)
        if where is not None and not where.is_relative_to(beside):
            raise StoreMovedError(
                f"the tracking store {store} keeps the artifacts of experiment {name!r} in "
                f"{where}, not beside it in {beside}: it was copied or moved from another "
                f"clone. Use that clone's store (export MLFLOW_TRACKING_URI=sqlite:///"
                f"{where.parent / paths.MLFLOW_DB}), or start a new one here (move {store} "
                f"and {beside} out of the way)."
            )


# Marks the experiments as model training, not GenAI. MLflow 3.17's UI still opens on its GenAI
# overview in a fresh browser (the sidebar's switch, kept in local storage, decides):
# docs/experiments.md says what to click, or which page lists the runs.
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


def _dvc_repo() -> Repo | None:
    """The DVC repository around the working directory; None outside one (or in a copy that
    lost its .git). DVC is imported here: it comes with the pipeline extra, and the serving
    install imports this module too."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo
    from dvc.scm import SCMError

    try:
        return Repo()
    except (NotDvcRepoError, SCMError):
        return None


def changed_params() -> dict[str, Any]:
    """The params.yaml keys (dotted) whose values differ from HEAD's, with the workspace
    values: what `dvc exp run -S ...` set (`dvc params diff`; DVC reads the files without its
    repository lock, so a stage can ask while `dvc repro` runs it). A list comes as DVC shows
    it, '[1, 3]'. Empty outside a DVC repository in git."""
    from dvc.scm import NoSCMError

    repo = _dvc_repo()
    if repo is None:
        return {}
    with repo:
        try:
            diff = repo.params.diff().get("diff", {}).get(paths.PARAMS.as_posix(), {})
        except NoSCMError:  # `dvc init --no-scm`: no HEAD to compare with
            return {}
    return {key: diff[key]["new"] for key in sorted(diff)}


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


def file_md5s(files: Iterable[Path] = DATA_FILES) -> dict[Path, str]:
    """Each file's md5 as DVC computes it, the md5 it records in dvc.lock. In a DVC repository
    it comes from DVC's state database, which keeps the md5s DVC computed by inode, mtime and
    size, so a stage does not re-read the hundreds of MB DVC has just hashed, and a file edited
    since (its size kept or not) is hashed again; outside one (a stage's main() run by the
    tests) every file is hashed."""
    from dvc.fs import localfs
    from dvc_data.hashfile.hash import hash_file

    repo = _dvc_repo()
    with repo or contextlib.nullcontext():  # closes the repository and its state database
        state = None if repo is None else repo.state
        return {  # "md5": DVC 3's hash of an output (dvc.lock's `hash: md5`)
            path: hash_file(str(path.absolute()), localfs, "md5", state=state)[1].value
            for path in files
        }


def data_version(files: Iterable[Path] = DATA_FILES) -> str:
    """md5 over the md5s of the image cache and the three split tables: what a model was
    trained and tested on. Equal versions mean comparable test metrics."""
    return hashlib.md5("".join(file_md5s(files).values()).encode()).hexdigest()


def log_split_datasets(names: Sequence[str], version: str) -> None:
    """Log the split tables `names` ('train', 'val', 'test') as the active run's MLflow
    datasets, MLflow's record of what a run trained and tested on: each named after its split,
    its digest the table's md5, tagged with the `data_version`."""
    md5s = file_md5s(map(paths.split_table, names))
    for name, (table, md5) in zip(names, md5s.items(), strict=True):
        source = LocalArtifactDatasetSource(str(table.absolute()))
        with warnings.catch_warnings():  # a hint for model signatures, not for a record
            warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer", UserWarning)
            dataset = mlflow.data.from_pandas(pd.read_parquet(table), source, name=name, digest=md5)
            _log_input(dataset, context=SPLIT_CONTEXTS[name], tags={"data_version": version})


def _log_input(dataset: mlflow.data.Dataset, context: str, tags: dict[str, str]) -> None:
    """`mlflow.log_input`, tried once more when another run inserted the same dataset at the
    same moment. MLflow's store looks a dataset up before inserting it, so two queued
    experiments logging one split into one server (`dvc queue start -j 2`) can both insert it,
    and one fails on the unique key; the second try finds the dataset and links it."""
    try:
        mlflow.log_input(dataset, context=context, tags=tags)
    except MlflowException as error:
        if "unique constraint" not in str(error).lower():
            raise
        mlflow.log_input(dataset, context=context, tags=tags)


def lineage_tags(version: str) -> dict[str, str]:
    return {
        "git_commit": git_commit(),
        "git_changes": workspace_changes(),
        "dvc_exp_name": dvc_experiment() or "workspace",
        "data_version": version,
    }


def flatten(params: Mapping[str, Any]) -> dict[str, Any]:
    """{'train': {'epochs': 3}} -> {'train.epochs': 3}, the keys `dvc exp show` uses too; an
    empty mapping adds no key."""
    (flat,) = pd.json_normalize(params, sep=".").to_dict(orient="records")
    return flat
