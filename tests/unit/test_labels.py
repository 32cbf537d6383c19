"""UTKFace labels: file-name parsing, image ids, age bucket names and assignment at the edges."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from tiny import AGE_MAX

from utkface.data.labels import (
    FaceLabels,
    LabelError,
    age_buckets,
    bucket_names,
    image_id,
    parse_file_name,
)

STAMP = "20170116174525125"
EDGES = [0, 3, 10, 20, 30, 40, 50, 60, 70]


@pytest.mark.parametrize(
    "name",
    [
        f"25_1_3_{STAMP}.jpg.chip.jpg",  # crop_part1 / UTKFace cropped
        f"25_1_3_{STAMP}.jpg",  # aligned set
        f"25_1_3_{STAMP}.JPG.CHIP.JPG",  # suffixes are matched case-insensitively
        f"UTKFace/UTKFace/25_1_3_{STAMP}.jpg.chip.jpg",  # Kaggle layout: folders are ignored
        f"UTKFace\\25_1_3_{STAMP}.jpg.chip.jpg",  # a Windows-made archive
    ],
)
def test_parse_valid_names(name):
    assert parse_file_name(name, AGE_MAX) == FaceLabels(f"25_1_3_{STAMP}", 25, 1, 3, STAMP)


def test_parse_age_and_label_edges_are_inclusive():
    assert parse_file_name(f"1_0_0_{STAMP}.jpg", AGE_MAX).age == 1
    assert parse_file_name(f"{AGE_MAX}_1_4_{STAMP}.jpg", AGE_MAX) == FaceLabels(
        f"{AGE_MAX}_1_4_{STAMP}", AGE_MAX, 1, 4, STAMP
    )
    assert parse_file_name(f"130_0_0_{STAMP}.jpg", age_max=130).age == 130


@pytest.mark.parametrize(
    ("name", "message"),
    [
        # the real defect in crop_part1: the race field is missing
        ("61_1_20170109142408075.jpg.chip.jpg", "found 3 field(s)"),
        (f"20_1_0_0_{STAMP}.jpg", "found 5 field(s)"),
        ("README.jpg", "found 1 field(s)"),
        (f"2a_1_0_{STAMP}.jpg", "non-numeric field"),
        (f"20_1_0_{STAMP}x.jpg", "non-numeric field"),
        ("20_1_0_.jpg", "non-numeric field"),
    ],
)
def test_malformed_names(name, message):
    with pytest.raises(LabelError, match=r"^malformed name") as error:
        parse_file_name(name, AGE_MAX)
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (f"0_0_0_{STAMP}.jpg", "age 0 out of range [1, 116]"),
        (f"117_0_0_{STAMP}.jpg", "age 117 out of range [1, 116]"),
        (f"130_0_0_{STAMP}.jpg", "age 130 out of range [1, 116]"),
        (f"-3_0_0_{STAMP}.jpg", "age -3 out of range"),
        (f"20_2_0_{STAMP}.jpg", "gender 2 not in {0, 1}"),
        (f"20_-1_0_{STAMP}.jpg", "gender -1 not in {0, 1}"),
        (f"20_0_5_{STAMP}.jpg", "race 5 not in {0..4}"),
        (f"20_0_7_{STAMP}.jpg", "race 7 not in {0..4}"),
        (f"20_0_-1_{STAMP}.jpg", "race -1 not in {0..4}"),
    ],
)
def test_out_of_range_labels(name, message):
    with pytest.raises(LabelError) as error:
        parse_file_name(name, AGE_MAX)
    assert str(error.value).startswith(message)


def test_age_max_is_configurable():
    with pytest.raises(LabelError, match=r"age 90 out of range \[1, 80\]"):
        parse_file_name(f"90_0_0_{STAMP}.jpg", age_max=80)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (f"25_1_3_{STAMP}.jpg.chip.jpg", f"25_1_3_{STAMP}"),
        (f"a/b/25_1_3_{STAMP}.jpg.chip.jpg", f"25_1_3_{STAMP}"),
        (f"a\\b\\25_1_3_{STAMP}.jpg.chip.jpg", f"25_1_3_{STAMP}"),
        ("Face.JPG.Chip.JPG", "Face"),  # suffix case-insensitive, the id keeps its case
        ("x.jpeg", "x"),
        ("x.png", "x"),
        ("x.chip.png", "x.chip"),
        ("notes.txt", "notes.txt"),
    ],
)
def test_image_id_strips_utkface_suffixes_and_folders(name, expected):
    assert image_id(name) == expected


def test_bucket_names():
    assert bucket_names(EDGES) == [
        "0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70+",
    ]  # fmt: skip
    assert bucket_names([0, 1]) == ["0-0", "1+"]


def test_age_buckets_at_the_edges():
    ages = [0, 1, 2, 3, 9, 10, 19, 20, 69, 70, 116]
    assert list(age_buckets(ages, EDGES)) == [
        "0-2", "0-2", "0-2", "3-9", "3-9", "10-19", "10-19", "20-29", "60-69", "70+", "70+",
    ]  # fmt: skip


def test_age_buckets_fractional_negative_and_series_input():
    assert list(age_buckets(np.array([2.99, 3.0, -5.0]), EDGES)) == ["0-2", "3-9", "0-2"]
    series = pd.Series([45, 71], index=[10, 20])  # the index must not matter
    assert list(age_buckets(series, [0, 18, 65])) == ["18-64", "65+"]
    assert len(age_buckets([], EDGES)) == 0
