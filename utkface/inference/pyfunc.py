"""The served model: an MLflow pyfunc from base64 images to age (with its interval), gender,
p(female) and a face check.

Input: a DataFrame with one string column `image` holding base64-encoded JPEG/PNG/... bytes.
Output: `age` (years, clamped to [1, `validate.age_max`] like every prediction), `age_low` and
`age_high` (the interval that holds the true age `coverage` of the time, calibrated on the
validation split: `utkface.scoring.age_interval`), `gender` ("male"/"female"), `p_female`, and
`face_check` ("ok", or "implausible" when dlib's landmarks do not look like a frontal face: the
answer is then about something that may not be a usable face).

Every image goes through `utkface.data.imaging.load_image`, the preprocessing of training (EXIF
orientation applied), at the input size of the family it carries (`family`), so it sees exactly
the pixels it was trained on: the scratch CNN at its Keras input size; a head at the backbone's
`face_size`, aligned and turned into face features by the backbone files the model carries
(`utkface.model.face_backbone`). The family runs as `utkface.inference.families` loads it: a
head on ONNX Runtime (no TensorFlow), the scratch CNN on Keras.

This module and the few it imports are all the project code a logged model carries
(`utkface.inference.pyfunc_logging`): no training, tracking or app code.

Bad rows (not base64, not an image, too large) make the whole request fail with
`INVALID_PARAMETER_VALUE`, which `mlflow models serve` answers with HTTP 400 and a message naming
each bad row. With the parameter `on_error="report"` they get an `error` instead, and the other
rows are still predicted (what `utkface predict` uses). An image that decodes but shows no
usable face is answered, with `face_check` "implausible".
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from PIL import Image

from utkface.data.imaging import ImageError, load_image
from utkface.data.labels import AGE, GENDER
from utkface.data.rejections import Category
from utkface.inference.families import (
    AGE_HIGH,
    AGE_LOW,
    HEADS,
    P_FEMALE,
    KerasCnn,
    load_family,
    to_answers,
)
from utkface.model.face_backbone import BackboneFiles, FaceBackbone, Landmarks
from utkface.scoring.age_interval import AgeInterval

IMAGE = "image"
FACE_CHECK = "face_check"
FACE_OK, FACE_IMPLAUSIBLE = "ok", "implausible"
ERROR = "error"
ON_ERROR = "on_error"
ON_ERROR_MODES = ("raise", "report")
BACKBONE_ARTIFACT = "face_backbone"
SYNTHETIC_TRAINING = "synthetic demo set"  # ServingConfig.trained_on of a demo model
SYNTHETIC_WARNING = (
    "this model was trained on the synthetic demo set of cartoon faces: its predictions for "
    "real faces are meaningless (train on real images: utkface use-data, then dvc repro)"
)

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", IMAGE)]),
    outputs=Schema(
        [
            ColSpec("double", AGE),
            ColSpec("double", AGE_LOW),
            ColSpec("double", AGE_HIGH),
            ColSpec("string", GENDER),
            ColSpec("double", P_FEMALE),
            ColSpec("string", FACE_CHECK),
            ColSpec("string", ERROR, required=False),
        ]
    ),
    params=ParamSchema([ParamSpec(ON_ERROR, "string", "raise")]),
)
ANSWER_COLUMNS = [name for name in SIGNATURE.outputs.input_names() if name != ERROR]


def too_large(size: int, max_bytes: int) -> str:
    """The refusal of an image over the byte limit, in the served model's and the client's
    words."""
    return f"image of {size} bytes exceeds the limit of {max_bytes}"


def model_artifact(member: str) -> str:
    """The artifact name of one model family's saved model."""
    return f"{member}_model"


