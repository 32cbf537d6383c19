"""Quiet, honest consoles: library chatter switched off at its source, real warnings kept.

`quiet_libraries` runs when `utkface` (or `stages`) is first imported, before any module
imports TensorFlow, Keras, MLflow or Great Expectations, because they read their logging
settings from the environment at import time.
"""

from __future__ import annotations

import logging
import os

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
