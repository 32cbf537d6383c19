"""Quiet, honest consoles: library noise switched off at its source, real warnings kept.

`quiet_libraries` runs when `utkface` (or `stages`) is first imported, before any module
imports TensorFlow, Keras or Great Expectations, because their logging is configured from the
environment at import time.
"""

from __future__ import annotations

import logging
import os
import warnings

ENVIRONMENT = {
    "KERAS_BACKEND": "tensorflow",
    "TF_CPP_MIN_LOG_LEVEL": "2",  # TensorFlow's C++ info lines: the oneDNN and CPU banners
    "GX_ANALYTICS_ENABLED": "false",  # Great Expectations sends no usage statistics
}
# Known-harmless messages, each matched exactly: what they warn about cannot happen here.
HARMLESS_WARNINGS = (
    # Keras Tuner passes its trial's default `shuffle=True`; our tf.data pipeline shuffles
    (UserWarning, r"`shuffle=True` was passed, but will be ignored"),
)


def quiet_libraries() -> None:
    """Set the libraries' logging environment (the user's own settings win) and filter the
    known-harmless warnings."""
    for name, value in ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    for category, message in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    logging.getLogger("great_expectations").setLevel(logging.ERROR)
