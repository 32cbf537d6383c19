"""Stage `ingest`: raw UTKFace files -> one decoded, resized image cache plus a labels table.

Every file is either admitted or listed in `metrics/ingest_rejections.csv` with its reason and
category (`utkface.data.admission`). Outputs are written to temporary names and renamed at the
end, so a failed run leaves no partial cache behind that could pass for a complete one.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from utkface import paths
from utkface.data.admission import Admission, admit, summarize
from utkface.data.sources import SourceError, iter_source
from utkface.outputs import write_json
from utkface.params import load_params, run_main


def _write_atomically(admission: Admission, summary: dict) -> None:
    staged = {
        paths.IMAGES: paths.IMAGES.with_suffix(".partial.npy"),
        paths.LABELS: paths.LABELS.with_suffix(".partial.parquet"),
        paths.INGEST_REJECTIONS: paths.INGEST_REJECTIONS.with_suffix(".partial.csv"),
        paths.INGEST_METRICS: paths.INGEST_METRICS.with_suffix(".partial.json"),
    }
    for path in staged:
        path.parent.mkdir(parents=True, exist_ok=True)
    np.save(staged[paths.IMAGES], admission.images)
    admission.labels.to_parquet(staged[paths.LABELS], index=False)
    admission.rejections.to_csv(staged[paths.INGEST_REJECTIONS], index=False)
    write_json(staged[paths.INGEST_METRICS], summary)
    for final, temp in staged.items():
        temp.replace(final)


def main() -> None:
    params = load_params()
    cfg = params.ingest
    started = time.perf_counter()
    try:
        files = iter_source(cfg.source, cfg.max_file_bytes, cfg.synthetic_count, params.seed)
        admission = admit(
            files,
            cfg.image_size,
            cfg.max_image_pixels,
            params.validate_.age_max,
            progress=sys.stderr.isatty(),
        )
    except SourceError as error:
        sys.exit(f"ingest: {error}")
    if admission.labels.empty:
        sys.exit(f"ingest: no usable image in {cfg.source} ({admission.files_seen} files seen)")
    summary = summarize(admission, cfg.source, cfg.image_size)
    _write_atomically(admission, summary)
    print(
        f"ingest: {summary['images']} images from {summary['source_kind']} "
        f"({summary['files_seen']} files, {summary['rejected']} rejected: "
        f"{summary['rejected_by_category']}) in {time.perf_counter() - started:.0f}s -> "
        f"{paths.IMAGES} {admission.images.shape}"
    )
    if summary["rejected"]:
        print(f"ingest: rejected files and reasons are listed in {paths.INGEST_REJECTIONS}")


if __name__ == "__main__":
    run_main("ingest", main)
