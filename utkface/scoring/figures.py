"""PNG figures for the evaluate and train stages (and their MLflow runs).

Each `plot_*` function takes data and an output path, writes a PNG and returns the path; the
`*_figure` function of the same name builds the matplotlib Figure it saves, so what is drawn can
be read back. Figures are built with matplotlib's object API on an explicit Agg canvas, so
nothing depends on (or changes) the pyplot backend or its global figure registry, and no figure
outlives its call.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import ArrayLike
from sklearn.metrics import mean_absolute_error

from utkface.data.labels import GENDERS, gender_labels

DPI = 100


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    FigureCanvasAgg(fig).print_png(path)
    return path


def plot_age_scatter(age: ArrayLike, pred_age: ArrayLike, path: str | Path) -> Path:
    """Predicted against true age, with the ideal y = x line and the MAE in the title."""
    return _save(age_scatter_figure(age, pred_age), path)


def age_scatter_figure(age: ArrayLike, pred_age: ArrayLike) -> Figure:
    """The figure of `plot_age_scatter`."""
    age, pred_age = np.asarray(age, dtype=float), np.asarray(pred_age, dtype=float)
    fig = Figure(figsize=(5.5, 5.5), dpi=DPI)
    ax = fig.add_subplot()
    ax.scatter(age, pred_age, s=8, alpha=0.4, edgecolors="none")
    low, high = min(age.min(), pred_age.min(), 0.0), max(age.max(), pred_age.max(), 1.0) * 1.05
    ax.plot([low, high], [low, high], color="black", linestyle="--", linewidth=1, label="y = x")
    ax.set(xlim=(low, high), ylim=(low, high), aspect="equal")
    ax.set(xlabel="true age (years)", ylabel="predicted age (years)")
    mae = mean_absolute_error(age, pred_age)
    ax.set_title(f"Age: predicted vs true (MAE {mae:.2f} years)")
    ax.legend(loc="upper left")
    return fig


def plot_confusion(
    cm: Sequence[Sequence[int]] | np.ndarray, path: str | Path, labels: Sequence[str] = GENDERS
) -> Path:
    """Confusion matrix (rows = true, columns = predicted) with the count in every cell."""
    return _save(confusion_figure(cm, labels), path)


def confusion_figure(
    cm: Sequence[Sequence[int]] | np.ndarray, labels: Sequence[str] = GENDERS
) -> Figure:
    """The figure of `plot_confusion`."""
    cm = np.asarray(cm, dtype=int)
    fig = Figure(figsize=(4.5, 4), dpi=DPI)
    ax = fig.add_subplot()
    image = ax.imshow(cm, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax)
    ticks = np.arange(len(labels))
    ax.set(xticks=ticks, yticks=ticks, xticklabels=labels, yticklabels=labels)
    ax.set(xlabel="predicted", ylabel="true", title="Gender confusion matrix")
    half = cm.max() / 2
    for (row, col), count in np.ndenumerate(cm):
        color = "white" if count > half else "black"
        ax.text(col, row, str(count), ha="center", va="center", color=color, fontsize=12)
    return fig


BUCKET_METRICS = {"age_mae": "age MAE (years)", "gender_accuracy": "gender accuracy"}


def plot_by_bucket(table: pd.DataFrame, metric: str, path: str | Path) -> Path:
    """`metric` ('age_mae' or 'gender_accuracy') per true-age bucket of a `by_bucket_table`,
    one bar per bucket labelled with its number of test faces."""
    return _save(by_bucket_figure(table, metric), path)


def by_bucket_figure(table: pd.DataFrame, metric: str) -> Figure:
    """The figure of `plot_by_bucket`."""
    label = BUCKET_METRICS[metric]
    fig = Figure(figsize=(7, 4), dpi=DPI)
    ax = fig.add_subplot()
    bars = ax.bar(table["age_bucket"].tolist(), table[metric].to_numpy(dtype=float))
    ax.bar_label(bars, labels=[f"n={n}" for n in table["n"]], fontsize=8)
    ax.margins(y=0.12)
    ax.set(xlabel="true age bucket (years)", ylabel=label, title=f"{label} by age bucket")
    return fig


def _caption(true_age: float, true_gender: int, pred_age: float, p_female: float) -> str:
    """'true 34 F / pred 31 F (0.93)': the number is the probability of the predicted gender."""
    predicted = int(gender_labels(p_female))
    confidence = p_female if predicted else 1 - p_female
    true_letter, letter = (GENDERS[g][0].upper() for g in (int(true_gender), predicted))
    return f"true {true_age:.0f} {true_letter} / pred {pred_age:.0f} {letter} ({confidence:.2f})"


def plot_sample_grid(
    images: np.ndarray,
    true_age: ArrayLike,
    true_gender: ArrayLike,
    pred_age: ArrayLike,
    p_female: ArrayLike,
    path: str | Path,
    cols: int = 4,
) -> Path:
    """Faces (uint8, shape (n, S, S, 3)) in a grid, captioned 'true 34 F / pred 31 F (0.93)';
    the caption is red where the predicted gender is wrong."""
    figure = sample_grid_figure(images, true_age, true_gender, pred_age, p_female, cols)
    return _save(figure, path)


def sample_grid_figure(
    images: np.ndarray,
    true_age: ArrayLike,
    true_gender: ArrayLike,
    pred_age: ArrayLike,
    p_female: ArrayLike,
    cols: int = 4,
) -> Figure:
    """The figure of `plot_sample_grid`."""
    rows = -(-len(images) // cols)
    fig = Figure(figsize=(cols * 2.2, rows * 2.4), dpi=DPI)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes:
        ax.axis("off")
    faces = zip(images, true_age, true_gender, pred_age, p_female, strict=True)
    for ax, (image, age, gender, pred, p) in zip(axes, faces, strict=False):
        ax.imshow(image)
        wrong = int(gender_labels(p)) != int(gender)
        ax.set_title(_caption(age, gender, pred, p), fontsize=7, color="red" if wrong else "black")
    return fig


LEARNING_PANELS = (
    ("loss", "total loss"),
    ("age_mae", "age MAE (years)"),
    ("gender_accuracy", "gender accuracy"),
)


def plot_learning_curves(history: pd.DataFrame, path: str | Path) -> Path:
    """Training against validation per epoch: total loss, age MAE and gender accuracy."""
    return _save(learning_curves_figure(history), path)


def learning_curves_figure(history: pd.DataFrame) -> Figure:
    """The figure of `plot_learning_curves`."""
    fig = Figure(figsize=(13, 3.8), dpi=DPI)
    for ax, (metric, label) in zip(fig.subplots(1, 3), LEARNING_PANELS, strict=True):
        ax.plot(history["epoch"], history[metric], marker="o", markersize=3, label="train")
        ax.plot(history["epoch"], history[f"val_{metric}"], marker="o", markersize=3, label="val")
        ax.set(xlabel="epoch", ylabel=label, title=label)
        ax.legend()
    return fig
