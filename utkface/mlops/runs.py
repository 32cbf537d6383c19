"""The life of a stage's MLflow run: named after the DVC experiment, closed as KILLED when the
stage is stopped, never left RUNNING by a process that died.

SIGINT (Ctrl-C, `dvc queue kill`) and SIGTERM (`kill`, `timeout`, a container stop) end the run
as KILLED before the process exits. SIGKILL and a crash of the machine cannot be caught, so
every run also carries its process id and host, and the next stage run that opens the same
experiment on that host marks the runs of processes that no longer exist as KILLED.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import mlflow
import psutil
from mlflow import MlflowClient
from mlflow.entities import RunStatus

PID_TAG, HOST_TAG, ENDED_BY_TAG = "pid", "host", "ended_by"
KILLED = RunStatus.to_string(RunStatus.KILLED)


class Terminated(SystemExit):
    """SIGTERM, raised in the main thread so that open runs are closed on the way out; the
    process then exits with the shell's status for SIGTERM (143), without a traceback."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


def process_tags() -> dict[str, str]:
    """Which process writes a run: what `close_orphaned_runs` checks."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


def process_alive(pid: int) -> bool:
    """Whether `pid` is a live process: a zombie (dead, not yet reaped) is not, another user's
    process is."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:  # ZombieProcess too, where the platform raises it
        return False
    except psutil.AccessDenied:  # exists, another user's
        return True


def close_orphaned_runs(experiment_id: str, closer: str) -> list[str]:
    """Mark as KILLED the RUNNING runs of `experiment_id` whose process, on this host, is gone;
    returns their ids. Runs of live processes (a parallel queue, tune workers) and of other
    hosts are left alone."""
    client = MlflowClient()
    host = socket.gethostname()
    closed = []
    for run in client.search_runs(
        [experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000
    ):
        tags = run.data.tags
        pid = tags.get(PID_TAG, "")
        if tags.get(HOST_TAG) != host or not pid.isdigit() or process_alive(int(pid)):
            continue
        client.set_tag(
            run.info.run_id,
            ENDED_BY_TAG,
            f"process {pid} ended without closing the run; marked KILLED by {closer}",
        )
        client.set_terminated(run.info.run_id, KILLED)
        closed.append(run.info.run_id)
    return closed


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into `Terminated` while the block runs (main thread only: Python delivers
    signals there; elsewhere the default stays)."""
    try:
        previous = signal.getsignal(signal.SIGTERM)

        def handler(signum: int, frame: FrameType | None) -> None:
            raise Terminated()

        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def stage_run(stage: str, experiment_id: str, **start_run: Any) -> Iterator[mlflow.ActiveRun]:
    """`mlflow.start_run(**start_run)` in `experiment_id` for `stage`, after closing that
    experiment's orphaned runs; tagged with its process, ended as KILLED on SIGINT or SIGTERM
    (FAILED on an error, FINISHED otherwise, as MLflow does). Resuming a run (`run_id=`) tags
    it with this process for as long as it is open."""
    close_orphaned_runs(experiment_id, f"the next {stage} run")
    tags = {**start_run.pop("tags", {}), **process_tags()}
    with (
        _sigterm_raises(),
        mlflow.start_run(experiment_id=experiment_id, tags=tags, **start_run) as run,
    ):
        try:
            yield run
        except (KeyboardInterrupt, Terminated):
            mlflow.end_run(KILLED)
            raise
