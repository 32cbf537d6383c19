"""What the web app (`utkface app`, page in `utkface/app/page.py`) does, as plain functions:
find which registered version answers, load it, offer sample images, predict each face the
model finds and draw the boxes with their labels.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import matplotlib
import numpy as np
from mlflow.exceptions import MlflowException
from PIL import Image, ImageDraw, ImageFont
from skimage import data

from utkface.app import MODEL_ENV
from utkface.data.synthetic import draw_face
from utkface.inference import client
from utkface.inference.answering import FACE_OK, NO_FACE
from utkface.inference.client import (
    AnsweringModel,
    Input,
    InputLimits,
    PredictError,
    Prediction,
    age_range,
    predict_inputs,
)
from utkface.mlops import registry, store
from utkface.params import load_params

_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))/?$")
# matplotlib's bundled DejaVu Sans has the "≈" that Pillow's default font lacks
_FONT = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans-Bold.ttf"
BOX_COLOR = (255, 214, 0)
MIN_DRAWN = 480  # px: narrower images are drawn enlarged


@dataclass(frozen=True)
class ModelCard:
    """Which model answers: a pinned URI to load and what the registry says about it."""

    uri: str
    name: str | None = None
    version: str | None = None
    alias: str | None = None
    run_id: str | None = None
    age_mae: float | None = None
    gender_accuracy: float | None = None
    data_version: str | None = None
    description: str = ""  # the registered model's: intended use and limits
    version_description: str = ""


def default_model_uri() -> str:
    """`--model` as passed by `utkface app`, else the champion named in params.yaml."""
    return os.environ.get(MODEL_ENV) or registry.champion_uri(_registered_model_name())


@cache
def _registered_model_name() -> str:
    """params.yaml's model name, parsed once per app process (Streamlit re-runs the page
    script, not the process, on every interaction)."""
    return load_params(only=("register",)).register_.model_name


def model_card(uri: str) -> ModelCard:
    """The card of the model at `uri`. A registered version (`models:/name@alias` or
    `models:/name/N`) is pinned to its version number and described from its tags; any other
    URI is loaded as it is. Raises `PredictError` when the alias or version does not exist."""
    match = _MODELS_URI.match(uri)
    if match is None:
        return ModelCard(uri=uri)
    name, alias, number = match["name"], match["alias"], match["version"]
    client = registry.registry_client()
    try:
        if alias is None:
            version = client.get_model_version(name, number)
        elif (version := registry.get_alias_version(client, name, alias)) is None:
            raise PredictError(
                f"model {name!r} has no {alias} in {store.tracking_uri()} yet: train and "
                "register one with `dvc repro`, then make it the champion with `utkface promote`"
            )
        model = client.get_registered_model(name)
    except MlflowException as error:
        raise PredictError(f"cannot read {uri} from {store.tracking_uri()}: {error}") from None
    tags = version.tags
    return ModelCard(
        uri=f"models:/{name}/{version.version}",
        name=name,
        version=str(version.version),
        alias=alias,
        run_id=version.run_id,
        age_mae=_float(tags.get(registry.AGE_MAE)),
        gender_accuracy=_float(tags.get(registry.GENDER_ACCURACY)),
        data_version=tags.get("data_version"),
        description=model.description or "",
        version_description=version.description or "",
    )


def _float(value: str | None) -> float | None:
    return None if value is None else float(value)


def upload_limit(limits: InputLimits) -> tuple[int, str]:
    """The uploader's limit in whole megabytes (Streamlit's unit, rounded up: the model's exact
    byte limit is checked when the upload is decoded) and the sentence the page shows before
    anything is uploaded."""
    megabytes = max(1, math.ceil(limits.max_image_bytes / 1_000_000))
    return megabytes, (
        f"JPEG or PNG, at most {limits.max_image_bytes:,} bytes and {limits.max_pixels:,} pixels: "
        "the model refuses larger images."
    )


def load_model(uri: str) -> tuple[AnsweringModel, InputLimits]:
    """The pyfunc at `uri` and the input limits of its config; `PredictError` when it fails."""
    model = client.load_model(uri, None)
    return model, InputLimits.of(model)


def sample_images() -> dict[str, np.ndarray]:
    """Images to try without uploading: a public-domain photo and synthetic faces (the
    project's cartoon generator); never UTKFace images."""
    woman = np.asarray(draw_face(34, 1, 0, np.random.default_rng(3)))
    man = np.asarray(draw_face(58, 0, 3, np.random.default_rng(8)))
    girl = np.asarray(draw_face(9, 1, 2, np.random.default_rng(6)))
    gap = np.full((200, 40, 3), 235, dtype=np.uint8)
    return {
        "Astronaut Eileen Collins (NASA photo, public domain; scikit-image)": data.astronaut(),
        "Synthetic face: woman, 34": woman,
        "Synthetic faces: three in a row": np.hstack([gap, woman, gap, man, gap, girl, gap]),
    }


def predict_faces(model: AnsweringModel, data: bytes) -> list[Prediction]:
    """One prediction per face of an image's bytes, left to right, as the model finds them
    (a tight crop is one face); none when the model finds no face."""
    predictions = predict_inputs(model, [Input("image", data)])
    return [] if [p.error for p in predictions] == [NO_FACE] else predictions


def predict_whole(model: AnsweringModel, data: bytes) -> Prediction:
    """The prediction on the whole image, whose centre square is what the model sees."""
    (prediction,) = predict_inputs(model, [Input("image", data)], faces="crop")
    return prediction


def label(prediction: Prediction) -> str:
    """E.g. "age ≈ 34 (27-41), female p=0.93", the age's interval in brackets and p the
    probability of the gender shown; "not a clear face" is added when the face check fails."""
    if prediction.error or prediction.age is None or prediction.p_female is None:
        return f"not predicted: {prediction.error}"
    p = prediction.p_female if prediction.gender == "female" else 1 - prediction.p_female
    text = f"age ≈ {prediction.age:.0f} ({age_range(prediction)}), {prediction.gender} p={p:.2f}"
    return text if prediction.face_check == FACE_OK else f"{text}, not a clear face"


@cache
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(_FONT), size)


def annotate(image: np.ndarray, predictions: list[Prediction]) -> Image.Image:
    """The image with each prediction's box and label drawn on it; small images are enlarged
    (by a whole factor, up to `MIN_DRAWN` px wide) so that the labels stay legible."""
    canvas = Image.fromarray(image).convert("RGB")
    scale = max(1, MIN_DRAWN // canvas.width)
    canvas = canvas.resize((canvas.width * scale, canvas.height * scale), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(canvas)
    font = _font(max(12, min(canvas.size) // 28))
    width = max(2, min(canvas.size) // 160)
    for prediction in predictions:
        if prediction.box is None:
            continue
        x, y, w, h = (scale * v for v in prediction.box)
        draw.rectangle((x, y, x + w, y + h), outline=BOX_COLOR, width=width)
        text = label(prediction)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        text_y = y - (bottom - top) - 3 * width if y > bottom - top + 3 * width else y + h
        text_x = min(max(0, x), max(0, canvas.width - (right - left) - 2 * width))
        draw.rectangle(
            (text_x, text_y, text_x + right - left + 2 * width, text_y + bottom + 2 * width),
            fill=BOX_COLOR,
        )
        draw.text((text_x + width, text_y + width), text, font=font, fill=(0, 0, 0))
    return canvas
