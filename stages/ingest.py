"""Stage `ingest`: raw UTKFace files -> one decoded, resized image cache plus a labels table.

Every file is either ingested or listed in `metrics/ingest_rejections.csv` with its reason:
malformed names, names that are not UTF-8, out-of-range labels, empty/corrupt/non-image files,
duplicates, unsafe archive members and decompression bombs are reported, never silently
dropped, and never crash the stage.
Outputs are written to temporary names and renamed at the end, so a failed run leaves no
partial cache behind that could pass for a complete one.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from utkface import paths
from utkface.data.imaging import ImageError, decode_image, prepare_image
from utkface.data.labels import LABEL_COLUMNS, LabelError, parse_file_name
from utkface.data.sources import (
    READ_ERRORS,
    RawFile,
    SourceError,
    describe,
    is_image_name,
    iter_source,
)
from utkface.params import load_params, run_main


@dataclass
class IngestResult:
    images: np.ndarray
    labels: pd.DataFrame
    rejections: pd.DataFrame
    converted: Counter[str] = field(default_factory=Counter)
    files_seen: int = 0


def _category(reason: str) -> str:
    for prefix, category in (
        ("malformed name", "malformed_name"),
        ("file name is not valid UTF-8", "name_not_utf8"),
        ("age ", "label_out_of_range"),
        ("gender ", "label_out_of_range"),
        ("race ", "label_out_of_range"),
        ("duplicate", "duplicate"),
        ("unsafe archive member", "unsafe_path"),
        ("unsafe path", "unsafe_path"),
        ("file too large", "too_large"),
        ("decompression bomb", "decompression_bomb"),
        ("empty file", "empty"),
        ("not an image", "not_an_image"),
        ("corrupt", "corrupt"),
    ):
        if reason.startswith(prefix):
            return category
    return "other"


def ingest(
    files: Iterable[RawFile], image_size: int, max_pixels: int, age_max: int, progress: bool = True
) -> IngestResult:
    """Decode, check and resize every file; return the cache, labels and rejections. Ages
    outside [1, `age_max`] (`validate.age_max`) are rejected as out of range."""
    arrays: list[np.ndarray] = []
    rows: list[dict[str, object]] = []
    rejected: list[tuple[str, str]] = []
    first_by_id: dict[str, str] = {}
    first_by_digest: dict[str, str] = {}
    converted: Counter[str] = Counter()
    seen = 0
    for raw in tqdm(files, desc="ingest", unit="file", disable=not progress, mininterval=1.0):
        seen += 1
        if raw.refusal:
            rejected.append((raw.name, raw.refusal))
            continue
        if not is_image_name(raw.name):
            rejected.append((raw.name, "not an image file name (.jpg, .jpeg or .png expected)"))
            continue
        try:
            labels = parse_file_name(raw.name, age_max)
        except LabelError as error:
            rejected.append((raw.name, str(error)))
            continue
        if labels.image_id in first_by_id:
            rejected.append(
                (raw.name, f"duplicate image id: same name as {first_by_id[labels.image_id]}")
            )
            continue
        try:
            data = raw.read()
        except READ_ERRORS as error:  # e.g. an archive member with a bad CRC
            rejected.append((raw.name, f"corrupt or unreadable file: {error}"))
            continue
        digest = hashlib.sha1(data).hexdigest()
        if data and digest in first_by_digest:
            rejected.append((raw.name, f"duplicate image: same bytes as {first_by_digest[digest]}"))
            continue
        try:
            image = decode_image(data, max_pixels, target_size=image_size)
        except ImageError as error:
            rejected.append((raw.name, str(error)))
            continue
        if image.format != "JPEG" or image.mode != "RGB":
            converted[f"{image.format} {image.mode}"] += 1
        first_by_id[labels.image_id] = raw.name
        first_by_digest[digest] = raw.name
        rows.append(
            {
                "image_id": labels.image_id,
                "file": raw.name,
                "age": labels.age,
                "gender": labels.gender,
                "race": labels.race,
                "timestamp": labels.timestamp,
                "cache_index": len(arrays),
            }
        )
        arrays.append(prepare_image(image, image_size))
    images = (
        np.stack(arrays) if arrays else np.zeros((0, image_size, image_size, 3), dtype=np.uint8)
    )
    table = pd.DataFrame(rows, columns=list(LABEL_COLUMNS)).astype(
        {"age": "int64", "gender": "int64", "race": "int64", "cache_index": "int64"}
    )
    rejections = pd.DataFrame(rejected, columns=["file", "reason"])
    rejections["category"] = [_category(r) for r in rejections["reason"]]
    return IngestResult(images, table, rejections, converted, seen)


def summarize(result: IngestResult, source: str, image_size: int) -> dict:
    """The figures written to metrics/ingest.json: what was ingested, never how long it took
    (a DVC-tracked metric changes only when the result does)."""
    labels = result.labels
    return {
        "source": source,
        "source_kind": describe(source),
        "image_size": image_size,
        "files_seen": result.files_seen,
        "images": len(labels),
        "rejected": len(result.rejections),
        "rejected_by_category": dict(Counter(result.rejections["category"]).most_common()),
        "converted_to_rgb": dict(result.converted),
        "age_min": int(labels["age"].min()) if len(labels) else None,
        "age_max": int(labels["age"].max()) if len(labels) else None,
        "gender_counts": {str(k): int(v) for k, v in labels["gender"].value_counts().items()},
        "race_counts": {str(k): int(v) for k, v in labels["race"].value_counts().items()},
        "cache_mib": round(result.images.nbytes / 2**20, 2),
    }


def _write_atomically(result: IngestResult, summary: dict) -> None:
    for path in (paths.IMAGES, paths.LABELS, paths.INGEST_METRICS, paths.INGEST_REJECTIONS):
        path.parent.mkdir(parents=True, exist_ok=True)
    staged = {
        paths.IMAGES: paths.IMAGES.with_suffix(".partial.npy"),
        paths.LABELS: paths.LABELS.with_suffix(".partial.parquet"),
        paths.INGEST_REJECTIONS: paths.INGEST_REJECTIONS.with_suffix(".partial.csv"),
        paths.INGEST_METRICS: paths.INGEST_METRICS.with_suffix(".partial.json"),
    }
    np.save(staged[paths.IMAGES], result.images)
    result.labels.to_parquet(staged[paths.LABELS], index=False)
    result.rejections.to_csv(staged[paths.INGEST_REJECTIONS], index=False)
    staged[paths.INGEST_METRICS].write_text(json.dumps(summary, indent=2) + "\n")
    for final, temp in staged.items():
        Path(temp).replace(final)


def main() -> None:
    params = load_params()
    cfg = params.ingest
    started = time.perf_counter()
    try:
        files = iter_source(cfg.source, cfg.max_file_bytes, cfg.synthetic_count, params.seed)
        result = ingest(
            files,
            cfg.image_size,
            cfg.max_image_pixels,
            params.validate_.age_max,
            progress=sys.stderr.isatty(),
        )
    except SourceError as error:
        sys.exit(f"ingest: {error}")
    if result.labels.empty:
        sys.exit(f"ingest: no usable image in {cfg.source} ({result.files_seen} files seen)")
    summary = summarize(result, cfg.source, cfg.image_size)
    _write_atomically(result, summary)
    print(
        f"ingest: {summary['images']} images from {summary['source_kind']} "
        f"({summary['files_seen']} files, {summary['rejected']} rejected: "
        f"{summary['rejected_by_category']}) in {time.perf_counter() - started:.0f}s -> "
        f"{paths.IMAGES} {result.images.shape}"
    )
    if summary["rejected"]:
        print(f"ingest: rejected files and reasons are listed in {paths.INGEST_REJECTIONS}")


if __name__ == "__main__":
    run_main("ingest", main)
