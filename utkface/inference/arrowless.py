"""Answering without Apache Arrow.

pandas imports pyarrow as it is imported, whenever pyarrow is installed (MLflow requires it,
and the pipeline's stages read and write Parquet with it), and then keeps every column of
strings in Arrow's memory: a request's base64 images, an answer's genders. Answering images
needs none of it. Without it (docs/benchmarks.md, issue 32): `utkface serve`'s processes
hold 470-478 MB (PSS) after the REST load test instead of 559-566, and `utkface predict` of
one photo starts in 0.68 s instead of 0.73 with a peak RSS of 262 MB instead of 330. So
`utkface predict` and `utkface serve` keep pyarrow out (`utkface.cli.main`), and so do the
workers `utkface serve` leaves to uvicorn (`server.create_app`); the pipeline, the app
(Streamlit needs Arrow) and MLflow's own `mlflow models serve` keep it.
"""

from __future__ import annotations

import sys

ARROW = "pyarrow"


def keep_arrow_out() -> bool:
    """Makes `import pyarrow` fail in this process, as if it were not installed, so that pandas
    keeps strings in Python objects; only while neither pandas nor pyarrow is imported (code
    that found pyarrow must keep finding it, as a test process's does). Whether it did."""
    if {"pandas", ARROW} & sys.modules.keys():
        return False
    sys.modules[ARROW] = None  # the import system's "not found" (the import raises ImportError)
    return True
