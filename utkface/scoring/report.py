"""What evaluate reports: the headline metrics (`metrics/evaluate.json`), the subgroup detail
(`metrics/subgroups.json`), the tables `dvc plots` draws, the MLflow figures, and the one-line
summary of the worst groups."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from utkface import paths
from utkface.data.dataset import SplitData
from utkface.data.labels import gender_labels
from utkface.params import Params
from utkface.scoring import figures
from utkface.scoring.metrics import age_scatter_table, by_bucket_table, confusion_table


def headline_metrics(report: dict) -> dict[str, float]:
    """The overall scalar metrics, named `test_*` as in MLflow: metrics/evaluate.json."""
    return {
        f"test_{k}": float(v)
        for k, v in report.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def detail_report(report: dict) -> dict:
    """metrics/subgroups.json: per age bucket, gender and race, the worst groups, and the
    gender classifier's per-class figures and confusion matrix (kept out of the DVC metrics
    file so that `dvc exp show` stays readable)."""
    return report["subgroups"] | {k: report[k] for k in ("per_class", "confusion_matrix")}


def worst_groups(worst: dict) -> str:
    """E.g. 'worst age MAE: age 70+ (9.1 years), worst gender accuracy: age 0-2 (0.59)'."""
    parts = []
    for task, metric, unit in (("age", "age_mae", " years"), ("gender", "gender_accuracy", "")):
        group = worst.get(task)
        if group:
            kind = "age" if group["grouping"] == "age_bucket" else group["grouping"]
            name = metric.replace("_", " ").replace("mae", "MAE")
            parts.append(f"worst {name}: {kind} {group['group']} ({group[metric]:.2f}{unit})")
    return ", ".join(parts) or "no group large enough to name the worst"


def write_plot_tables(frame: pd.DataFrame, report: dict, data: SplitData, params: Params) -> None:
    """What `dvc plots` draws: per-face predictions, the confusion table, the per-bucket table
    and a grid of sample test faces with their predictions."""
    paths.EVALUATE_PLOTS.mkdir(parents=True, exist_ok=True)
    age_scatter_table(frame).to_csv(paths.AGE_PREDICTIONS, index=False)
    predicted = gender_labels(frame["p_female"].to_numpy())
    confusion_table(frame["gender"], predicted).to_csv(paths.GENDER_CONFUSION, index=False)
    by_bucket_table(report).to_csv(paths.BY_AGE_BUCKET, index=False)
    rng = np.random.default_rng(params.seed)
    pick = np.sort(
        rng.choice(len(frame), size=min(params.evaluate.sample_grid, len(frame)), replace=False)
    )
    figures.plot_sample_grid(
        data.images[pick],
        frame["age"].to_numpy()[pick],
        frame["gender"].to_numpy()[pick],
        frame["pred_age"].to_numpy()[pick],
        frame["p_female"].to_numpy()[pick],
        paths.SAMPLE_GRID,
    )


def write_figures(frame: pd.DataFrame, report: dict, folder: Path) -> None:
    """The same views as PNG figures, for the MLflow run."""
    figures.plot_age_scatter(frame["age"], frame["pred_age"], folder / "age_scatter.png")
    figures.plot_confusion(np.asarray(report["confusion_matrix"]), folder / "gender_confusion.png")
    by_bucket = by_bucket_table(report)
    for metric in figures.BUCKET_METRICS:
        figures.plot_by_bucket(by_bucket, metric, folder / f"{metric}_by_age_bucket.png")
