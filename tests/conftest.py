"""Shared fixtures. The tests come in tiers, one folder each:

- unit/: pure functions on tiny in-memory data;
- data/: the data stages (ingest, validate, balance, split), sources and the GX suite;
- model/: the network, the fit loop, tune and train on tiny synthetic projects;
- integration/: the MLflow store, registry, served model, CLI, web app and the DVC DAG;
- realdata/: ../shared/utkface/crop_part1_dev when it exists (skipped otherwise).

Helpers imported by name live beside this file: `tiny` (tiny configs, data and projects),
`model_fixtures` (a throwaway MLflow store and registered tiny models), `raw_files`,
`dvc_project` (a copy of the pipeline as its own git and DVC repository, for `dvc` itself).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dvc_project import clean_env, reproduced_project
from filelock import FileLock
from tiny import dag_params, free_port

from utkface.mlops import tracking_server
from utkface.mlops.tracking_server import ServerConfig, TrackingServerError
from utkface.model.fitting import seed_everything

# The modules that take minutes, in the order the workers get them, before all others.
# pytest-xdist hands out the modules with the most tests first, which left the first hour (one
# test, four minutes) for the end while the other worker had nothing left to do.
# test_experiments builds `tiny_dag` while the smoke module, which does not need it, runs on the
# other worker.
HEAVY_MODULES = (
    "tests/integration/test_experiments.py",
    "tests/integration/test_pipeline_smoke.py",
    "tests/integration/test_first_hour.py",
    "tests/integration/test_tracking_server.py",
)


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: none without it (`-p no:xdist`)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist=loadfile` (pyproject.toml) with `HEAVY_MODULES` first."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class HeavyModulesFirst(LoadFileScheduling):
        def _assign_work_unit(self, node: Any) -> None:
            for module in reversed(HEAVY_MODULES):
                if module in self.workqueue:
                    self.workqueue.move_to_end(module, last=False)
            super()._assign_work_unit(node)

    return HeavyModulesFirst(config, log)


@pytest.fixture
def seeded() -> None:
    """Initialisers draw from Keras' global generator: unseeded, a tiny ReLU head can start dead
    (constant outputs) and make a test pass or fail by chance."""
    seed_everything(0)


@contextlib.contextmanager
def _server_home() -> Iterator[ServerConfig]:
    """A tracking server's config in a throwaway home on free ports, nothing started; whatever
    runs there is stopped and the home deleted after. Skipped where PostgreSQL is not
    installed (`.ci/run` installs it)."""
    try:
        tracking_server.postgres_bin("initdb")
    except TrackingServerError as error:
        pytest.skip(str(error))
    # Under /tmp itself: as root, PostgreSQL runs as the postgres user, who cannot enter
    # pytest's per-user temp folder.
    home = Path(tempfile.mkdtemp(prefix="utkface-tracking-", dir="/tmp"))
    config = ServerConfig(home, port=free_port(), db_port=free_port())
    try:
        yield config
    finally:
        tracking_server.stop(config)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def tracking_server_config() -> Iterator[ServerConfig]:
    """A team tracking server (`utkface tracking-server start`: PostgreSQL on loopback, MLflow
    with proxied artifacts), running for the whole session."""
    with _server_home() as config:
        tracking_server.start(config)
        yield config


@pytest.fixture
def unstarted_server_config() -> Iterator[ServerConfig]:
    """A fresh home where nothing has started yet, for tests of a first `start`."""
    with _server_home() as config:
        yield config


@pytest.fixture(scope="session")
def tiny_dag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pipeline on `tiny.dag_params()`, reproduced and committed
    (`dvc_project.reproduced_project`, its runs in its own mlflow.db) once per session: under
    pytest-xdist the first worker that asks builds it in the run's shared temp folder behind a
    file lock, and the others wait for it there. Read only: a test runs `dvc` in a copy
    (`dvc_project.copied_project`), never in it."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return reproduced_project(tmp_path_factory.mktemp("tiny-dag"), clean_env(), dag_params())
    shared = tmp_path_factory.getbasetemp().parent  # this run's, shared by its workers
    root, done = shared / "tiny-dag", shared / "tiny-dag.done"
    with FileLock(shared / "tiny-dag.lock"):
        if not done.exists():
            shutil.rmtree(root, ignore_errors=True)  # left half-made by a worker that failed
            root.mkdir()
            reproduced_project(root, clean_env(), dag_params())
            done.touch()
    return root
