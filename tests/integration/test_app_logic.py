"""The web app's logic without a browser: the model card from the registry, per-face and
whole-image predictions on a tiny real model."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
from mlflow.models.model import ModelInfo
from model_fixtures import (
    IMAGE_SIZE,
    MODEL_NAME,
    log_tiny_serving_model,
    register_version,
    scratch_reference,
    use_tmp_store,
)
from PIL import Image

from utkface.app import logic
from utkface.data.imaging import prepare_image
from utkface.inference.answering import encode_png
from utkface.inference.client import InputLimits, PredictError
from utkface.mlops import registry

APP_BYTES = 1_000_000


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelInfo]:
    with pytest.MonkeyPatch.context() as patch:
        root = tmp_path_factory.mktemp("app_logic")
        use_tmp_store(patch, root)
        # answers that differ by image, and room for the app's sample photos
        info = log_tiny_serving_model(root, max_image_bytes=APP_BYTES, varied=True)
        register_version(info, age_mae=7.5, gender_accuracy=0.85, data_version="d-42")
        registry.registry_client().set_registered_model_alias(MODEL_NAME, registry.CHAMPION, "1")
        yield info


def test_the_card_pins_the_champion_and_shows_its_tags(champion: ModelInfo) -> None:
    card = logic.model_card(registry.champion_uri(MODEL_NAME))
    assert card.uri == f"models:/{MODEL_NAME}/1"
    assert (card.version, card.alias, card.run_id) == ("1", "champion", champion.run_id)
    assert (card.age_mae, card.gender_accuracy, card.data_version) == (7.5, 0.85, "d-42")
    assert "Intended use" in card.description
    assert "Limits" in card.description
    assert champion.run_id in card.version_description
    assert logic.model_card(f"models:/{MODEL_NAME}/1").version == "1"
    assert logic.model_card(champion.model_uri).version is None  # loaded as it is


def test_no_champion_says_how_to_get_one(champion: ModelInfo) -> None:
    with pytest.raises(PredictError, match=r"`dvc repro`.*`utkface promote`"):
        logic.model_card(registry.champion_uri("never-registered"))
    with pytest.raises(PredictError, match="cannot read"):
        logic.model_card(f"models:/{MODEL_NAME}/9")


def test_faces_then_the_whole_image(champion: ModelInfo) -> None:
    model, limits = logic.load_model(logic.model_card(champion.model_uri).uri)
    assert (limits.image_size, limits.max_image_bytes) == (IMAGE_SIZE, APP_BYTES)
    row = logic.sample_images()["Synthetic faces: three in a row"]
    predictions = logic.predict_faces(model, encode_png(row))
    assert [p.face for p in predictions] == [1, 2, 3]
    assert [p.error for p in predictions] == [None] * 3
    # the reference: each reported box (a square) at the model's input size, through Keras
    photo = Image.fromarray(row)
    crops = []
    for prediction in predictions:
        left, top, side, height = prediction.box
        assert side == height
        crops.append(prepare_image(photo.crop((left, top, left + side, top + side)), IMAGE_SIZE))
    assert_like(predictions, scratch_reference(champion.model_uri, np.stack(crops)))
    assert len({round(p.age, 3) for p in predictions}) == 3  # three faces, three answers
    blank = encode_png(np.full((120, 200, 3), 90, dtype=np.uint8))
    assert logic.predict_faces(model, blank) == []
    whole = logic.predict_whole(model, blank)
    assert whole.box == (40, 0, 120, 120)  # the centre square the model sees
    # a flat grey image is flat grey at any size: the model sees exactly this
    seen = np.full((1, IMAGE_SIZE, IMAGE_SIZE, 3), 90, dtype=np.uint8)
    assert_like([whole], scratch_reference(champion.model_uri, seen))


def assert_like(predictions: list, expected: pd.DataFrame) -> None:
    """The app's predictions are the reference answers, in order."""
    assert [p.gender for p in predictions] == expected["gender"].tolist()
    for name in ("age", "age_low", "age_high", "p_female"):
        actual = [getattr(p, name) for p in predictions]
        assert actual == pytest.approx(expected[name].tolist(), rel=1e-5), name


def test_the_upload_limit_is_the_models() -> None:
    limits = InputLimits(image_size=200, max_image_bytes=5_000_000, max_pixels=25_000_000)
    assert logic.upload_limit(limits) == (
        5,
        "JPEG or PNG, at most 5,000,000 bytes and 25,000,000 pixels: the model refuses larger "
        "images.",
    )
    assert logic.upload_limit(InputLimits(64, 5_000_001, 10_000))[0] == 6  # never below it
    assert logic.upload_limit(InputLimits(64, 1_000, 10_000))[0] == 1
