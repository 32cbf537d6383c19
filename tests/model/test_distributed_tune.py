"""Distributed tuning on localhost: `python -m stages.tune` as Keras Tuner's chief and as
workers, in a tiny project that holds a copy of `stages/`, with a throwaway MLflow store (an
SQLite file, or the session's tracking server on PostgreSQL).

The chief serves the oracle and owns the `tune` parent run (tagged with the oracle address); each
worker finds that run by the tag and logs each trial it runs as a nested run under it; the chief
writes metrics/tune.json once the workers have been told to stop.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from tiny import LEARNING_RATES, free_port, write_tiny_project

from stages import tune
from utkface import paths
from utkface.mlops import tracking

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 240


def _env(uri: str, tuner_id: str, port: int) -> dict[str, str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_", "DVC_", "KERASTUNER_", "PYTHONPATH"))
    }
    return clean | {
        "MLFLOW_TRACKING_URI": uri,
        "KERASTUNER_TUNER_ID": tuner_id,
        "KERASTUNER_ORACLE_IP": "127.0.0.1",
        "KERASTUNER_ORACLE_PORT": str(port),
        "PYTHONUNBUFFERED": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


def _start(root: Path, env: dict[str, str], name: str) -> tuple[subprocess.Popen, Path]:
    log = root / f"{name}.log"
    with open(log, "w") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "stages.tune"],
            cwd=root,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    return process, log


def _wait(processes: dict[str, tuple[subprocess.Popen, Path]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    try:
        for process, _ in processes.values():
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        for process, _ in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
        pytest.fail(f"chief/worker still running after {timeout}s:\n{_logs(processes)}")


def _logs(processes: dict[str, tuple[subprocess.Popen, Path]]) -> str:
    return "\n".join(
        f"--- {name} (rc {process.returncode}) ---\n{log.read_text()[-4000:]}"
        for name, (process, log) in processes.items()
    )


def _sqlite_store(root: Path) -> str:
    uri = f"sqlite:///{root}/mlflow.db"
    # The store and experiment exist before the processes start: two processes creating a fresh
    # SQLite store (or the experiment) at once race (see test_tracking.py).
    MlflowClient(uri).create_experiment(
        tracking.TUNE_EXPERIMENT, artifact_location=(root / paths.MLFLOW_ARTIFACTS).as_uri()
    )
    return uri


@pytest.mark.parametrize(
    ("store", "workers"),
    [("sqlite", ["tuner0"]), ("postgres server", ["tuner0", "tuner1"])],
)
def test_chief_and_workers_share_one_search(
    tmp_path: Path, request: pytest.FixtureRequest, store: str, workers: list[str]
) -> None:
    """The chief and its workers log into one store: the project's SQLite file, or the team's
    tracking server on PostgreSQL (`utkface tracking-server`, shared by the test session)."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copytree(REPO / "stages", root / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    write_tiny_project(root)
    if store == "sqlite":
        uri = _sqlite_store(root)
    else:
        uri = request.getfixturevalue("tracking_server_config").tracking_uri
    client = MlflowClient(uri)
    port = free_port()
    oracle = f"127.0.0.1:{port}"

    processes = {"chief": _start(root, _env(uri, "chief", port), "chief")}
    for worker in workers:
        processes[worker] = _start(root, _env(uri, worker, port), worker)
    _wait(processes, TIMEOUT_S)
    logs = _logs(processes)
    assert all(p.returncode == 0 for p, _ in processes.values()), logs
    for worker in workers:
        assert f"worker {worker} finished its trials for the chief at {oracle}" in logs
    assert "tune: scratch: best" in processes["chief"][1].read_text(), logs

    summary = json.loads((root / paths.TUNE_METRICS).read_text())
    trials = summary["trials"]
    assert len(trials) == 2, summary
    assert {t["status"] for t in trials} == {"COMPLETED"}
    assert sorted(t["hyperparameters"]["lr"] for t in trials) == LEARNING_RATES
    assert summary["best"]["lr"] in LEARNING_RATES
    assert summary["best_" + tune.OBJECTIVE] == min(t[tune.OBJECTIVE] for t in trials)

    # A shared server holds other searches too: this one is the chief's run and its children.
    experiment = client.get_experiment_by_name(tracking.TUNE_EXPERIMENT)
    (parent,) = client.search_runs(  # the chief's run: the only one announcing this oracle
        [experiment.experiment_id], f"tags.{tune.ORACLE_TAG} = '{oracle}'"
    )
    assert "mlflow.parentRunId" not in parent.data.tags
    assert parent.info.status == "FINISHED"
    assert float(parent.data.params["best.lr"]) == summary["best"]["lr"]
    mine = f"tags.{tune.ORACLE_TAG} = '{oracle}'"
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id], mine)] == [
        parent.info.run_id
    ]
    children = client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert len(children) == 2
    assert {r.data.tags["tuner_id"] for r in children} <= set(workers)  # logged by the workers
    assert sorted(float(r.data.params["lr"]) for r in children) == LEARNING_RATES
    by_trial = {t["trial_id"]: t for t in trials}
    for child in children:
        assert child.info.status == "FINISHED"
        history = client.get_metric_history(child.info.run_id, tune.OBJECTIVE)
        assert [m.step for m in history] == [0]  # tune.epochs: 1
        row = by_trial[child.data.tags["trial_id"]]
        assert child.data.metrics["best_" + tune.OBJECTIVE] == pytest.approx(row[tune.OBJECTIVE])
