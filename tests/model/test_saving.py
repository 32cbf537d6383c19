"""Saving a Keras model without its save time (`utkface.model.saving`): the same weights give
the same bytes, so `dvc.lock` changes only when the model does, and the file loads as Keras'."""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import keras
import numpy as np

from utkface.model.saving import save_model


def _model(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((4,), name="features"), keras.layers.Dense(3, name="dense")]
    return keras.Sequential(layers, name="m")  # its config shares a dtype policy by id


def test_the_same_weights_give_the_same_bytes(tmp_path: Path) -> None:
    first = save_model(_model(0), tmp_path / "first.keras")
    time.sleep(1.1)  # Keras stamps saves to the second
    second = save_model(_model(0), tmp_path / "second.keras")
    assert first.read_bytes() == second.read_bytes()
    other = save_model(_model(1), tmp_path / "other.keras")
    assert other.read_bytes() != first.read_bytes()
    with zipfile.ZipFile(first) as archive:
        assert b"date_saved" not in archive.read("metadata.json")
        assert b'"shared_object_id": 0' in archive.read("config.json")  # not an address


def test_it_loads_as_keras_saved_it(tmp_path: Path) -> None:
    model = _model(2)
    loaded = keras.saving.load_model(save_model(model, tmp_path / "m.keras"))
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
