"""Quiet, honest consoles: library chatter switched off at its source, real warnings kept.

`quiet_libraries` runs when `utkface` (or `stages`) is first imported, before any module
imports TensorFlow, Keras, MLflow or Great Expectations, because they read their logging
settings from the environment at import time.

TensorFlow 2.21's C++ lines are another matter: absl writes them to the process's stderr before
TensorFlow reads `TF_CPP_MIN_LOG_LEVEL` ("All log messages before absl::InitializeLog()...",
oneDNN's banner, `E0000 ... use_unbounded_threadpool` for a tf.data attribute its own runtime
does not know), and no setting reaches absl's pre-initialisation logging from Python.
`filter_native_stderr` drops exactly those lines at the file descriptor, for a stage's process.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import threading

ENVIRONMENT = {
    "KERAS_BACKEND": "tensorflow",
    "TF_CPP_MIN_LOG_LEVEL": "2",  # TensorFlow's C++ info lines: the oneDNN and CPU banners
    "GX_ANALYTICS_ENABLED": "false",  # Great Expectations sends no usage statistics
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # a progress bar per tiny download
    "MLFLOW_DISABLE_TELEMETRY": "true",  # MLflow 3 sends usage events unless told not to
}
# MLflow's info lines that say nothing to a user of this project; its warnings still show.
QUIET_LOGGERS = (
    "mlflow.store.db.utils",  # "Creating initial MLflow database tables..."
    "mlflow.tracking._model_registry.fluent",  # "Registered model ... already exists"
    "mlflow.pyfunc",  # "Validating input example against model signature"
)


def quiet_libraries() -> None:
    """Set the libraries' logging environment (the user's own settings win) and raise the
    chattiest loggers to warnings."""
    for name, value in ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("great_expectations").setLevel(logging.ERROR)


# TensorFlow's C++ start-up lines that say nothing to a user (see the module docstring)
NATIVE_NOISE = re.compile(
    rb"WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|[IWE]0000 [\d:. ]+\d+ (port|cpu_feature_guard|node_def_util)\.cc:\d+\]"
    rb"|To enable the following instructions: .* rebuild TensorFlow"
)


def filter_native_stderr() -> None:
    """Route this process's stderr (file descriptor 2, which native code writes to) through a
    thread that forwards every line but `NATIVE_NOISE` to the real stderr; at exit, the pipe is
    closed and drained, so no line is lost."""
    sys.stderr.flush()
    real = os.dup(2)
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)

    def forward() -> None:
        with os.fdopen(read, "rb") as source:
            for line in source:
                if not NATIVE_NOISE.match(line):
                    os.write(real, line)

    thread = threading.Thread(target=forward, name="stderr-filter", daemon=True)
    thread.start()

    def drain() -> None:
        sys.stderr.flush()
        os.dup2(real, 2)  # closes the pipe's last write end: the thread reads to its end
        thread.join(timeout=10)

    atexit.register(drain)
