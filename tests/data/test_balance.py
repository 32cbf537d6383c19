"""Stage `balance`: capping, down- and upsampling counts, round-robin sources, determinism."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stages import balance
from utkface import paths
from utkface.data import balancing
from utkface.data.augment import NEUTRAL_SPEC, SPEC_COLUMNS
from utkface.params import AugmentParams, BalanceParams

CFG = BalanceParams(age_cap=100, min_per_age=5, max_per_age=20)


def make_labels(counts: dict[int, int], seed: int = 0) -> pd.DataFrame:
    """A labels table with `counts[age]` images of each age, in shuffled row order."""
    ages = np.repeat(list(counts), list(counts.values()))
    rng = np.random.default_rng(seed)
    ids = [f"{age}_{i:04d}" for i, age in enumerate(ages)]
    table = pd.DataFrame(
        {
            "image_id": ids,
            "file": [f"{i}.jpg.chip.jpg" for i in ids],
            "age": ages.astype("int64"),
            "gender": rng.integers(0, 2, len(ages)),
            "race": rng.integers(0, 5, len(ages)),
            "timestamp": "20170101000000000",
            "cache_index": np.arange(len(ages)),
        }
    )
    return table.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def test_counts_per_age_after_capping_downsampling_and_upsampling():
    labels = make_labels({10: 3, 20: 50, 30: 10, 100: 1, 101: 2, 116: 1})
    plan = balancing.balance_plan(labels, CFG, seed=42)
    assert plan["age"].value_counts().sort_index().to_dict() == {10: 5, 20: 20, 30: 10, 100: 5}
    assert plan["age"].max() == 100
    originals = plan[~plan["augmented"]]
    assert originals["age"].value_counts().sort_index().to_dict() == {10: 3, 20: 20, 30: 10, 100: 4}
    assert not originals["image_id"].duplicated().any()
    assert list(plan.columns) == list(balancing.PLAN_COLUMNS)


def test_augmented_rows_point_at_their_sources_round_robin():
    labels = make_labels({7: 2, 8: 3})
    plan = balancing.balance_plan(labels, BalanceParams(min_per_age=9, max_per_age=20), seed=1)
    copies = plan[plan["augmented"]]
    cache_of = dict(zip(labels["image_id"], labels["cache_index"], strict=True))
    assert (copies["cache_index"] == copies["image_id"].map(cache_of)).all()
    for age, n_images in ((7, 2), (8, 3)):
        per_source = copies.loc[copies["age"] == age, "image_id"].value_counts()
        assert per_source.sum() == 9 - n_images
        assert len(per_source) == n_images and per_source.max() - per_source.min() <= 1


def test_specs_neutral_for_originals_and_within_ranges_for_copies():
    labels = make_labels({5: 2, 6: 40})
    cfg = BalanceParams(min_per_age=200, max_per_age=200)
    plan = balancing.balance_plan(labels, cfg, seed=3)
    originals, copies = plan[~plan["augmented"]], plan[plan["augmented"]]
    for column, value in NEUTRAL_SPEC.items():
        assert (originals[column] == value).all()
    aug = cfg.augment
    assert copies["rotation_deg"].abs().max() <= aug.rotation_deg
    assert copies[["shift_x", "shift_y"]].abs().max().max() <= aug.shift
    assert (copies["brightness"] - 1).abs().max() <= aug.brightness
    assert copies["shear_deg"].abs().max() <= aug.shear_deg
    assert (copies["zoom"] - 1).abs().max() <= aug.zoom
    assert 0.3 < copies["flip"].mean() < 0.7
    assert copies[list(SPEC_COLUMNS)].drop_duplicates().shape[0] == len(copies)


def test_no_flip_drawn_when_flip_disabled():
    cfg = BalanceParams(min_per_age=50, augment=AugmentParams(horizontal_flip=False))
    plan = balancing.balance_plan(make_labels({3: 4}), cfg, seed=0)
    assert plan["augmented"].sum() == 46 and not plan["flip"].any()


def test_same_seed_same_plan_whatever_the_row_order_and_other_seed_differs():
    labels = make_labels({10: 3, 20: 50, 30: 10})
    plan = balancing.balance_plan(labels, CFG, seed=42)
    reordered = balancing.balance_plan(labels.sample(frac=1.0, random_state=9), CFG, seed=42)
    pd.testing.assert_frame_equal(plan, reordered)
    other = balancing.balance_plan(labels, CFG, seed=43)
    assert not plan.equals(other)


def test_an_age_sample_does_not_depend_on_other_ages():
    plan = balancing.balance_plan(make_labels({20: 50}), CFG, seed=42)
    with_more = balancing.balance_plan(make_labels({20: 50, 30: 80}), CFG, seed=42)
    assert set(plan["image_id"]) == set(with_more.loc[with_more["age"] == 20, "image_id"])


def test_disabled_keeps_every_original_with_capped_ages():
    labels = make_labels({10: 3, 20: 50, 110: 2})
    plan = balancing.balance_plan(labels, CFG.model_copy(update={"enabled": False}), seed=42)
    assert len(plan) == len(labels) and not plan["augmented"].any()
    assert plan["age"].max() == 100


def test_duplicate_image_ids_are_refused():
    labels = make_labels({10: 3})
    with pytest.raises(ValueError, match="duplicate"):
        balancing.balance_plan(pd.concat([labels, labels.iloc[:1]]), CFG, seed=0)


def test_counts_and_report_add_up():
    labels = make_labels({10: 3, 20: 50, 30: 10, 101: 2})
    plan = balancing.balance_plan(labels, CFG, seed=42)
    counts = balance.age_counts(labels, plan, CFG.age_cap)
    assert counts["age"].tolist() == list(range(10, 101))
    row = counts.set_index("age").loc[20]
    assert row.to_dict() == {"before": 50, "kept": 20, "removed": 30, "added": 0, "after": 20}
    report = balance.balance_report(labels, plan, counts, CFG)
    assert (report["rows_before"], report["rows_after"]) == (65, 40)
    assert (report["kept"], report["removed"], report["added"]) == (35, 30, 5)
    assert (report["images_capped"], report["ages"]) == (2, 4)
    assert (report["ages_downsampled"], report["ages_upsampled"]) == (1, 2)
    assert [r["age"] for r in report["per_age"]] == [10, 20, 30, 100]


def test_main_writes_plan_metrics_and_histogram(tmp_path: Path, monkeypatch):
    shutil.copy(paths.PARAMS, tmp_path / paths.PARAMS)
    monkeypatch.chdir(tmp_path)
    paths.LABELS.parent.mkdir(parents=True)
    make_labels({1: 300, 30: 5, 105: 1}).to_parquet(paths.LABELS)
    balance.main()
    plan = pd.read_parquet(paths.PLAN)
    assert plan["age"].value_counts().sort_index().to_dict() == {1: 200, 30: 20, 100: 20}
    report = json.loads(paths.BALANCE_METRICS.read_text())
    assert (report["removed"], report["added"]) == (100, 34)
    histogram = pd.read_csv(paths.BALANCE_HISTOGRAM)
    assert list(histogram.columns) == ["age", "before", "after"]
    assert histogram["after"].sum() == len(plan)
