"""Which raw files become the image cache and labels table, and why each other one does not.

Every file is either admitted or rejected with a reason and a `Category`: malformed names,
names that are not UTF-8, out-of-range labels, empty/corrupt/non-image files, duplicates,
unsafe archive members and decompression bombs are reported, never silently dropped, and
never stop the run.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from utkface.data.imaging import ImageError, decode_image, prepare_image
from utkface.data.labels import (
    IMAGE_SUFFIXES,
    LABEL_COLUMNS,
    FaceLabels,
    LabelOutOfRange,
    MalformedName,
    parse_file_name,
)
from utkface.data.rejections import Category, Rejection
from utkface.data.sources import READ_ERRORS, RawFile, describe, is_image_name

_SUFFIXES = f"{', '.join(IMAGE_SUFFIXES[:-1])} or {IMAGE_SUFFIXES[-1]}"


@dataclass
class Admission:
    """The admitted images (each row of `labels` points at its image by `cache_index`), the
    rejected files (columns file, reason, category) and the formats converted to RGB."""

    images: np.ndarray
    labels: pd.DataFrame
    rejections: pd.DataFrame
    converted: Counter[str] = field(default_factory=Counter)
    files_seen: int = 0


class _Rejected(Exception):
    """A file is not admitted: `args` are the reason and its `Category`."""

    def __init__(self, reason: str, category: Category) -> None:
        super().__init__(reason, category)


def admit(
    files: Iterable[RawFile], image_size: int, max_pixels: int, age_max: int, progress: bool = True
) -> Admission:
    """Decode, check and resize every file; return the cache, labels and rejections. Ages
    outside [1, `age_max`] (`validate.age_max`) are rejected as out of range. The first file
    admitted with an image id, or with given bytes, is the original later copies duplicate."""
    arrays: list[np.ndarray] = []
    rows: list[dict[str, object]] = []
    rejected: list[Rejection] = []
    first_by_id: dict[str, str] = {}
    first_by_digest: dict[str, str] = {}
    converted: Counter[str] = Counter()
    seen = 0
    for raw in tqdm(files, desc="ingest", unit="file", disable=not progress, mininterval=1.0):
        seen += 1
        try:
            labels = _labels(raw, age_max)
            if labels.image_id in first_by_id:
                original = first_by_id[labels.image_id]
                raise _Rejected(f"duplicate image id: same name as {original}", Category.DUPLICATE)
            data = _read(raw)
            digest = hashlib.sha1(data).hexdigest()
            if data and digest in first_by_digest:
                original = first_by_digest[digest]
                raise _Rejected(f"duplicate image: same bytes as {original}", Category.DUPLICATE)
            image = _decode(data, max_pixels, image_size)
        except _Rejected as rejection:
            rejected.append(Rejection(raw.name, *rejection.args))
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
    rejections = pd.DataFrame(
        [(r.file, r.reason, r.category.value) for r in rejected], columns=list(Rejection._fields)
    )
    return Admission(images, table, rejections, converted, seen)


def _labels(raw: RawFile, age_max: int) -> FaceLabels:
    """The labels in the file's name; the file is read only if its name carries them."""
    if raw.refusal:
        raise _Rejected(raw.refusal.reason, raw.refusal.category)
    if not is_image_name(raw.name):
        raise _Rejected(f"not an image file name ({_SUFFIXES} expected)", Category.NOT_AN_IMAGE)
    try:
        return parse_file_name(raw.name, age_max)
    except MalformedName as error:
        raise _Rejected(str(error), Category.MALFORMED_NAME) from None
    except LabelOutOfRange as error:
        raise _Rejected(str(error), Category.LABEL_OUT_OF_RANGE) from None


def _read(raw: RawFile) -> bytes:
    try:
        return raw.read()
    except READ_ERRORS as error:  # e.g. an archive member with a bad CRC
        raise _Rejected(f"corrupt or unreadable file: {error}", Category.CORRUPT) from None


def _decode(data: bytes, max_pixels: int, image_size: int) -> Image.Image:
    try:
        return decode_image(data, max_pixels, target_size=image_size)
    except ImageError as error:
        raise _Rejected(str(error), error.category) from None


def summarize(admission: Admission, source: str, image_size: int) -> dict:
    """The figures written to metrics/ingest.json: what was admitted, never how long it took
    (a DVC-tracked metric changes only when the result does)."""
    labels = admission.labels
    return {
        "source": source,
        "source_kind": describe(source),
        "image_size": image_size,
        "files_seen": admission.files_seen,
        "images": len(labels),
        "rejected": len(admission.rejections),
        "rejected_by_category": dict(Counter(admission.rejections["category"]).most_common()),
        "converted_to_rgb": dict(admission.converted),
        "age_min": int(labels["age"].min()) if len(labels) else None,
        "age_max": int(labels["age"].max()) if len(labels) else None,
        "gender_counts": {str(k): int(v) for k, v in labels["gender"].value_counts().items()},
        "race_counts": {str(k): int(v) for k, v in labels["race"].value_counts().items()},
        "cache_mib": round(admission.images.nbytes / 2**20, 2),
    }
