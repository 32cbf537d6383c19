"""Stage `validate`: check the ingested labels table and image cache with Great Expectations.

Writes `metrics/validation.json` and a GX Data Docs site (`metrics/validation_docs/index.html`)
also when validation fails, so the failure can be read, then exits non-zero if a critical
expectation failed: `dvc repro` stops before anything trains on bad data. Failed expectations
named in `validate.warn_only` are printed as warnings and do not stop the pipeline.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd

from utkface import paths
from utkface.checks.expectations import (
    EphemeralDataContext,
    Outcome,
    build_suites,
    check_warn_only,
    frames,
    new_context,
    run_suites,
)
from utkface.outputs import write_json
from utkface.params import Params, load_params, run_main


def validate(
    labels: pd.DataFrame,
    image_shape: tuple[int, ...],
    params: Params,
    context: EphemeralDataContext,
) -> list[Outcome]:
    """Every expectation evaluated on the labels table and the image cache's shape."""
    return run_suites(context, build_suites(params), frames(labels, image_shape, params))


def summarize(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """The report written to metrics/validation.json."""
    failed = [o for o in outcomes if not o.success]
    critical = [o for o in failed if o.critical]
    return {
        "success": not critical,
        "evaluated": len(outcomes),
        "failed_critical": len(critical),
        "warnings": len(failed) - len(critical),
        "expectations": [
            {k: v for k, v in asdict(o).items() if v not in (None, (), {})} for o in outcomes
        ],
    }


def describe(outcome: Outcome) -> str:
    """One line on a failure: name, GX type, column(s) and table, then offending values."""
    columns = ", ".join(repr(c) for c in outcome.columns)
    where = f" on column{'s' if len(outcome.columns) > 1 else ''} {columns}" if columns else ""
    head = f"'{outcome.name}' ({outcome.expectation_type}{where} of {outcome.frame}) failed"
    if outcome.error:
        return f"{head}: could not be evaluated: {outcome.error}"
    if outcome.unexpected_count is None:
        return f"{head}: observed {outcome.observed_value!r}, expected {outcome.expected}"
    text = f"{head}: {outcome.unexpected_count} unexpected values, e.g. {list(outcome.examples)}"
    if outcome.example_rows:
        text += f" at {outcome.id_column} {list(outcome.example_rows)}"
    return text


def main() -> None:
    params = load_params()
    try:
        check_warn_only(params.validate_.warn_only)
    except ValueError as error:
        sys.exit(f"validate: {error}")
    started = time.perf_counter()
    labels = pd.read_parquet(paths.LABELS)
    image_shape = np.load(paths.IMAGES, mmap_mode="r").shape
    shutil.rmtree(paths.VALIDATION_DOCS, ignore_errors=True)  # docs of earlier runs would linger
    context = new_context(paths.VALIDATION_DOCS)
    outcomes = validate(labels, image_shape, params, context)
    context.build_data_docs()
    report = summarize(outcomes)
    paths.VALIDATION.parent.mkdir(parents=True, exist_ok=True)
    write_json(paths.VALIDATION, report)
    for outcome in outcomes:
        if not outcome.success and not outcome.critical:
            print(f"validate: warning: expectation {describe(outcome)}")
    print(
        f"validate: {report['evaluated']} expectations on {len(labels)} rows, "
        f"{report['failed_critical']} critical failure(s), {report['warnings']} warning(s) "
        f"in {time.perf_counter() - started:.1f}s -> {paths.VALIDATION}, "
        f"{paths.VALIDATION_DOCS / 'index.html'}"
    )
    critical = [o for o in outcomes if not o.success and o.critical]
    if critical:
        sys.exit("\n".join(f"validate: critical expectation {describe(o)}" for o in critical))


if __name__ == "__main__":
    run_main("validate", main)
