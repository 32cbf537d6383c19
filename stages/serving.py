"""The served model: an MLflow pyfunc from base64 images to age, gender and p(female).

Input: a DataFrame with one string column `image` holding base64-encoded JPEG/PNG/... bytes.
Output: `age` (years, clamped to [0, 116]), `gender` ("male"/"female"), `p_female`. Every image
goes through `stages.imaging.load_image`, the preprocessing of training, so the served model sees
exactly the pixels it was trained on.

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
from importlib import metadata
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from PIL import Image

from stages.evaluation import clamp_ages, gender_labels
from stages.imaging import MAX_PIXELS, ImageError, load_image
from stages.labels import AGE_MAX, GENDERS
from stages.model import AGE, GENDER

IMAGE = "image"
P_FEMALE = "p_female"
ERROR = "error"
ON_ERROR = "on_error"
ON_ERROR_MODES = ("raise", "report")
KERAS_ARTIFACT = "keras_model"
SERVING_MODEL_NAME = "serving_model"
PREDICT_BATCH = 64
STAGES_DIR = Path(__file__).resolve().parent

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


def predict_images(model: keras.Model, images: np.ndarray | Sequence[np.ndarray]) -> pd.DataFrame:
    """age (clamped), gender and p_female of uint8 (n, S, S, 3) images, in input order."""
    batch = np.asarray(images)
    ages, p_female = [], []
    for start in range(0, len(batch), PREDICT_BATCH):
        outputs = model.predict_on_batch(batch[start : start + PREDICT_BATCH].astype(np.float32))
        ages.append(np.asarray(outputs[AGE], dtype=float).reshape(-1))
        p_female.append(np.asarray(outputs[GENDER], dtype=float).reshape(-1))
    age = clamp_ages(np.concatenate(ages) if ages else np.zeros(0), 0, AGE_MAX)
    p = np.concatenate(p_female) if p_female else np.zeros(0)
    return pd.DataFrame(
        {AGE: age, GENDER: np.asarray(GENDERS, dtype=object)[gender_labels(p)], P_FEMALE: p}
    )


class AgeGenderModel(mlflow.pyfunc.PythonModel):
    """The pyfunc behind the registered model; its settings live in the model config."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        config = context.model_config
        self.image_size = int(config["image_size"])
        self.max_image_bytes = int(config["max_image_bytes"])
        self.max_pixels = int(config["max_pixels"])
        self.model = keras.saving.load_model(context.artifacts[KERAS_ARTIFACT], compile=False)

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
        predicted = predict_images(self.model, np.stack(images) if images else empty)
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


def _pip_requirements() -> list[str]:
    """Pinned to this environment; explicit, because inferring them loads TensorFlow again."""
    names = ["mlflow", "keras", "pillow", "numpy", "pandas", "scikit-learn", "pydantic", "pyyaml"]
    names.append("tensorflow-cpu" if _installed("tensorflow-cpu") else "tensorflow")
    return [f"{name}=={metadata.version(name)}" for name in names]


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def log_serving_model(
    keras_model_path: Path | str,
    image_size: int,
    max_image_bytes: int,
    input_example_images: np.ndarray | Sequence[np.ndarray],
    max_pixels: int = MAX_PIXELS,
    name: str = SERVING_MODEL_NAME,
) -> ModelInfo:
    """Log the pyfunc wrapping `keras_model_path` to the active MLflow run.

    `input_example_images` are a few uint8 (S, S, 3) arrays; they are sent as base64 PNGs, and
    MLflow checks that the example serves. The `stages` package travels with the model
    (`code_paths`), so it loads from any working directory.
    """
    examples = [to_base64(encode_png(image)) for image in input_example_images]
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=AgeGenderModel(),
        artifacts={KERAS_ARTIFACT: str(keras_model_path)},
        model_config={
            "image_size": image_size,
            "max_image_bytes": max_image_bytes,
            "max_pixels": max_pixels,
        },
        code_paths=[str(STAGES_DIR)],
        signature=SIGNATURE,
        input_example=pd.DataFrame({IMAGE: examples}),
        pip_requirements=_pip_requirements(),
    )
