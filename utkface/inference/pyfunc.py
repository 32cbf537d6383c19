"""The served model: an MLflow pyfunc from base64 images to age, gender and p(female).

Input: a DataFrame with one string column `image` holding base64-encoded JPEG/PNG/... bytes.
Output: `age` (years, clamped to [1, `validate.age_max`] like every prediction), `gender`
("male"/"female"), `p_female`. Every image goes through `utkface.data.imaging.load_image`, the
preprocessing of training, once per model family it carries (`members`), so each sees exactly
the pixels it was trained on: the scratch CNN at its Keras input size; the pretrained head at
the backbone's `face_size`, aligned and turned into face features by the backbone files the
model carries (`utkface.model.face_backbone`). An ensemble averages the families' ages and
probabilities.

This module and the few it imports are all the project code a logged model carries
(`utkface.mlops.pyfunc_logging`): no training, tracking or app code.

Bad rows (not base64, not an image, too large) make the whole request fail with
`INVALID_PARAMETER_VALUE`, which `mlflow models serve` answers with HTTP 400 and a message naming
each bad row. With the parameter `on_error="report"` they get an `error` instead, and the other
rows are still predicted (what `utkface predict` uses).
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from PIL import Image

from utkface.data.imaging import ImageError, load_image
from utkface.data.labels import AGE, GENDER, GENDERS, clamp_ages, gender_labels

if TYPE_CHECKING:
    import keras

    from utkface.model.face_backbone import FaceBackbone

IMAGE = "image"
P_FEMALE = "p_female"
ERROR = "error"
ON_ERROR = "on_error"
ON_ERROR_MODES = ("raise", "report")
BACKBONE_ARTIFACT = "face_backbone"
SYNTHETIC_TRAINING = "synthetic demo set"  # ServingConfig.trained_on of a demo model
SYNTHETIC_WARNING = (
    "this model was trained on the synthetic demo set of cartoon faces: its predictions for "
    "real faces are meaningless (train on real images: utkface use-data, then dvc repro)"
)
PREDICT_BATCH = 64

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", IMAGE)]),
    outputs=Schema(
        [
            ColSpec("double", AGE),
            ColSpec("string", GENDER),
            ColSpec("double", P_FEMALE),
            ColSpec("string", ERROR, required=False),
        ]
    ),
    params=ParamSchema([ParamSpec(ON_ERROR, "string", "raise")]),
)


def too_large(size: int, max_bytes: int) -> str:
    """The refusal of an image over the byte limit, in the served model's and the client's
    words."""
    return f"image of {size} bytes exceeds the limit of {max_bytes}"


def model_artifact(member: str) -> str:
    """The artifact name of one model family's Keras model."""
    return f"{member}_model"


@dataclass(frozen=True)
class ServingConfig:
    """The served model's config (MLflow `model_config`). `image_size` is what clients crop
    faces to: the largest input of its families (the CNN's Keras input, the backbone's
    `face_size`). `trained_on` says which data trained it (e.g. the synthetic demo set)."""

    image_size: int
    max_image_bytes: int
    max_pixels: int
    age_max: int
    members: tuple[str, ...] = ("scratch",)
    face_size: int = 0
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
        raise ImageError(f"expected a base64-encoded image string, got {type(value).__name__}")
    if len(value) > 4 * (max_image_bytes // 3 + 1):  # refuse before decoding a huge payload
        raise ImageError(
            f"image of about {len(value) * 3 // 4} bytes exceeds the limit of {max_image_bytes}"
        )
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError("not valid base64") from None
    if len(data) > max_image_bytes:
        raise ImageError(too_large(len(data), max_image_bytes))
    return data


def input_size(model: keras.Model) -> int:
    """The side of the square images `model` takes."""
    return int(model.input_shape[1])


def model_outputs(model: keras.Model, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unclamped ages and probabilities of female of `model` for its inputs (images or face
    features), in input order."""
    ages, p_female = [], []
    for start in range(0, len(inputs), PREDICT_BATCH):
        batch = np.asarray(inputs[start : start + PREDICT_BATCH], dtype=np.float32)
        outputs = model.predict_on_batch(batch)
        ages.append(np.asarray(outputs[AGE], dtype=float).reshape(-1))
        p_female.append(np.asarray(outputs[GENDER], dtype=float).reshape(-1))
    if not ages:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(ages), np.concatenate(p_female)


def combine(outputs: Sequence[tuple[np.ndarray, np.ndarray]], age_max: int) -> pd.DataFrame:
    """The prediction of one or more families' `model_outputs`: ages (clamped) and
    probabilities averaged, gender the likelier one."""
    age = clamp_ages(np.mean([ages for ages, _ in outputs], axis=0), age_max)
    p = np.mean([p for _, p in outputs], axis=0)
    return pd.DataFrame(
        {AGE: age, GENDER: np.asarray(GENDERS, dtype=object)[gender_labels(p)], P_FEMALE: p}
    )


class AgeGenderModel(mlflow.pyfunc.PythonModel):
    """The pyfunc behind the registered model; its settings live in the model config."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        import keras  # with the model, not the module: clients import it for its wire format

        config = context.model_config
        self.members = tuple(config["members"])
        self.models = {
            member: keras.saving.load_model(
                context.artifacts[model_artifact(member)], compile=False
            )
            for member in self.members
        }
        self.backbone: FaceBackbone | None = None
        if "pretrained" in self.members:
            from utkface.model.face_backbone import BackboneFiles, FaceBackbone

            folder = BackboneFiles(Path(context.artifacts[BACKBONE_ARTIFACT]))
            self.backbone = FaceBackbone(folder)
        # the side of the square image each family is prepared at
        self.sizes = {
            m: int(config["face_size"]) if m == "pretrained" else input_size(model)
            for m, model in self.models.items()
        }
        self.max_image_bytes = int(config["max_image_bytes"])
        self.max_pixels = int(config["max_pixels"])
        self.age_max = int(config["age_max"])
        if config.get("trained_on") == SYNTHETIC_TRAINING:
            logging.getLogger(__name__).warning(SYNTHETIC_WARNING)

    def inputs(self, member: str, images: list[np.ndarray]) -> np.ndarray:
        """What `member`'s Keras model takes for prepared images: the images themselves, or
        their face features."""
        if self.backbone is not None and member == "pretrained":
            return self.backbone.features(images)[0]
        size = self.sizes[member]
        return np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)

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
        images: dict[str, list[np.ndarray]] = {member: [] for member in self.members}
        errors = {}
        for row, value in enumerate(model_input[IMAGE]):
            try:
                data = decode_row(value, self.max_image_bytes)
                prepared = {m: load_image(data, self.sizes[m], self.max_pixels) for m in images}
            except ImageError as error:
                errors[row] = str(error)
                continue
            for member, image in prepared.items():
                images[member].append(image)
        if errors and on_error == "raise":
            reasons = "; ".join(f"row {row}: {reason}" for row, reason in errors.items())
            raise MlflowException(
                f"{len(errors)} of {len(model_input)} input row(s) rejected: {reasons}",
                error_code=INVALID_PARAMETER_VALUE,
            )
        outputs = [
            model_outputs(self.models[m], self.inputs(m, batch)) for m, batch in images.items()
        ]
        predicted = combine(outputs, self.age_max)
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
