"""Stage `validate`: right after ingest, Great Expectations checks what ingest could not.

Ingest refuses bad names, out-of-range labels, unreadable images and byte-identical copies;
this stage checks the rest (`utkface.checks.expectations`): rows per gender and per age bucket,
the share of rejected files, images with the same content under other bytes, and the labels'
drift from the committed run's (`git show HEAD:metrics/validation.json`, a warning). It writes
`metrics/validation.json` and a GX Data Docs site (`metrics/validation_docs/index.html`) also
when validation fails, then exits non-zero if a critical expectation failed. Every later stage
depends on `data/validated`, which it writes only on success and whose content never changes, so
`dvc repro` stops before any face features are extracted, and a new report (a threshold moved,
a warning more) re-runs nothing after it. Failed expectations named in `validate.warn_only` are
printed as warnings and do not stop it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from utkface import paths
from utkface.checks.expectations import (
    EphemeralDataContext,
    Outcome,
    build_suites,
    class_counts,
    content,
    data_checks,
    label_distribution,
    label_drift,
    new_context,
    rejected_share,
    run_suites,
)
from utkface.checks.report import failures, summarize
from utkface.outputs import write_json
from utkface.params import Params, load_params, run_main

VALIDATED = "the ingested data passed validation: later stages may run\n"


def validate(
    labels: pd.DataFrame,
    images: np.ndarray,
    ingest_summary: Mapping[str, Any],
    reference: Mapping[str, Any] | None,
    params: Params,
    context: EphemeralDataContext,
) -> list[Outcome]:
    """Every expectation on ingest's outputs; `reference` is the committed run's label
    distribution (None: no drift is measured)."""
    edges = params.age_buckets
    cfg = params.validate_
    tables = {
        "labels": labels,
        "ingest": rejected_share(ingest_summary),
        "content": content(labels, images),
        "class_counts": class_counts(labels, edges, cfg.min_per_gender, cfg.min_per_age_bucket),
        "label_drift": label_drift(label_distribution(labels, edges), reference),
    }
    return run_suites(context, build_suites(data_checks(params), cfg.warn_only), tables)


def committed_distribution() -> dict[str, Any] | None:
    """The label distribution of the committed run, from git's HEAD; None outside git or
    before any run committed one."""
    done = subprocess.run(
        ["git", "show", f"HEAD:{paths.VALIDATION.as_posix()}"], capture_output=True, text=True
    )
    if done.returncode != 0:
        return None
    return json.loads(done.stdout).get("label_distribution")


def main() -> None:
    params = load_params()
    started = time.perf_counter()
    labels = pd.read_parquet(paths.LABELS)
    images = np.load(paths.IMAGES, mmap_mode="r")
    ingest_summary = json.loads(paths.INGEST_METRICS.read_text())
    reference = committed_distribution()
    shutil.rmtree(paths.VALIDATION_DOCS, ignore_errors=True)  # docs of earlier runs would linger
    context = new_context(paths.VALIDATION_DOCS)
    try:
        outcomes = validate(labels, images, ingest_summary, reference, params, context)
    except ValueError as error:  # an unknown name in validate.warn_only
        sys.exit(f"validate: {error}")
    context.build_data_docs()
    # the same report with or without a reference: a second run after the commit changes nothing
    report = summarize(outcomes) | {
        "label_distribution": label_distribution(labels, params.age_buckets)
    }
    write_json(paths.VALIDATION, report)
    warnings, critical = failures("validate", outcomes)
    for line in warnings:
        print(line)
    print(
        f"validate: {report['evaluated']} expectations on {len(labels)} rows, "
        f"{report['failed_critical']} critical failure(s), {report['warnings']} warning(s) "
        f"in {time.perf_counter() - started:.1f}s (labels compared with "
        f"{'the committed run' if reference else 'no committed run'}) -> {paths.VALIDATION}, "
        f"{paths.VALIDATION_DOCS / 'index.html'}"
    )
    if critical:
        sys.exit(critical)
    paths.VALIDATED.write_text(VALIDATED)


if __name__ == "__main__":
    run_main("validate", main)
