"""Every figure draws the data it is given (read back from its matplotlib Figure), and every
figure writer saves that figure as a PNG at the path it is given."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba
from PIL import Image

from utkface.scoring.figures import (
    _caption,
    age_scatter_figure,
    by_bucket_figure,
    confusion_figure,
    learning_curves_figure,
    plot_age_scatter,
    plot_by_bucket,
    plot_confusion,
    plot_learning_curves,
    plot_sample_grid,
    sample_grid_figure,
)

BUCKETS = pd.DataFrame(
    {
        "age_bucket": ["0-2", "3-9", "70+"],
        "age_mae": [1.5, 3.2, 9.8],
        "gender_accuracy": [0.55, 0.7, 0.9],
        "n": [12, 40, 3],
    }
)
GRID = {
    "true_age": [34, 5, 70, 21, 45, 60],
    "true_gender": [1, 0, 0, 1, 1, 0],
    "pred_age": [31.2, 7.9, 55.0, 25.4, 44.1, 58.0],
    "p_female": [0.93, 0.2, 0.6, 0.4, 0.99, 0.01],
}


def history() -> pd.DataFrame:
    epochs = np.arange(1, 6)
    return pd.DataFrame(
        {
            "epoch": epochs,
            "loss": 10 / epochs,
            "val_loss": 11 / epochs,
            "age_mae": 12 / epochs,
            "val_age_mae": 13 / epochs,
            "gender_accuracy": 1 - 0.5 / epochs,
            "val_gender_accuracy": 1 - 0.6 / epochs,
            "learning_rate": 0.001,  # extra columns are ignored
        }
    )


def test_age_scatter_draws_every_face_the_diagonal_and_the_mae() -> None:
    age = np.array([10.0, 30.0, 50.0, 70.0])
    predicted = np.array([12.0, 27.0, 50.0, 80.0])  # errors 2, 3, 0, 10: MAE 3.75
    (ax,) = age_scatter_figure(age, predicted).axes
    (points,) = ax.collections
    np.testing.assert_array_equal(points.get_offsets(), np.column_stack([age, predicted]))
    (diagonal,) = ax.lines
    np.testing.assert_allclose(diagonal.get_xdata(), [0.0, 84.0])  # from 0 to 5 % past 80
    np.testing.assert_allclose(diagonal.get_ydata(), diagonal.get_xdata())
    assert ax.get_xlim() == ax.get_ylim() == pytest.approx((0.0, 84.0))
    assert ax.get_title() == "Age: predicted vs true (MAE 3.75 years)"


def test_confusion_shows_the_matrix_and_a_count_in_every_cell() -> None:
    cm = [[40, 10], [5, 45]]
    fig = confusion_figure(cm)
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), cm)
    cells = {(t.get_position(), t.get_text()) for t in ax.texts}
    assert cells == {((0, 0), "40"), ((1, 0), "10"), ((0, 1), "5"), ((1, 1), "45")}
    dark = {t.get_text() for t in ax.texts if t.get_color() == "white"}
    assert dark == {"40", "45"}  # above half the largest count: white on dark blue
    assert [t.get_text() for t in ax.get_xticklabels()] == ["male", "female"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["male", "female"]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted", "true")


@pytest.mark.parametrize("metric", ["age_mae", "gender_accuracy"])
def test_by_bucket_draws_one_bar_per_bucket_labelled_with_its_faces(metric: str) -> None:
    (ax,) = by_bucket_figure(BUCKETS, metric).axes
    (bars,) = ax.containers
    assert [bar.get_height() for bar in bars] == BUCKETS[metric].tolist()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0-2", "3-9", "70+"]
    assert [t.get_text() for t in ax.texts] == ["n=12", "n=40", "n=3"]
    assert (
        ax.get_title()
        == {
            "age_mae": "age MAE (years) by age bucket",
            "gender_accuracy": "gender accuracy by age bucket",
        }[metric]
    )


def test_sample_grid_shows_each_face_with_its_caption_and_blanks_the_rest() -> None:
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    axes = sample_grid_figure(images, *GRID.values(), cols=4).axes
    assert len(axes) == 8  # two rows of four, the last two empty
    for ax, image in zip(axes, images, strict=False):
        np.testing.assert_array_equal(ax.images[0].get_array(), image)
    assert [len(ax.images) for ax in axes[6:]] == [0, 0]
    assert not any(ax.axison for ax in axes)  # faces without frames or ticks
    assert [ax.get_title() for ax in axes[:6]] == [
        "true 34 F / pred 31 F (0.93)",
        "true 5 M / pred 8 M (0.80)",
        "true 70 M / pred 55 F (0.60)",
        "true 21 F / pred 25 M (0.60)",
        "true 45 F / pred 44 F (0.99)",
        "true 60 M / pred 58 M (0.99)",
    ]
    red = [ax.title.get_color() == "red" for ax in axes[:6]]
    assert red == [False, False, True, True, False, False]  # the wrong genders


def test_caption_shows_probability_of_predicted_gender() -> None:
    assert _caption(34, 1, 31.2, 0.93) == "true 34 F / pred 31 F (0.93)"
    assert _caption(50, 1, 47.6, 0.2) == "true 50 F / pred 48 M (0.80)"


def test_learning_curves_plot_train_and_val_per_epoch_in_three_panels() -> None:
    table = history()
    axes = learning_curves_figure(table).axes
    assert [ax.get_title() for ax in axes] == ["total loss", "age MAE (years)", "gender accuracy"]
    for ax, metric in zip(axes, ["loss", "age_mae", "gender_accuracy"], strict=True):
        train, val = ax.lines
        assert (train.get_label(), val.get_label()) == ("train", "val")
        for line, column in ((train, metric), (val, f"val_{metric}")):
            np.testing.assert_array_equal(line.get_xdata(), table["epoch"])
            np.testing.assert_allclose(line.get_ydata(), table[column])


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize(
    ("name", "write", "size"),
    [
        ("age.png", lambda p: plot_age_scatter([10, 30, 50], [12, 27, 55], p), (550, 550)),
        ("confusion.png", lambda p: plot_confusion([[40, 10], [5, 45]], p), (450, 400)),
        ("bucket.png", lambda p: plot_by_bucket(BUCKETS, "age_mae", p), (700, 400)),
        ("curves.png", lambda p: plot_learning_curves(history(), p), (1300, 380)),
        (
            "grid.png",
            lambda p: plot_sample_grid(
                np.zeros((6, 32, 32, 3), np.uint8), *GRID.values(), p, cols=4
            ),
            (880, 480),
        ),
    ],
)
def test_writers_save_the_figure_as_a_png_creating_folders(
    tmp_path: Path, name: str, write, size: tuple[int, int]
) -> None:
    path = tmp_path / "nested" / name
    assert write(path) == path
    pixels = _png(path)
    assert pixels.shape[1::-1] == size  # the figure's inches at 100 dpi
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10  # something drawn, not blank


def test_the_confusion_png_shows_the_dark_cells_of_the_figure(tmp_path: Path) -> None:
    pixels = _png(plot_confusion([[90, 0], [0, 90]], tmp_path / "cm.png"))
    darkest_blue = np.asarray(to_rgba("#08306b")[:3]) * 255  # Blues at its maximum
    distance = np.abs(pixels.astype(float) - darkest_blue).sum(axis=2)
    assert (distance < 10).sum() > 1_000  # the two full cells are painted
