"""Answering without Apache Arrow: pandas in a process that kept pyarrow out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from utkface.inference.arrowless import keep_arrow_out

FRESH = """
from utkface.inference.arrowless import keep_arrow_out
print(keep_arrow_out())
import pandas as pd
frame = pd.DataFrame({"gender": ["female", "male"]})
print(getattr(frame["gender"].dtype, "storage", "object"), frame["gender"].tolist())
try:
    import pyarrow
except ImportError:
    print("no pyarrow")
"""


def test_a_fresh_process_runs_pandas_on_python_strings() -> None:
    done = subprocess.run(
        [sys.executable, "-c", FRESH], capture_output=True, text=True, timeout=120, check=True
    )
    kept, strings, arrow = done.stdout.splitlines()
    assert (kept, arrow) == ("True", "no pyarrow")
    storage, _, values = strings.partition(" ")
    assert storage in ("python", "object")  # pandas 3's strings, or pandas 2's objects
    assert values == "['female', 'male']"


def test_a_process_that_imported_pandas_keeps_its_arrow(tmp_path: Path) -> None:
    import pandas as pd

    assert not keep_arrow_out()
    frame = pd.DataFrame({"gender": ["female", "male"]})
    frame.to_parquet(tmp_path / "labels.parquet")  # the pipeline's Parquet still works
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "labels.parquet"), frame)
