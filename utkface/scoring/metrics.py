"""Test-set metrics for the `evaluate` stage: overall, per subgroup, and tables for DVC plots.

Everything here is pure (arrays and frames in, plain values out). Reports contain only
JSON-serializable Python types: numpy scalars become int/float and undefined values
(NaN, e.g. ROC AUC when only one class is present) become None.

Metric names carry their task prefix (`age_mae`, `gender_accuracy`, ...); `n` is the row count.
Gender is coded 0 = male, 1 = female and the model outputs `p_female`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    mean_absolute_error,
    median_absolute_error,
    precision_recall_fscore_support,
    roc_auc_score,
    root_mean_squared_error,
)

from utkface.data.labels import GENDERS, RACES, age_buckets, bucket_names, gender_labels
from utkface.scoring.age_interval import AGE_HIGH, AGE_LOW, coverage_report

FRAME_COLUMNS = ("age", "gender", "race", "pred_age", "p_female")  # and optionally AGE_LOW/HIGH
INTERVAL_COLUMNS = ("age_interval_coverage", "age_interval_width")
SMALL_SAMPLE = 5  # groups with fewer rows are reported but never named the worst
WITHIN_YEARS = 5
# the metric that picks the worst group per task, and whether higher is worse
WORST = {"age": ("age_mae", True), "gender": ("gender_accuracy", False)}


def _number(value: Any) -> float | None:
    """A plain float, or None for NaN (JSON has no NaN)."""
    value = float(value)
    return None if math.isnan(value) else value


def _names(codes: ArrayLike, names: Sequence[str]) -> np.ndarray:
    """Label names of integer codes (gender or race)."""
    return np.asarray(names)[np.asarray(codes, dtype=int)]


def age_metrics(y_true: ArrayLike, y_pred: ArrayLike) -> dict[str, float | int]:
    """MAE, RMSE, median absolute error, share within ±5 years and bias (mean of pred - true)."""
    y_true, y_pred = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    error = y_pred - y_true
    return {
        "age_mae": float(mean_absolute_error(y_true, y_pred)),
        "age_rmse": float(root_mean_squared_error(y_true, y_pred)),
        "age_median_ae": float(median_absolute_error(y_true, y_pred)),
        "age_within_5": float(np.mean(np.abs(error) <= WITHIN_YEARS)),
        "age_bias": float(np.mean(error)),
        "n": len(y_true),
    }


def expected_calibration_error(y_true: ArrayLike, p: ArrayLike, n_bins: int = 10) -> float:
    """Top-label ECE (Guo et al., 2017) of a binary classifier.

    The confidence of each prediction is the probability of the PREDICTED class,
    max(p, 1 - p), so it lies in [0.5, 1]. Confidences fall in `n_bins` equal-width bins
    (lo, hi] over [0, 1]; ECE is the mean over bins of |accuracy - mean confidence|,
    weighted by each bin's share of the examples. 0 is perfectly calibrated. The predicted
    class is the more probable one (threshold 0.5), whatever threshold accuracy uses.
    """
    y_true, p = np.asarray(y_true, dtype=int), np.asarray(p, dtype=float)
    predicted = gender_labels(p)
    confidence = np.where(predicted == 1, p, 1 - p)
    correct = (predicted == y_true).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    gap = np.abs(
        np.bincount(bins, weights=correct, minlength=n_bins)
        - np.bincount(bins, weights=confidence, minlength=n_bins)
    )
    return float(gap[counts > 0].sum() / len(p))


def gender_metrics(
    y_true: ArrayLike, p_female: ArrayLike, threshold: float = 0.5
) -> dict[str, Any]:
    """Accuracy, macro F1 (`gender_f1`), ROC AUC, ECE, per-class precision/recall/F1 and the
    confusion matrix (rows = true [male, female], columns = predicted).

    Undefined values are None: ROC AUC with one class present, a per-class precision with no
    predictions of that class or a recall with no true examples of it. Macro F1 averages the
    classes whose F1 is defined.
    """
    y_true, p_female = np.asarray(y_true, dtype=int), np.asarray(p_female, dtype=float)
    y_pred = gender_labels(p_female, threshold)
    classes = list(range(len(GENDERS)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=classes, zero_division=np.nan
    )
    both_present = len(np.unique(y_true)) == len(GENDERS)
    return {
        "gender_accuracy": float(accuracy_score(y_true, y_pred)),
        "gender_f1": float(np.nanmean(f1)),
        "gender_roc_auc": _number(roc_auc_score(y_true, p_female)) if both_present else None,
        "gender_ece": expected_calibration_error(y_true, p_female),
        "n": len(y_true),
        "per_class": {
            name: {
                "precision": _number(precision[i]),
                "recall": _number(recall[i]),
                "f1": _number(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(GENDERS)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=classes).tolist(),
    }


def _check_columns(frame: pd.DataFrame) -> None:
    missing = [c for c in FRAME_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"evaluation frame lacks column(s) {missing}; needs {list(FRAME_COLUMNS)}")


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    """The flat metric values of a metrics dict (drops nested per-class / matrix entries)."""
    return {k: v for k, v in metrics.items() if not isinstance(v, dict | list)}


def _group_metrics(rows: pd.DataFrame) -> dict[str, Any]:
    """Scalar age and gender metrics of one subgroup, with its size and small-sample flag."""
    summary: dict[str, Any] = {"n": len(rows), "small_sample": len(rows) < SMALL_SAMPLE}
    if len(rows):
        summary |= age_metrics(rows["age"], rows["pred_age"]) | _interval_metrics(rows)
        summary |= _scalars(gender_metrics(rows["gender"], rows["p_female"]))
    return summary


def _interval_metrics(rows: pd.DataFrame) -> dict[str, float]:
    """The age interval's coverage and width, when the frame has intervals."""
    if AGE_LOW not in rows.columns:
        return {}
    return coverage_report(rows["age"], rows[AGE_LOW], rows[AGE_HIGH])


