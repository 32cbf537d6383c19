"""Stage `split`: grouped, stratified assignment; train from the plan, val/test from ingest;
leakage checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stages import balance, split
from utkface import paths
from utkface.data import balancing, splitting
from utkface.params import BalanceParams

EDGES = [0, 3, 10, 20, 30, 40, 50, 60, 70]
VAL, TEST = 0.15, 0.15
CFG = BalanceParams(age_cap=100, min_per_age=20, max_per_age=30)


def make_labels(n: int = 1000, seed: int = 0) -> pd.DataFrame:
    """A skewed labels table: many babies and twenty-somethings, few old people, 20 over 100."""
    rng = np.random.default_rng(seed)
    ages = np.concatenate(
        [rng.integers(1, 3, n // 5), rng.integers(20, 36, n // 2), rng.integers(1, 100, n)]
    )[:n]
    ages[-20:] = rng.integers(101, 117, 20)
    ids = [f"img{i:05d}" for i in range(n)]
    return pd.DataFrame(
        {
            "image_id": ids,
            "file": [f"{i}.jpg" for i in ids],
            "age": ages.astype("int64"),
            "gender": rng.integers(0, 2, n),
            "race": rng.integers(0, 5, n),
            "timestamp": "20170101000000000",
            "cache_index": rng.permutation(n),
        }
    )


def make_splits(labels: pd.DataFrame, seed: int = 42) -> tuple[pd.DataFrame, dict]:
    plan = balancing.balance_plan(labels, CFG, seed)
    assignment = splitting.assign_splits(labels, EDGES, VAL, TEST, seed)
    return assignment, splitting.build_splits(plan, labels, assignment)


def test_every_image_in_exactly_one_split_with_the_configured_fractions():
    labels = make_labels()
    assignment = splitting.assign_splits(labels, EDGES, VAL, TEST, seed=42)
    assert sorted(assignment["image_id"]) == sorted(labels["image_id"])
    shares = assignment["split"].value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.70, abs=0.01)
    assert shares["val"] == pytest.approx(VAL, abs=0.01)
    assert shares["test"] == pytest.approx(TEST, abs=0.01)


def test_assignment_is_deterministic_for_a_seed_and_changes_with_it():
    labels = make_labels()
    first = splitting.assign_splits(labels, EDGES, VAL, TEST, seed=42)
    shuffled = labels.sample(frac=1.0, random_state=5)
    pd.testing.assert_frame_equal(
        first, splitting.assign_splits(shuffled, EDGES, VAL, TEST, seed=42)
    )
    assert not first.equals(splitting.assign_splits(labels, EDGES, VAL, TEST, seed=7))


def test_each_stratum_keeps_its_share_in_every_split():
    labels = make_labels()
    assignment = splitting.assign_splits(labels, EDGES, VAL, TEST, seed=42)
    for name in paths.SPLIT_NAMES:
        assert split.stratum_deviation(assignment, name) <= 0.05
    # also on the unpooled age bucket x gender strata
    stratum = pd.Series(splitting.strata(labels["age"], labels["gender"], EDGES, min_size=1))
    overall = stratum.value_counts(normalize=True)
    by_id = dict(zip(labels["image_id"], stratum, strict=True))
    for name in paths.SPLIT_NAMES:
        chosen = assignment.loc[assignment["split"] == name, "image_id"].map(by_id)
        share = chosen.value_counts(normalize=True).reindex(overall.index, fill_value=0.0)
        assert (share - overall).abs().max() <= 0.05


def test_small_strata_are_pooled_with_younger_buckets_of_the_same_gender():
    ages = np.array([1] * 30 + [25] * 30 + [65] * 11 + [80] * 3 + [5] * 2 + [1] * 4)
    genders = np.array([0] * 76 + [1] * 4)
    names = splitting.strata(ages, genders, EDGES, min_size=14)
    assert set(names[ages == 80]) == set(names[(ages == 65)]) == {"male 60-69|70+"}
    assert set(names[(genders == 0) & (ages < 10)]) == {"male 0-2|3-9"}
    assert set(names[genders == 1]) == {"male 0-2|3-9"}  # a whole gender below the threshold


def test_tiny_strata_do_not_break_the_split():
    labels = make_labels(200)
    labels.loc[labels.index[:3], ["age", "gender"]] = [[95, 1], [110, 1], [116, 0]]
    assignment = splitting.assign_splits(labels, EDGES, VAL, TEST, seed=42)
    assert assignment["split"].value_counts().to_dict() == {"train": 140, "val": 30, "test": 30}


def test_train_is_the_plan_of_training_images_and_val_test_the_ingested_originals():
    labels = make_labels()
    assignment, splits = make_splits(labels)
    splitting.check_no_leakage(splits, labels)
    of = dict(zip(assignment["image_id"], assignment["split"], strict=True))
    train = splits["train"]
    assert (train["image_id"].map(of) == "train").all() and train["augmented"].any()
    assert train["age"].max() == 100
    for name in ("val", "test"):
        table = splits[name]
        assigned = assignment.loc[assignment["split"] == name, "image_id"]
        assert sorted(table["image_id"]) == sorted(assigned)  # incl. images the plan dropped
        assert not table["augmented"].any() and (table["zoom"] == 1.0).all()
        truth = labels.set_index("image_id").loc[table["image_id"]]
        assert (table["age"].to_numpy() == truth["age"].to_numpy()).all()  # uncapped
        assert (table["cache_index"].to_numpy() == truth["cache_index"].to_numpy()).all()
        assert list(table.columns) == list(balancing.PLAN_COLUMNS)
    plan = balancing.balance_plan(labels, CFG, 42)
    dropped = set(labels["image_id"]) - set(plan["image_id"])
    assert dropped & set(splits["test"]["image_id"])
    assert (pd.concat([splits["val"], splits["test"]])["age"] > 100).any()


@pytest.mark.parametrize(
    ("doctor", "message"),
    [
        ("shared", "in both train and test"),
        ("augmented", "augmented row"),
        ("foreign", "not ingested"),
        ("wrong_cache_index", "not ingested"),
    ],
)
def test_leakage_raises(doctor: str, message: str):
    labels = make_labels(300)
    _, splits = make_splits(labels)
    train, test = splits["train"], splits["test"].copy()
    if doctor == "shared":
        test = pd.concat([test, train[~train["augmented"]].head(1)], ignore_index=True)
    elif doctor == "augmented":
        test.loc[0, "augmented"] = True
    elif doctor == "foreign":
        test.loc[0, "image_id"] = "not_ingested"
    else:
        test.loc[0, "cache_index"] = (test.loc[0, "cache_index"] + 1) % len(labels)
    with pytest.raises(splitting.LeakageError, match=message):
        splitting.check_no_leakage({**splits, "test": test}, labels)


def test_a_stale_plan_is_refused():
    labels = make_labels(300)
    plan = balancing.balance_plan(labels, CFG, 42)
    assignment = splitting.assign_splits(labels.iloc[1:], EDGES, VAL, TEST, 42)
    with pytest.raises(splitting.LeakageError, match="stale"):
        splitting.build_splits(plan, labels.iloc[1:], assignment)


def test_report():
    labels = make_labels()
    assignment, splits = make_splits(labels)
    report = split.split_report(splits, assignment, EDGES)
    assert report["images"] == 1000
    assert [report[name]["images"] for name in paths.SPLIT_NAMES] == [700, 150, 150]
    assert report["train"]["rows"] == len(splits["train"])
    assert report["val"]["augmented"] == report["test"]["augmented"] == 0
    assert report["train"]["augmented"] == int(splits["train"]["augmented"].sum()) > 0
    assert sum(b["rows"] for b in report["test"]["age_buckets"]) == report["test"]["rows"]
    assert report["max_stratum_deviation"] <= 0.05


def test_main_after_balance_writes_three_tables_and_metrics(tmp_path: Path, monkeypatch):
    shutil.copy(paths.PARAMS, tmp_path / paths.PARAMS)
    monkeypatch.chdir(tmp_path)
    paths.LABELS.parent.mkdir(parents=True)
    labels = make_labels()
    labels.to_parquet(paths.LABELS)
    balance.main()
    split.main()
    tables = {name: pd.read_parquet(paths.split_table(name)) for name in paths.SPLIT_NAMES}
    splitting.check_no_leakage(tables, labels)
    report = json.loads(paths.SPLIT_METRICS.read_text())
    assert {name: report[name]["rows"] for name in tables} == {k: len(t) for k, t in tables.items()}
