"""`utkface.inference.forked_server`: workers forked from one process, kept at their count,
stopped with their supervisor, and no fork from a process whose model load started threads."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from tiny import free_port

from utkface.inference import forked_server

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="workers fork on Linux")

# a supervisor of 2 workers; each writes its pid in FOLDER, then fails (MODE "fail") or waits
SUPERVISOR = """
import os, sys, time
from pathlib import Path
from utkface.inference.forked_server import ForkedWorkers

folder, mode, starting_s = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])

def work() -> int:
    (folder / str(os.getpid())).touch()
    if mode == "fail":
        return 3
    while True:
        time.sleep(1)

sys.exit(ForkedWorkers(work, 2, starting_s).run())
"""


def start(folder: Path, mode: str, starting_s: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, str(folder), mode, str(starting_s)],
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition: Callable[[], bool], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def workers(folder: Path) -> list[int]:
    """The workers started so far, in no particular order."""
    return [int(path.name) for path in folder.iterdir()]


def test_a_worker_that_dies_is_replaced_and_sigterm_stops_them_all(tmp_path: Path) -> None:
    supervisor = start(tmp_path, "wait", starting_s=0.2)
    try:
        wait_for(lambda: len(workers(tmp_path)) == 2)
        first, second = workers(tmp_path)
        time.sleep(0.3)  # past starting
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: len(workers(tmp_path)) == 3)
        (third,) = set(workers(tmp_path)) - {first, second}
        assert psutil.Process(third).ppid() == supervisor.pid
        assert [alive(pid) for pid in (first, second, third)] == [False, True, True]

        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=30) == 0
        assert not alive(second) and not alive(third)
        assert f"worker {first} exited (-9): starting another" in supervisor.stderr.read()
    finally:
        supervisor.kill()


def test_a_worker_that_fails_as_it_starts_stops_the_server(tmp_path: Path) -> None:
    supervisor = start(tmp_path, "fail", starting_s=60)
    try:
        assert supervisor.wait(timeout=30) == 1
        started = workers(tmp_path)  # the second may be stopped before it gets this far
        assert 1 <= len(started) <= 2 and not any(alive(pid) for pid in started)  # none again
        assert "exited (3) as it started: stopping the server" in supervisor.stderr.read()
    finally:
        supervisor.kill()


def test_the_workers_stop_when_their_supervisor_is_killed(tmp_path: Path) -> None:
    supervisor = start(tmp_path, "wait", starting_s=0.2)
    try:
        wait_for(lambda: len(workers(tmp_path)) == 2)
        supervisor.kill()
        supervisor.wait(timeout=30)
        wait_for(lambda: not any(alive(pid) for pid in workers(tmp_path)))
    finally:
        supervisor.kill()


def test_nothing_is_forked_when_loading_the_model_starts_a_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As TensorFlow starts its thread pools: a fork would copy none of them."""
    stop = threading.Event()

    def load_model(uri: str, model_config: dict) -> object:
        assert model_config == {"threads": 1}
        threading.Thread(target=stop.wait, daemon=True).start()
        return object()

    monkeypatch.setattr(importlib.import_module("mlflow.pyfunc"), "load_model", load_model)
    port = free_port()
    children = len(psutil.Process().children())
    try:
        assert forked_server.serve("models:/m", 1000, "127.0.0.1", port, 2) is None
    finally:
        stop.set()
    assert len(psutil.Process().children()) == children
    with forked_server.listen_on("127.0.0.1", port):  # the port was not kept
        pass


def test_a_port_in_use_fails_before_any_model_loads() -> None:
    port = free_port()
    with forked_server.listen_on("127.0.0.1", port) as taken:
        taken.listen()
        with pytest.raises(OSError, match="in use"):  # not MLflow's "model not found"
            forked_server.serve("models:/never-registered/1", 1000, "127.0.0.1", port, 2)
