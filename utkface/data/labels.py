"""UTKFace labels: parsing file names, age buckets, and the one rule that turns model outputs
into labels (ages clamped to the label range, gender by threshold).

UTKFace names each image ``age_gender_race_timestamp.jpg.chip.jpg`` (aligned set: ``.jpg``):
age in years, gender 0 = male / 1 = female, race 0 White, 1 Black, 2 Asian, 3 Indian, 4 Others.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

AGE, GENDER = "age", "gender"  # the two labels the model predicts, also its output names
AGE_BINS = "age_bins"  # the pretrained head's third output: probabilities over age bins
BIN_CENTRES = "age_bin_centres"  # the head's ONNX metadata: the bins' mean ages (JSON list)
GENDERS = ("male", "female")
RACES = ("White", "Black", "Asian", "Indian", "Others")
AGE_MIN = 1  # ages are whole years; the valid range is [AGE_MIN, validate.age_max]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # the image files ingest and predict read
_ID_SUFFIXES = (".jpg.chip.jpg", *IMAGE_SUFFIXES)
LABEL_COLUMNS = ("image_id", "file", "age", "gender", "race", "timestamp", "cache_index")

_NAME = re.compile(r"^(?P<age>-?\d+)_(?P<gender>-?\d+)_(?P<race>-?\d+)_(?P<timestamp>\d+)$")


class LabelError(ValueError):
    """A file name that does not carry valid UTKFace labels."""


class MalformedName(LabelError):
    """A file name that is not ``age_gender_race_timestamp`` with numeric fields."""


class LabelOutOfRange(LabelError):
    """A well-formed name with an age, gender or race outside its range."""


@dataclass(frozen=True)
class FaceLabels:
    image_id: str
    age: int
    gender: int
    race: int
    timestamp: str


def image_id(file_name: str) -> str:
    """Stable id of an image: its base name without the UTKFace suffixes."""
    base = file_name.replace("\\", "/").rsplit("/", 1)[-1]
    lower = base.lower()
    for suffix in _ID_SUFFIXES:
        if lower.endswith(suffix):
            return base[: -len(suffix)]
    return base


def parse_file_name(file_name: str, age_max: int) -> FaceLabels:
    """Labels encoded in a UTKFace file name, age in [AGE_MIN, age_max]; raises `LabelError`
    saying what is wrong (`MalformedName` or `LabelOutOfRange`)."""
    stem = image_id(file_name)
    match = _NAME.match(stem)
    if match is None:
        fields = stem.split("_")
        if len(fields) != 4:
            raise MalformedName(
                f"malformed name: expected age_gender_race_timestamp (4 fields), "
                f"found {len(fields)} field(s) in {stem!r}"
            )
        raise MalformedName(f"malformed name: non-numeric field in {stem!r}")
    age, gender, race = (int(match[k]) for k in ("age", "gender", "race"))
    if not AGE_MIN <= age <= age_max:
        raise LabelOutOfRange(f"age {age} out of range [{AGE_MIN}, {age_max}]")
    if gender not in (0, 1):
        raise LabelOutOfRange(f"gender {gender} not in {{0, 1}}")
    if not 0 <= race < len(RACES):
        raise LabelOutOfRange(f"race {race} not in {{0..{len(RACES) - 1}}}")
    return FaceLabels(stem, age, gender, race, match["timestamp"])


def bucket_names(edges: Sequence[int]) -> list[str]:
    """Readable names of the age buckets starting at `edges`: ['0-2', '3-9', ..., '70+']."""
    names = [f"{lo}-{hi - 1}" for lo, hi in pairwise(edges)]
    return [*names, f"{edges[-1]}+"]


def age_buckets(ages: Sequence[float] | np.ndarray | pd.Series, edges: Sequence[int]) -> np.ndarray:
    """Bucket name of each age (ages below 0 fall in the first bucket)."""
    names = np.array(bucket_names(edges))
    positions = np.searchsorted(np.asarray(edges), np.asarray(ages, dtype=float), side="right") - 1
    return names[np.clip(positions, 0, len(edges) - 1)]


def clamp_ages(pred: ArrayLike, age_max: int) -> np.ndarray:
    """Predicted ages limited to the label range [AGE_MIN, age_max] (`validate.age_max`): the
    regression head is unbounded. Every prediction (evaluate, train, the served model) uses it."""
    return np.clip(np.asarray(pred, dtype=float), AGE_MIN, age_max)


def gender_labels(p_female: ArrayLike, threshold: float = 0.5) -> np.ndarray:
    """Predicted gender codes: 1 (female) where `p_female > threshold`, as Keras' BinaryAccuracy
    decides during training, so test accuracy matches the logged val accuracy."""
    return (np.asarray(p_female, dtype=float) > threshold).astype(int)