@dataclass(frozen=True)
class ServingConfig:
    """The served model's config (MLflow `model_config`). `image_size` is what clients crop
    faces to: the input of its `family` (the CNN's Keras input, or the backbone's `face_size`,
    at which the face check also looks). `age_interval` is `AgeInterval.to_config()`.
    `trained_on` says which data trained it (e.g. the synthetic demo set)."""

    image_size: int
    max_image_bytes: int
    max_pixels: int
    age_max: int
    age_interval: dict[str, Any]
    face_size: int
    family: str = "scratch"
    trained_on: str = ""


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 (S, S, 3) array: lossless, so it decodes to the same pixels."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def to_base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode_row(value: Any, max_image_bytes: int) -> bytes:
    """One request cell (base64 string) to image bytes; raises `ImageError`."""
    if not isinstance(value, str):
        raise ImageError(
            f"expected a base64-encoded image string, got {type(value).__name__}",
            Category.NOT_AN_IMAGE,
        )
    if len(value) > 4 * (max_image_bytes // 3 + 1):  # refuse before decoding a huge payload
        raise ImageError(
            f"image of about {len(value) * 3 // 4} bytes exceeds the limit of {max_image_bytes}",
            Category.TOO_LARGE,
        )
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError("not valid base64", Category.NOT_AN_IMAGE) from None
    if len(data) > max_image_bytes:
        raise ImageError(too_large(len(data), max_image_bytes), Category.TOO_LARGE)
    return data


class AgeGenderModel(mlflow.pyfunc.PythonModel):
    """The pyfunc behind the registered model; its settings live in the model config."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        config = context.model_config
        family = config["family"]
        self.model = load_family(family, Path(context.artifacts[model_artifact(family)]))
        files = BackboneFiles(Path(context.artifacts[BACKBONE_ARTIFACT]))
        self.backbone = FaceBackbone(files) if family in HEADS else None
        self.landmarks = self.backbone.landmarks if self.backbone else Landmarks(files)
        self.face_size = int(config["face_size"])
        # the side of the square image the family is prepared at
        self.size = self.model.input_size if isinstance(self.model, KerasCnn) else self.face_size
        self.max_image_bytes = int(config["max_image_bytes"])
        self.max_pixels = int(config["max_pixels"])
        self.age_max = int(config["age_max"])
        self.interval = AgeInterval.from_config(config["age_interval"])
        if config.get("trained_on") == SYNTHETIC_TRAINING:
            logging.getLogger(__name__).warning(SYNTHETIC_WARNING)

    def answer(self, images: dict[int, list[np.ndarray]]) -> pd.DataFrame:
        """The answers for prepared images (by side), in order."""
        faces = images[self.face_size]
        if not faces:
            return pd.DataFrame(columns=ANSWER_COLUMNS)
        if self.backbone is not None:
            features, geometry = self.backbone.features(faces)
            plausible = geometry & self.landmarks.detected(faces)
            outputs = self.model(features)
        else:
            plausible = self.landmarks.plausible(faces)
            outputs = self.model(np.stack(images[self.size]))
        answers = to_answers(outputs, self.age_max, self.interval)
        answers[FACE_CHECK] = np.where(plausible, FACE_OK, FACE_IMPLAUSIBLE).astype(object)
        return answers[ANSWER_COLUMNS]

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        on_error = (params or {}).get(ON_ERROR, "raise")
        if on_error not in ON_ERROR_MODES:
            raise MlflowException(
                f"{ON_ERROR} must be one of {ON_ERROR_MODES}, got {on_error!r}",
                error_code=INVALID_PARAMETER_VALUE,
            )
        if IMAGE not in model_input.columns:
            raise MlflowException(
                f"input needs a column {IMAGE!r} of base64-encoded images, "
                f"got columns {list(model_input.columns)}",
                error_code=INVALID_PARAMETER_VALUE,
            )
        sides = {self.face_size, self.size}
        images: dict[int, list[np.ndarray]] = {side: [] for side in sides}
        errors = {}
        for row, value in enumerate(model_input[IMAGE]):
            try:
                data = decode_row(value, self.max_image_bytes)
                prepared = {side: load_image(data, side, self.max_pixels) for side in sides}
            except ImageError as error:
                errors[row] = str(error)
                continue
            for side, image in prepared.items():
                images[side].append(image)
        if errors and on_error == "raise":
            reasons = "; ".join(f"row {row}: {reason}" for row, reason in errors.items())
            raise MlflowException(
                f"{len(errors)} of {len(model_input)} input row(s) rejected: {reasons}",
                error_code=INVALID_PARAMETER_VALUE,
            )
        predicted = self.answer(images)
        if on_error == "raise":
            return predicted
        return _with_errors(predicted, errors, len(model_input))


def _with_errors(predicted: pd.DataFrame, errors: dict[int, str], rows: int) -> pd.DataFrame:
    """The predicted rows back in place among the rejected ones, each with its `error`; absent
    values are None (JSON null, where NaN would not be valid JSON)."""
    good = iter(predicted.to_dict("records"))
    records = [
        {ERROR: errors[i]} if i in errors else {**next(good), ERROR: None} for i in range(rows)
    ]
    frame = pd.DataFrame.from_records(records, columns=[*predicted.columns, ERROR]).astype(object)
    return frame.where(frame.notna(), None)