def _worst(
    named: list[tuple[dict[str, str], dict[str, Any]]], metric: str, highest: bool
) -> dict[str, Any] | None:
    """The label of the group with the highest (or lowest) `metric`, and that value, among
    groups that are not small samples; ties go to the first in label order. None when every
    group is a small sample."""
    candidates = [(label, group[metric]) for label, group in named if not group["small_sample"]]
    if not candidates:
        return None
    label, value = (max if highest else min)(candidates, key=lambda c: c[1])
    return label | {metric: value}


def subgroup_report(frame: pd.DataFrame, edges: Sequence[int]) -> dict[str, Any]:
    """Metrics per age bucket (of the TRUE age), per gender and per race, and the worst group.

    Every group named in the labels is listed, empty ones as just `{"n": 0, "small_sample":
    true}`. Each grouping names its worst group for age (highest `age_mae`) and gender (lowest
    `gender_accuracy`), and the top-level `worst` does so across all groupings, in both cases
    ignoring small-sample groups (fewer than 5 rows).
    """
    _check_columns(frame)
    keys = {
        "age_bucket": (age_buckets(frame["age"], edges), bucket_names(edges)),
        "gender": (_names(frame["gender"], GENDERS), GENDERS),
        "race": (_names(frame["race"], RACES), RACES),
    }
    report: dict[str, Any] = {}
    for grouping, (key, names) in keys.items():
        groups = {name: _group_metrics(frame[key == name]) for name in names}
        named = [({"group": name}, group) for name, group in groups.items()]
        report[grouping] = {
            "groups": groups,
            "worst": {task: _worst(named, metric, high) for task, (metric, high) in WORST.items()},
        }
    named = [
        ({"grouping": grouping, "group": name}, group)
        for grouping, entry in report.items()
        for name, group in entry["groups"].items()
    ]
    report["worst"] = {task: _worst(named, metric, high) for task, (metric, high) in WORST.items()}
    return report


def evaluation_report(frame: pd.DataFrame, edges: Sequence[int]) -> dict[str, Any]:
    """The `metrics/evaluate.json` document: overall scalar metrics at the top level (what
    `dvc metrics show` lists and the stage logs as `test_*`), plus nested `per_class`,
    `confusion_matrix` and `subgroups`."""
    _check_columns(frame)
    return (
        age_metrics(frame["age"], frame["pred_age"])
        | _interval_metrics(frame)
        | gender_metrics(frame["gender"], frame["p_female"])
        | {"subgroups": subgroup_report(frame, edges)}
    )


def median_baseline_mae(train_ages: ArrayLike, test_ages: ArrayLike) -> float:
    """Test MAE of always predicting the training median: the bar a useful model must beat."""
    test_ages = np.asarray(test_ages, dtype=float)
    baseline = np.full_like(test_ages, np.median(np.asarray(train_ages, dtype=float)))
    return float(mean_absolute_error(test_ages, baseline))


def age_scatter_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per test example (`age`, `pred_age`) for DVC's scatter plot."""
    return frame[["age", "pred_age"]].reset_index(drop=True)


def confusion_table(y_true: ArrayLike, y_pred_label: ArrayLike) -> pd.DataFrame:
    """One row per example with `actual` and `predicted` gender names, as DVC's confusion
    template wants."""
    return pd.DataFrame(
        {"actual": _names(y_true, GENDERS), "predicted": _names(y_pred_label, GENDERS)}
    )


def by_bucket_table(report: dict[str, Any]) -> pd.DataFrame:
    """`age_bucket`, `age_mae`, `gender_accuracy`, the age interval's coverage and width (when
    reported) and `n` per non-empty age bucket of an `evaluation_report`, youngest first (DVC's
    bar template keeps this order)."""
    groups = report["subgroups"]["age_bucket"]["groups"]
    interval = [c for c in INTERVAL_COLUMNS if c in report]
    columns = ["age_bucket", "age_mae", "gender_accuracy", *interval, "n"]
    return pd.DataFrame(
        [{"age_bucket": name} | group for name, group in groups.items() if group["n"]],
        columns=columns,
    )[columns]
