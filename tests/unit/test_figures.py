"""Every figure writer produces a real, non-trivial PNG at the path it is given."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from utkface.scoring.figures import (
    _caption,
    plot_age_scatter,
    plot_by_bucket,
    plot_confusion,
    plot_learning_curves,
    plot_sample_grid,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(written: Path, expected: Path) -> None:
    assert written == expected
    data = expected.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 5_000


def test_age_scatter(tmp_path):
    rng = np.random.default_rng(0)
    age = rng.integers(1, 90, 200)
    path = tmp_path / "age.png"
    assert_png(plot_age_scatter(age, age + rng.normal(0, 5, 200), path), path)


def test_confusion_creates_missing_folders(tmp_path):
    path = tmp_path / "nested" / "confusion.png"
    assert_png(plot_confusion([[40, 10], [5, 45]], path), path)


@pytest.mark.parametrize("metric", ["age_mae", "gender_accuracy"])
def test_by_bucket(tmp_path, metric):
    table = pd.DataFrame(
        {
            "age_bucket": ["0-2", "3-9", "70+"],
            "age_mae": [1.5, 3.2, 9.8],
            "gender_accuracy": [0.55, 0.7, 0.9],
            "n": [12, 40, 3],
        }
    )
    path = tmp_path / f"{metric}.png"
    assert_png(plot_by_bucket(table, metric, path), path)


def test_sample_grid_with_a_partial_last_row(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    path = tmp_path / "grid.png"
    written = plot_sample_grid(
        images,
        [34, 5, 70, 21, 45, 60],
        [1, 0, 0, 1, 1, 0],
        [31.2, 7.9, 55.0, 25.4, 44.1, 58.0],
        [0.93, 0.2, 0.6, 0.4, 0.99, 0.01],
        path,
        cols=4,
    )
    assert_png(written, path)


def test_caption_shows_probability_of_predicted_gender():
    assert _caption(34, 1, 31.2, 0.93) == "true 34 F / pred 31 F (0.93)"
    assert _caption(50, 1, 47.6, 0.2) == "true 50 F / pred 48 M (0.80)"


def test_learning_curves(tmp_path):
    epochs = np.arange(1, 6)
    history = pd.DataFrame(
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
    path = tmp_path / "curves.png"
    assert_png(plot_learning_curves(history, path), path)
