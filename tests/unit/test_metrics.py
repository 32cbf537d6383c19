"""Evaluation metrics on hand-made arrays whose expected values are worked out by hand."""

from __future__ import annotations

import json
import math
import warnings

import pandas as pd
import pytest

from utkface.data.labels import clamp_ages
from utkface.scoring.metrics import (
    age_metrics,
    age_scatter_table,
    by_bucket_table,
    confusion_table,
    evaluation_report,
    expected_calibration_error,
    gender_labels,
    gender_metrics,
    median_baseline_mae,
    subgroup_report,
)

EDGES = [0, 3, 10, 20, 30, 40, 50, 60, 70]


def assert_plain_json(value: object) -> None:
    """Only built-in JSON types all the way down (no numpy scalars, no NaN)."""
    if isinstance(value, dict):
        assert all(type(k) is str for k in value)
        for item in value.values():
            assert_plain_json(item)
    elif isinstance(value, list):
        for item in value:
            assert_plain_json(item)
    else:
        assert value is None or type(value) in (str, int, float, bool), repr(value)
        assert not (type(value) is float and math.isnan(value))


def test_clamp_ages_limits_to_the_label_range():
    assert clamp_ages([-3.0, 0.4, 50.5, 130.0], age_max=116).tolist() == [1.0, 1.0, 50.5, 116.0]
    assert clamp_ages([5, 95], age_max=90).tolist() == [5.0, 90.0]


def test_age_metrics_by_hand():
    # errors pred - true: +2, -3, 0, +10
    m = age_metrics([10, 20, 30, 40], [12, 17, 30, 50])
    assert m["age_mae"] == pytest.approx(15 / 4)
    assert m["age_rmse"] == pytest.approx(math.sqrt((4 + 9 + 0 + 100) / 4))
    assert m["age_median_ae"] == pytest.approx(2.5)
    assert m["age_within_5"] == pytest.approx(0.75)
    assert m["age_bias"] == pytest.approx(9 / 4)
    assert m["n"] == 4


def test_within_5_includes_exactly_five_years():
    assert age_metrics([20, 20], [25, 14])["age_within_5"] == pytest.approx(0.5)


def test_gender_labels_match_keras_binary_accuracy():
    assert gender_labels([0.2, 0.5, 0.51]).tolist() == [0, 0, 1]
    assert gender_labels([0.2, 0.5, 0.51], threshold=0.3).tolist() == [0, 1, 1]


def test_gender_metrics_by_hand():
    # true male: predicted 0, 1, 1, 0 -> 2 right; true female: predicted 1, 0 -> 1 right
    m = gender_metrics([0, 0, 0, 0, 1, 1], [0.2, 0.7, 0.8, 0.1, 0.9, 0.3])
    assert m["confusion_matrix"] == [[2, 2], [1, 1]]
    assert m["gender_accuracy"] == pytest.approx(0.5)
    male, female = m["per_class"]["male"], m["per_class"]["female"]
    assert (male["precision"], male["recall"], male["f1"]) == pytest.approx((2 / 3, 1 / 2, 4 / 7))
    assert (female["precision"], female["recall"], female["f1"]) == pytest.approx(
        (1 / 3, 1 / 2, 0.4)
    )
    assert (male["support"], female["support"]) == (4, 2)
    assert m["gender_f1"] == pytest.approx((4 / 7 + 0.4) / 2)
    # female scores 0.9, 0.3 against male 0.2, 0.7, 0.8, 0.1: 4 + 2 of 8 pairs ranked right
    assert m["gender_roc_auc"] == pytest.approx(6 / 8)
    assert m["n"] == 6
    assert_plain_json(m)


def test_gender_metrics_threshold_moves_predictions():
    m = gender_metrics([0, 1], [0.4, 0.6], threshold=0.7)
    assert m["confusion_matrix"] == [[1, 0], [1, 0]]


def test_roc_auc_is_none_with_one_class_and_nothing_warns():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = gender_metrics([1, 1, 1], [0.9, 0.2, 0.8])
    assert m["gender_roc_auc"] is None
    assert m["gender_accuracy"] == pytest.approx(2 / 3)
    assert m["per_class"]["male"]["recall"] is None  # no true males
    assert m["per_class"]["male"]["precision"] == 0.0  # one predicted male, wrong
    assert_plain_json(m)


def test_ece_is_zero_when_calibrated():
    # confidence 0.8 (female) right 8/10 times, confidence 0.7 (male) right 7/10 times
    y = [1] * 8 + [0] * 2 + [0] * 7 + [1] * 3
    p = [0.8] * 10 + [0.3] * 10
    assert expected_calibration_error(y, p) == pytest.approx(0.0, abs=1e-12)


def test_ece_of_overconfident_predictions():
    # 10 at confidence 0.95 right 6 times (gap 0.35), 10 at confidence 0.9 (male) all right
    # (gap 0.1): weighted mean (0.35 + 0.1) / 2
    y = [1] * 6 + [0] * 4 + [0] * 10
    p = [0.95] * 10 + [0.1] * 10
    assert expected_calibration_error(y, p) == pytest.approx(0.225)


def test_median_baseline_mae():
    # train median 25; test errors 5, 5, 15
    assert median_baseline_mae([10, 20, 30, 100], [20, 30, 40]) == pytest.approx(25 / 3)


