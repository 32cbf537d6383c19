"""Rows taken from a split keep its arrays, by input name for the finetuned family, and its
table together."""

from __future__ import annotations

import numpy as np
import pandas as pd

from utkface.data.dataset import SplitData, sample_rows, take_rows


def split(rows: int) -> SplitData:
    ids = np.arange(rows)
    images = {"prefix": ids[:, None] * np.ones((1, 3)), "features": ids[:, None] * 10.0}
    table = pd.DataFrame({"image_id": [f"img{i}" for i in ids]})
    return SplitData(images, ids.astype(np.float32), ids % 2, table)


def test_taken_rows_stay_together_in_the_order_asked() -> None:
    taken = take_rows(split(6), np.array([4, 1]))
    assert taken.age.tolist() == [4, 1]
    assert taken.gender.tolist() == [0, 1]
    assert taken.images["prefix"][:, 0].tolist() == [4, 1]
    assert taken.images["features"][:, 0].tolist() == [40, 10]
    assert taken.table["image_id"].tolist() == ["img4", "img1"]


def test_sampled_rows_are_seeded_and_in_split_order() -> None:
    data = split(50)
    first, again = sample_rows(data, 10, seed=3), sample_rows(data, 10, seed=3)
    ages = first.age.tolist()
    assert ages == again.age.tolist() == sorted(ages)
    assert len(set(ages)) == 10
    assert first.table["image_id"].tolist() == [f"img{int(a)}" for a in ages]
    assert sample_rows(data, 10, seed=4).age.tolist() != ages
    assert sample_rows(data, 60, seed=3) is data  # no more rows than it has: all of it
