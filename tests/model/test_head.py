"""The pretrained family's head (`utkface.model.head`) on made-up features: age bins, outputs,
the saved form, and that it learns."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest

from utkface.data.dataset import SplitData
from utkface.model.fitting import fit
from utkface.model.head import (
    AGE_BINS,
    AgeBinCrossentropy,
    age_bin_centres,
    build_head,
    serving_head,
)
from utkface.params import HeadParams, ModelParams, TrainParams

AGES = np.array([1, 2, 3, 5, 8, 13, 21, 26, 30, 34, 45, 60, 75, 90], dtype=np.float32)


def features(n: int, seed: int) -> SplitData:
    """Features from which age and gender can be read (plus noise dimensions)."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(1, 80, n).astype(np.float32)
    gender = rng.integers(0, 2, n).astype(np.float32)
    x = rng.normal(size=(n, 20)).astype(np.float32)
    x[:, 0] = age / 10 + rng.normal(0, 0.3, n)
    x[:, 1] = 3 * gender - 1.5 + rng.normal(0, 0.5, n)
    return SplitData(x * 5 + 100, age, gender, pd.DataFrame({"row": range(n)}))


def test_age_bins_are_the_mean_ages_of_quantile_bins() -> None:
    centres = age_bin_centres(AGES, 4)
    assert len(centres) == 4
    assert (np.diff(centres) > 0).all()
    assert AGES.min() <= centres[0] and centres[-1] <= AGES.max()
    assert len(age_bin_centres(np.full(50, 30.0, np.float32), 12)) == 1  # no empty bins


def test_the_age_output_is_the_mean_of_the_bin_distribution() -> None:
    data = features(64, seed=0)
    head = build_head(HeadParams(age_bins=5), data.images, data.age, seed=0)
    out = head.predict(data.images[:8], verbose=0)
    centres = head.get_layer("age").get_weights()[0][:, 0]
    np.testing.assert_allclose(out["age"][:, 0], out[AGE_BINS] @ centres, rtol=1e-5)
    assert not head.get_layer("age").trainable
    np.testing.assert_allclose(out[AGE_BINS].sum(axis=1), 1.0, rtol=1e-5)
    # the gender output is the sigmoid of its logit, computed here from the hidden layer
    hidden = keras.Model(head.input, head.get_layer("gender").input).predict(
        data.images[:8], verbose=0
    )
    kernel, bias = head.get_layer("gender").get_weights()
    expected = 1 / (1 + np.exp(-(hidden.astype(float) @ kernel + bias)))
    np.testing.assert_allclose(out["gender"], expected, rtol=1e-5)


def test_the_bin_loss_targets_the_nearest_centre() -> None:
    loss = AgeBinCrossentropy([5.0, 20.0, 50.0])
    right = np.array([[0.0, 0.98, 0.02]], dtype=np.float32)
    wrong = np.array([[0.98, 0.01, 0.01]], dtype=np.float32)
    near_20 = np.array([[24.0]], dtype=np.float32)
    assert float(loss(near_20, right)) < 0.1 < float(loss(near_20, wrong))
    assert AgeBinCrossentropy.from_config(loss.get_config()).centres == [5.0, 20.0, 50.0]


def test_the_saved_head_has_only_age_and_gender(tmp_path) -> None:
    data = features(64, seed=1)
    head = serving_head(build_head(HeadParams(), data.images, data.age, seed=0))
    head.save(tmp_path / "head.keras")
    loaded = keras.saving.load_model(tmp_path / "head.keras", compile=False)  # stock layers only
    assert sorted(loaded.output) == ["age", "gender"]
    np.testing.assert_allclose(
        loaded.predict(data.images, verbose=0)["age"], head.predict(data.images, verbose=0)["age"]
    )


@pytest.mark.slow
def test_the_head_learns_age_and_gender_from_features() -> None:
    train, val = features(600, seed=2), features(200, seed=3)
    cfg = ModelParams(head=HeadParams(units=32, dropout=0.1, epochs=15))
    _, history = fit(cfg, TrainParams(batch_size=32), 0.003, train, val, 0, 15, member="pretrained")
    baseline = float(np.abs(val.age - np.median(train.age)).mean())  # about 20 years
    assert history["val_age_mae"][-1] < baseline / 2
    assert history["val_gender_accuracy"][-1] > 0.8
    assert len(history["loss"]) == 15  # no early stopping: every epoch of the cosine decay
