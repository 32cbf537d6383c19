"""`utkface.inference.processes`: files shared between the caller and forked helpers, each
chunk answered once, in the files' order, whatever happens to a helper."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import psutil
import pytest

from utkface.inference import processes
from utkface.inference.processes import SharedFiles

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="helpers fork on Linux")

FILES = [Path(f"{i:03d}.jpg") for i in range(10)]


def answered_by(chunk: Sequence[Path]) -> list[tuple[str, int]]:
    """A chunk's answers: each file with the process that answered it."""
    return [(path.name, os.getpid()) for path in chunk]


def test_the_caller_and_a_helper_share_the_chunks_and_every_file_is_answered_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # each waits with its first chunk until the other has claimed one too
    helper_claimed, caller_claimed = (multiprocessing.get_context("fork").Event() for _ in "ab")

    def helper_answer(chunk: Sequence[Path]) -> list[tuple[str, int]]:
        helper_claimed.set()
        assert caller_claimed.wait(timeout=60)
        return answered_by(chunk)

    def caller_answer(chunk: Sequence[Path]) -> list[tuple[str, int]]:
        caller_claimed.set()
        assert helper_claimed.wait(timeout=60)
        return answered_by(chunk)

    with SharedFiles(FILES, 2, 1, lambda: helper_answer) as shared:
        answers = shared.answer(caller_answer)
    assert [name for name, _ in answers] == [path.name for path in FILES]
    answering = {pid for _, pid in answers}
    assert os.getpid() in answering
    assert len(answering) == 2
    assert "stopped early" not in caplog.text


def test_a_helper_that_cannot_start_leaves_every_chunk_to_the_caller(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def cannot_load() -> processes.ChunkAnswerer[tuple[str, int]]:
        raise OSError("no model here")

    with SharedFiles(FILES, 3, 1, cannot_load) as shared:
        answers = shared.answer(answered_by)
    assert answers == answered_by(FILES)
    assert "stopped early (OSError: no model here, exit status 0)" in caplog.text


def test_chunks_a_helper_claimed_before_it_died_are_answered_by_the_caller(
    caplog: pytest.LogCaptureFixture,
) -> None:
    claimed = multiprocessing.get_context("fork").Event()

    def dies(chunk: Sequence[Path]) -> list[tuple[str, int]]:
        claimed.set()
        os._exit(1)  # killed with its chunk claimed and nothing sent

    def caller_answer(chunk: Sequence[Path]) -> list[tuple[str, int]]:
        assert claimed.wait(timeout=60)
        return answered_by(chunk)

    with SharedFiles(FILES, 2, 1, lambda: dies) as shared:
        answers = shared.answer(caller_answer)
    assert answers == answered_by(FILES)
    assert "stopped early (it died, exit status 1)" in caplog.text


def test_helpers_still_running_when_the_caller_fails_are_stopped() -> None:
    started = multiprocessing.get_context("fork").Event()

    def endless(chunk: Sequence[Path]) -> list[tuple[str, int]]:
        started.set()
        multiprocessing.get_context("fork").Event().wait(timeout=120)
        return answered_by(chunk)

    with (
        pytest.raises(RuntimeError, match="the caller's model"),
        SharedFiles(FILES, 2, 1, lambda: endless) as shared,
    ):
        assert started.wait(timeout=60)
        raise RuntimeError("the caller's model failed to load")
    ((helper, _),) = shared.helpers
    assert not helper.is_alive()
    assert helper.exitcode is not None and helper.exitcode < 0  # terminated


CALLER_KILLED = """
import os, sys, time
from pathlib import Path
from utkface.inference.processes import SharedFiles

def slow(chunk):
    time.sleep(0.2)
    return [bytes(100_000)]  # more than a pipe holds, after a few chunks

shared = SharedFiles([Path(str(i)) for i in range(1000)], 1, 1, lambda: slow)
((helper, _),) = shared.helpers
print(helper.pid, flush=True)
time.sleep(0.5)
os._exit(0)  # as if killed: no clean-up, the helper's chunks unclaimed
"""


def test_a_helper_stops_once_its_caller_is_gone() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CALLER_KILLED], capture_output=True, text=True, timeout=120
    )
    helper = int(done.stdout.split()[0])
    deadline = time.monotonic() + 30  # 1,000 chunks of 0.2 s: 200 s, had it gone on
    while time.monotonic() < deadline:
        try:
            if psutil.Process(helper).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the helper still answers for a caller that is gone")
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("jobs", "chunks", "cores", "expected"),
    [
        (None, 1, 2, 1),
        (None, 2, 2, 1),  # a helper pays off from three chunks on
        (None, 3, 2, 2),
        (None, 5, 4, 3),
        (None, 1_000, 2, 2),
        (None, 1_000, 1, 1),
        (3, 10, 2, 3),
        (3, 2, 2, 2),  # no process without a chunk
    ],
)
def test_process_count(
    jobs: int | None, chunks: int, cores: int, expected: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(processes, "usable_cores", lambda: cores)
    assert processes.process_count(jobs, chunks) == expected


def test_helpers_are_forked_on_linux_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processes.sys, "platform", "darwin")
    assert processes.process_count(None, 10_000) == 1
    assert processes.process_count(4, 10_000) == 1


def test_threads_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processes, "usable_cores", lambda: 4)
    assert [processes.threads_per_process(n) for n in (1, 2, 3, 4, 8)] == [0, 2, 1, 1, 1]
