"""The served model: an MLflow pyfunc from base64 images to age, gender and p(female).

Input: a DataFrame with one string column `image` holding base64-encoded JPEG/PNG/... bytes.
Output: `age` (years, clamped to [1, `validate.age_max`] like every prediction), `gender`
("male"/"female"), `p_female`. Every image goes through `utkface.data.imaging.load_image`, the
preprocessing of training, at the input size of the Keras model itself, so the served model sees
exactly the pixels it was trained on.

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
from collections.abc import Sequence
from dataclasses import dataclass
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

IMAGE = "image"
P_FEMALE = "p_female"
ERROR = "error"
ON_ERROR = "on_error"
ON_ERROR_MODES = ("raise", "report")
KERAS_ARTIFACT = "keras_model"
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


@dataclass(frozen=True)
class ServingConfig:
    """The served model's config (MLflow `model_config`): its input size, read from the Keras
    model when it is logged (clients crop faces to it), and what it refuses or clamps to."""

    image_size: int
    max_image_bytes: int
    max_pixels: int
    age_max: int


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 (S, S, 3) array: lossless, so it decodes to the same pixels."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def to_base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode_row(value: Any, image_size: int, max_image_bytes: int, max_pixels: int) -> np.ndarray:
    """One request cell (base64 string) to the model's input array; raises `ImageError`."""
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
        raise ImageError(f"image of {len(data)} bytes exceeds the limit of {max_image_bytes}")
    return load_image(data, image_size, max_pixels)


def input_size(model: keras.Model) -> int:
    """The side of the square images `model` takes."""
    return int(model.input_shape[1])


def predict_images(
    model: keras.Model, images: np.ndarray | Sequence[np.ndarray], age_max: int
) -> pd.DataFrame:
    """age (clamped), gender and p_female of uint8 (n, S, S, 3) images, in input order."""
    batch = np.asarray(images)
    ages, p_female = [], []
    for start in range(0, len(batch), PREDICT_BATCH):
        outputs = model.predict_on_batch(batch[start : start + PREDICT_BATCH].astype(np.float32))
        ages.append(np.asarray(outputs[AGE], dtype=float).reshape(-1))
        p_female.append(np.asarray(outputs[GENDER], dtype=float).reshape(-1))
    age = clamp_ages(np.concatenate(ages) if ages else np.zeros(0), age_max)
    p = np.concatenate(p_female) if p_female else np.zeros(0)
    return pd.DataFrame(
        {AGE: age, GENDER: np.asarray(GENDERS, dtype=object)[gender_labels(p)], P_FEMALE: p}
    )


class AgeGenderModel(mlflow.pyfunc.PythonModel):
    """The pyfunc behind the registered model; its settings live in the model config."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        import keras  # with the model, not the module: clients import it for its wire format

        self.model = keras.saving.load_model(context.artifacts[KERAS_ARTIFACT], compile=False)
        config = context.model_config
        self.image_size = input_size(self.model)
        self.max_image_bytes = int(config["max_image_bytes"])
        self.max_pixels = int(config["max_pixels"])
        self.age_max = int(config["age_max"])

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
        images, errors = [], {}
        for row, value in enumerate(model_input[IMAGE]):
            try:
                images.append(
                    decode_row(value, self.image_size, self.max_image_bytes, self.max_pixels)
                )
            except ImageError as error:
                errors[row] = str(error)
        if errors and on_error == "raise":
            reasons = "; ".join(f"row {row}: {reason}" for row, reason in errors.items())
            raise MlflowException(
                f"{len(errors)} of {len(model_input)} input row(s) rejected: {reasons}",
                error_code=INVALID_PARAMETER_VALUE,
            )
        empty = np.zeros((0, self.image_size, self.image_size, 3), dtype=np.uint8)
        predicted = predict_images(self.model, np.stack(images) if images else empty, self.age_max)
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
