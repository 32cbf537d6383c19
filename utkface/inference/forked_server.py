"""`utkface serve` on every core: the model loaded once, then one worker process per core
forked from it, each running the scoring app (`server.app_for`) on the one listening socket.

One worker answers with about 1.15 of 2 cores busy: most of an answer's time is Python holding
the interpreter lock (finding the faces, the HTTP layer). Workers forked after the model loads
share its weights and the imported modules' pages until they write them: two of them on 2
cores answered about 1.5 times the requests at 8 clients for a third more memory (PSS 498-513
against 375 MB; 470-478 since pandas runs without Arrow here: `arrowless`), where two workers
that each load their own model (uvicorn's `--workers`, which spawns them) took 1.8 times the
memory (docs/benchmarks.md, issue 32).

A fork copies no thread, so the model is loaded with one ONNX Runtime thread a graph, which
starts none. A model whose loading starts threads (the scratch family's TensorFlow) cannot be
forked safely: `serve` then returns None before forking, and the caller starts workers that
load their own. The supervisor (the process that loaded the model) replaces a worker that
dies, stops the workers on SIGTERM or SIGINT, and a worker stops when the supervisor dies.
Linux only (`/proc`, `prctl`).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # linux/prctl.h
STARTING_S = 10.0  # a worker that exits sooner failed to start: the server stops, not loops
STOPPING_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def running_threads() -> int:
    """The threads of this process, those of native libraries included (Linux)."""
    return len(os.listdir("/proc/self/task"))


def _stop_with_parent(parent: int) -> None:
    """This (forked) process gets SIGTERM when its parent dies, and exits now if it already
    has."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os._exit(0)


class ForkedWorkers:
    """`count` processes forked from this one, each running `work` (its exit code is the
    worker's), kept at that count until SIGTERM or SIGINT; a worker that exits within
    `starting_s` of its fork failed to start."""

    def __init__(self, work: Callable[[], int], count: int, starting_s: float = STARTING_S) -> None:
        self.work, self.count, self.starting_s = work, count, starting_s
        self.started: dict[int, float] = {}  # pid -> time.monotonic() at its fork
        self.stopping = False

    def _fork(self) -> None:
        # SIGTERM and SIGINT wait until the worker has its own handlers and the supervisor
        # knows the worker's pid, so that the supervisor's handler stops every worker
        parent = os.getpid()
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOPPING_SIGNALS)
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the supervisor's code
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.default_int_handler)
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                _stop_with_parent(parent)
                code = self.work()
            except SystemExit as exit_:
                code = 0 if exit_.code is None else exit_.code if isinstance(exit_.code, int) else 1
            except BaseException:
                logger.exception("worker %d failed", os.getpid())
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        self.started[pid] = time.monotonic()
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def _stop(self, *_: Any) -> None:
        self.stopping = True
        for pid in self.started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def run(self) -> int:
        """0 once stopped by a signal; 1 when a worker failed to start (the others stopped)."""
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        for _ in range(self.count):
            self._fork()
        failed = False
        while self.started:
            pid, status = os.wait()
            forked = self.started.pop(pid, None)
            if forked is None or self.stopping:
                continue
            code = os.waitstatus_to_exitcode(status)
            if time.monotonic() - forked < self.starting_s:
                logger.error("worker %d exited (%d) as it started: stopping the server", pid, code)
                failed = True
                self._stop()
            else:
                logger.warning("worker %d exited (%d): starting another", pid, code)
                self._fork()
        return 1 if failed else 0


def listen_on(host: str, port: int) -> socket.socket:
    """A TCP socket bound to `host`:`port`, which the workers inherit. Its protocol is named,
    as uvicorn names it: asyncio sets TCP_NODELAY only on such sockets (without it, one client's
    answers took 56-60 ms instead of 14: they waited for its delayed acknowledgement)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listening = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind((host, port))
    except OSError:
        listening.close()
        raise
    listening.set_inheritable(True)
    return listening


def serve(uri: str, limit: int, host: str, port: int, workers: int) -> int | None:
    """Serve the model at `uri` in `workers` processes forked after loading it; the server's
    exit code once stopped, or None (nothing started) when loading the model started threads.
    OSError when `host`:`port` cannot be bound. Linux only."""
    import uvicorn
    from mlflow.pyfunc import load_model

    from utkface.inference.answering import THREADS  # the served model's modules: only here
    from utkface.inference.server import app_for

    listening = listen_on(host, port)  # first: a port in use fails before the model loads
    before = running_threads()
    model = load_model(uri, model_config={THREADS: 1})
    if running_threads() > before:
        listening.close()
        return None

    def work() -> int:
        # each worker builds its own app: the batching thread must start after the fork
        app = app_for(model, limit)
        uvicorn.Server(uvicorn.Config(app, host=host, port=port)).run(sockets=[listening])
        return 0

    gc.collect()
    gc.freeze()  # the collector then leaves the loaded objects' pages shared
    try:
        return ForkedWorkers(work, workers).run()
    finally:
        listening.close()
