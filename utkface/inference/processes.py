"""Answering many files on every core: `utkface predict` forks helper processes that share
the files with it, chunk by chunk.

One process answers with about 1.35 of 2 cores busy: the networks run on ONNX Runtime's
threads, but finding the faces (decoding, dlib's landmark runs, cutting the chips) holds the
interpreter lock. Two processes with one ONNX Runtime thread each took 11-28 % less time a
face on 500 real crops than one with two (docs/benchmarks.md, issue 32).

The helpers are forked before any model is loaded, so that no ONNX Runtime thread pool is
copied, and each loads its own model (in parallel with the caller's load, on another core).
Every process claims the next chunk of files from a shared counter, so a process slowed by
large photos claims fewer. A helper sends what it answered back when no chunk is left; the
caller answers any chunk a helper claimed and did not send (a helper that failed to load the
model or died), so the answers are the same as one process's whatever happens to a helper.
Whatever happens to the caller, its helpers stop too: Ctrl-C reaches the caller alone, which
stops them, and a helper whose caller was killed claims no further chunk.
Forking is used only on Linux, where it is safe with the libraries loaded by then.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)
Answer = TypeVar("Answer")
ChunkAnswerer = Callable[[Sequence[Path]], list[Answer]]

# a helper pays off from about three chunks on (docs/benchmarks.md): one process for every
# two chunks, rounded up
CHUNKS_PER_PROCESS = 2


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1


def process_count(jobs: int | None, chunks: int) -> int:
    """How many processes answer `chunks` chunks of files: `jobs` (at least 1) when given,
    else one for every `CHUNKS_PER_PROCESS` chunks (rounded up) but no more than one per
    usable core; never more than the chunks, and always 1 where helpers are not forked (not
    Linux)."""
    if sys.platform != "linux":
        return 1
    if jobs is None:
        jobs = min(usable_cores(), -(-chunks // CHUNKS_PER_PROCESS))
    return max(1, min(jobs, chunks))


def threads_per_process(processes: int) -> int:
    """ONNX Runtime's threads a graph in each of `processes` processes: 0 (one per core) for
    a single process, else the usable cores shared out, at least one."""
    return 0 if processes == 1 else max(1, usable_cores() // processes)


class SharedFiles(Generic[Answer]):
    """`files` in chunks of `chunk`, answered by the caller (`answer`) and by `helpers` forked
    processes, each of which first builds its own chunk answerer with `prepare_helper`. Used
    as a context manager, which stops the helpers should the caller fail."""

    def __init__(
        self,
        files: Sequence[Path],
        chunk: int,
        helpers: int,
        prepare_helper: Callable[[], ChunkAnswerer[Answer]],
    ) -> None:
        context = multiprocessing.get_context("fork")
        self.caller = os.getpid()
        self.chunks = [files[start : start + chunk] for start in range(0, len(files), chunk)]
        self.next_chunk = context.Value("q", 0)
        self.helpers: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
        for _ in range(helpers):
            receiver, sender = context.Pipe(duplex=False)
            process = context.Process(
                target=self._help, args=(prepare_helper, receiver, sender), daemon=True
            )
            process.start()
            sender.close()
            self.helpers.append((process, receiver))

    def __enter__(self) -> SharedFiles[Answer]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Helpers still running (the caller failed before `answer`) are stopped."""
        for process, receiver in self.helpers:
            if process.is_alive():
                process.terminate()
            process.join()
            receiver.close()

    def _claim(self) -> int | None:
        """The next chunk's index, claimed for this process; None when none is left, or for a
        helper whose caller is gone (killed: nobody would read its answers)."""
        if os.getpid() != self.caller and os.getppid() != self.caller:
            return None
        with self.next_chunk.get_lock():
            index = self.next_chunk.value
            self.next_chunk.value += 1
        return index if index < len(self.chunks) else None

    def _answer_claimed(
        self, answer: ChunkAnswerer[Answer], answered: dict[int, list[Answer]]
    ) -> None:
        """Claims chunks and puts their answers in `answered` until none is left."""
        while (index := self._claim()) is not None:
            answered[index] = answer(self.chunks[index])

    def _help(
        self,
        prepare: Callable[[], ChunkAnswerer[Answer]],
        receiver: Connection,
        sender: Connection,
    ) -> None:
        """A helper's life: what it answered goes back to the caller, with why it stopped
        early, if it did (the caller answers the rest itself)."""
        receiver.close()  # the caller's end: held here too, a send to a caller gone would wait
        logging.disable(logging.CRITICAL)  # the caller says what is to be said, once
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the caller stops its helpers
        answered: dict[int, list[Answer]] = {}
        failure = None
        try:
            self._answer_claimed(prepare(), answered)
        except Exception as error:  # any: the caller answers the rest, and says why
            failure = f"{type(error).__name__}: {error}"
        with contextlib.suppress(BrokenPipeError):  # the caller is gone
            sender.send((answered, failure))
        sender.close()

    def answer(self, answer: ChunkAnswerer[Answer]) -> list[Answer]:
        """Every file's answers, in the files' order: the chunks this process claims, those
        the helpers send back, and any chunk a helper claimed but did not send."""
        answered: dict[int, list[Answer]] = {}
        self._answer_claimed(answer, answered)
        for process, receiver in self.helpers:
            try:
                helped, failure = receiver.recv()
            except EOFError:
                helped, failure = {}, "it died"
            process.join()
            answered |= helped
            if failure:
                logger.warning(
                    "a helper process stopped early (%s, exit status %s): this one answers "
                    "the rest",
                    failure,
                    process.exitcode,
                )
        for index, chunk in enumerate(self.chunks):
            if index not in answered:
                answered[index] = answer(chunk)
        return [item for index in range(len(self.chunks)) for item in answered[index]]
