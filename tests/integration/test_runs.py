"""A stage's MLflow run is never left RUNNING: closed as KILLED on SIGINT/SIGTERM, and by the
next stage run when its process died without closing it (SIGKILL)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import psutil
import pytest
from mlflow import MlflowClient
from tiny import new_store

from utkface.mlops import runs, tracking


@pytest.fixture
def experiment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", new_store(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tracking.use_experiment("tests-runs")


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # exited and reaped
    return child.pid


def open_run(experiment: str, tags: dict[str, str]) -> str:
    """A run left RUNNING, as a process that died would leave it."""
    return MlflowClient().create_run(experiment, tags=tags).info.run_id


def status(run_id: str) -> str:
    return MlflowClient().get_run(run_id).info.status


def test_process_alive() -> None:
    assert runs.process_alive(os.getpid())
    assert not runs.process_alive(dead_pid())
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        os.waitid(os.P_PID, zombie.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
        assert not runs.process_alive(zombie.pid)
    finally:
        zombie.wait()


def test_another_users_process_is_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    assert runs.process_alive(1)  # init, root's

    def denied(process: psutil.Process) -> str:
        raise psutil.AccessDenied(process.pid)  # as macOS answers for another user's process

    monkeypatch.setattr(psutil.Process, "status", denied)
    assert runs.process_alive(os.getpid())


def test_orphans_of_dead_processes_on_this_host_are_closed(experiment: str) -> None:
    host = socket.gethostname()
    orphan = open_run(experiment, {runs.PID_TAG: str(dead_pid()), runs.HOST_TAG: host})
    live = open_run(experiment, runs.process_tags())  # e.g. a parallel queued experiment
    elsewhere = open_run(experiment, {runs.PID_TAG: "1", runs.HOST_TAG: f"not-{host}"})
    untagged = open_run(experiment, {})
    assert runs.close_orphaned_runs(experiment, "the test") == [orphan]
    assert status(orphan) == "KILLED"
    ended_by = MlflowClient().get_run(orphan).data.tags[runs.ENDED_BY_TAG]
    assert ended_by.endswith("ended without closing the run; marked KILLED by the test")
    assert [status(r) for r in (live, elsewhere, untagged)] == ["RUNNING"] * 3


def test_stage_run_closes_orphans_and_tags_its_process(experiment: str) -> None:
    orphan = open_run(
        experiment, {runs.PID_TAG: str(dead_pid()), runs.HOST_TAG: socket.gethostname()}
    )
    with runs.stage_run("train", experiment, run_name="n", tags={"stage": "train"}) as run:
        assert status(orphan) == "KILLED"
    finished = MlflowClient().get_run(run.info.run_id)
    assert finished.info.status == "FINISHED" and finished.info.run_name == "n"
    assert finished.data.tags[runs.PID_TAG] == str(os.getpid())
    assert finished.data.tags["stage"] == "train"


def test_sigterm_ends_the_run_as_killed(experiment: str) -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(runs.Terminated) as stopped, runs.stage_run("train", experiment) as run:
        os.kill(os.getpid(), signal.SIGTERM)
    assert stopped.value.code == 128 + signal.SIGTERM
    assert status(run.info.run_id) == "KILLED"
    assert mlflow.active_run() is None
    assert signal.getsignal(signal.SIGTERM) is before  # restored on the way out


def test_ctrl_c_is_killed_an_error_is_failed(experiment: str) -> None:
    with pytest.raises(KeyboardInterrupt), runs.stage_run("train", experiment) as interrupted:
        raise KeyboardInterrupt
    with pytest.raises(ValueError), runs.stage_run("train", experiment) as broken:
        raise ValueError("a bug")
    assert status(interrupted.info.run_id) == "KILLED"
    assert status(broken.info.run_id) == "FAILED"


def test_resuming_a_run_tags_it_with_the_resuming_process(experiment: str) -> None:
    with mlflow.start_run(experiment_id=experiment) as trained:
        pass
    with runs.stage_run("evaluate", experiment, run_id=trained.info.run_id) as resumed:
        assert resumed.info.run_id == trained.info.run_id
        assert status(trained.info.run_id) == "RUNNING"
    tags = MlflowClient().get_run(trained.info.run_id).data.tags
    assert tags[runs.PID_TAG] == str(os.getpid())
    assert status(trained.info.run_id) == "FINISHED"