def crafted_frame() -> pd.DataFrame:
    """20-29 / White: 10 perfect faces; 30-39 / Black: 10 women aged +10, 4 of them called men;
    70+ / Asian: 3 men aged 50 years off and called women (a small sample, worst if counted)."""
    a = pd.DataFrame(
        {
            "age": 25,
            "gender": [0, 1] * 5,
            "race": 0,
            "pred_age": 25.0,
            "p_female": [0.1, 0.9] * 5,
        }
    )
    b = pd.DataFrame(
        {"age": 35, "gender": 1, "race": 1, "pred_age": 45.0, "p_female": [0.9] * 6 + [0.2] * 4}
    )
    c = pd.DataFrame({"age": [75] * 3, "gender": 0, "race": 2, "pred_age": 25.0, "p_female": 0.9})
    return pd.concat([a, b, c], ignore_index=True)


def test_subgroup_report_groups_and_flags_small_samples():
    report = subgroup_report(crafted_frame(), EDGES)
    buckets = report["age_bucket"]["groups"]
    assert list(buckets) == [
        "0-2",
        "3-9",
        "10-19",
        "20-29",
        "30-39",
        "40-49",
        "50-59",
        "60-69",
        "70+",
    ]
    assert buckets["0-2"] == {"n": 0, "small_sample": True}
    assert buckets["70+"]["n"] == 3 and buckets["70+"]["small_sample"]
    assert buckets["70+"]["age_mae"] == pytest.approx(50.0)  # reported all the same
    assert buckets["30-39"]["small_sample"] is False
    assert buckets["30-39"]["age_bias"] == pytest.approx(10.0)
    assert buckets["30-39"]["gender_accuracy"] == pytest.approx(0.6)

    genders = report["gender"]["groups"]
    assert genders["male"]["n"] == 8 and genders["female"]["n"] == 15
    assert genders["male"]["age_mae"] == pytest.approx(150 / 8)
    assert genders["female"]["gender_accuracy"] == pytest.approx(11 / 15)

    races = report["race"]["groups"]
    assert [races[r]["n"] for r in ("White", "Black", "Asian", "Indian", "Others")] == [
        10,
        10,
        3,
        0,
        0,
    ]
    assert races["Asian"]["small_sample"]


def test_subgroup_report_names_worst_groups_ignoring_small_samples():
    report = subgroup_report(crafted_frame(), EDGES)
    assert report["age_bucket"]["worst"] == {
        "age": {"group": "30-39", "age_mae": 10.0},
        "gender": {"group": "30-39", "gender_accuracy": 0.6},
    }
    assert report["gender"]["worst"]["age"] == {"group": "male", "age_mae": 18.75}
    assert report["gender"]["worst"]["gender"] == {"group": "male", "gender_accuracy": 0.625}
    assert report["race"]["worst"]["age"]["group"] == "Black"
    # male (18.75) beats Black and 30-39 (10.0); for gender 30-39 and Black tie at 0.6 and the
    # first grouping wins
    assert report["worst"]["age"] == {"grouping": "gender", "group": "male", "age_mae": 18.75}
    assert report["worst"]["gender"] == {
        "grouping": "age_bucket",
        "group": "30-39",
        "gender_accuracy": 0.6,
    }


def test_worst_is_none_when_every_group_is_small():
    report = subgroup_report(crafted_frame().tail(3), EDGES)
    assert report["age_bucket"]["worst"] == {"age": None, "gender": None}
    assert report["worst"] == {"age": None, "gender": None}


def test_evaluation_report_is_plain_json_with_scalar_top_level():
    report = evaluation_report(crafted_frame(), EDGES)
    assert_plain_json(report)
    json.dumps(report, allow_nan=False)
    nested = {"per_class", "confusion_matrix", "subgroups"}
    assert nested <= report.keys()
    scalars = {k: v for k, v in report.items() if k not in nested}
    assert all(type(v) in (int, float) for v in scalars.values()), scalars
    assert {"age_mae", "age_rmse", "age_within_5", "gender_accuracy", "gender_f1"} <= scalars.keys()
    assert report["age_mae"] == pytest.approx((10 * 10 + 3 * 50) / 23)
    assert report["gender_accuracy"] == pytest.approx(16 / 23)
    assert report["n"] == 23


def test_evaluation_report_names_missing_columns():
    with pytest.raises(ValueError, match="p_female"):
        evaluation_report(crafted_frame().drop(columns="p_female"), EDGES)


def test_plot_tables():
    frame = crafted_frame()
    scatter = age_scatter_table(frame.iloc[10:])
    assert list(scatter.columns) == ["age", "pred_age"] and scatter.index[0] == 0

    confusion = confusion_table([0, 1, 1], [0, 0, 1])
    assert confusion.to_dict("list") == {
        "actual": ["male", "female", "female"],
        "predicted": ["male", "male", "female"],
    }

    report = evaluation_report(frame, EDGES)
    table = by_bucket_table(report)
    groups = report["subgroups"]["age_bucket"]["groups"]
    assert table.to_dict("list") == {
        "age_bucket": ["20-29", "30-39", "70+"],  # youngest first, empty buckets left out
        "age_mae": [0.0, 10.0, 50.0],
        "gender_accuracy": [groups[b]["gender_accuracy"] for b in ("20-29", "30-39", "70+")],
        "n": [10, 10, 3],
    }
