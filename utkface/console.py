"""Quiet, honest consoles: library chatter switched off at its source, real warnings kept.

`quiet_libraries` runs when `utkface` (or `stages`) is first imported, before any module
imports TensorFlow, Keras, MLflow or Great Expectations, because they read their logging
settings from the environment at import time.

A stage that loads TensorFlow 2.21 still writes a few C++ lines to stderr, which
docs/troubleshooting.md explains: absl's "All log messages before absl::InitializeLog()..." and
oneDNN's banner, logged while TensorFlow's libraries load, before anything in the process can
set a log level, and `node_def_util.cc ... use_unbounded_threadpool`, an error-level line that
only hiding every error would hide. They stay: filtering them would route stderr through a pipe
and a thread, which lose the last lines of a process that dies natively (a segfault's traceback).
"""

from __future__ import annotations

import logging
import os

ENVIRONMENT = {
    "KERAS_BACKEND": "tensorflow",
    "TF_CPP_MIN_LOG_LEVEL": "2",  # TensorFlow's C++ info lines once loaded: the CPU banner
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
