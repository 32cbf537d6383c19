"""Predicting through the registered pyfunc: what `utkface predict` and the web app call.

The pyfunc (`utkface.inference.pyfunc`) decodes and preprocesses every image exactly as training
did, so this module only finds files, reads their bytes and collects what the model says.
Unreadable images get an error entry and the rest are still predicted.

Prediction works on `Input`s (a label and image bytes) rather than on files: with face
detection, one file becomes one input per face found by `utkface.inference.faces`, each the
face's UTKFace-style crop.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PyFuncModel
from PIL import Image

from utkface.data.imaging import ImageError, decode_image, prepare_image
from utkface.data.labels import AGE, GENDER, IMAGE_SUFFIXES
from utkface.data.rejections import Category
from utkface.inference import faces
from utkface.inference.families import AGE_HIGH, AGE_LOW, P_FEMALE
from utkface.inference.pyfunc import (
    ERROR,
    FACE_CHECK,
    IMAGE,
    ON_ERROR,
    SYNTHETIC_TRAINING,
    SYNTHETIC_WARNING,
    encode_png,
    to_base64,
    too_large,
)
from utkface.mlops import registry, tracking
from utkface.params import load_params

BATCH = 64
PYFUNC_LOGGER = "utkface.inference.pyfunc"  # the served model's module, as its copy loads
NO_FACE = "no face found; run without --detect-faces to predict on the whole image"


class PredictError(Exception):
    """No model to predict with; the message says how to get one."""


@dataclass(frozen=True)
class Input:
    """Image bytes to predict; for a detected face, its number (1 = leftmost) and its detection
    box (x, y, w, h) in the file's pixels."""

    path: str
    data: bytes
    face: int | None = None
    box: faces.Box | None = None


@dataclass(frozen=True)
class Prediction:
    """One answer: the age with its interval (`age_low`..`age_high`, see the served model's
    `utkface.inference.pyfunc`), gender, p(female) and the face check; or the `error`."""

    path: str
    age: float | None = None
    age_low: float | None = None
    age_high: float | None = None
    gender: str | None = None
    p_female: float | None = None
    face_check: str | None = None
    error: str | None = None
    face: int | None = None
    box: faces.Box | None = None


@dataclass(frozen=True)
class InputLimits:
    """What the served model accepts (its model config): input size and the refusal limits,
    and what it was trained on."""

    image_size: int
    max_image_bytes: int
    max_pixels: int
    trained_on: str = ""

    @classmethod
    def of(cls, model: PyFuncModel) -> InputLimits:
        config = model.model_config
        try:
            return cls(
                int(config["image_size"]),
                int(config["max_image_bytes"]),
                int(config["max_pixels"]),
                str(config.get("trained_on", "")),
            )
        except (KeyError, TypeError, ValueError):
            raise PredictError(
                f"the model's config {config!r} lacks image_size/max_image_bytes/max_pixels: "
                "not a model logged by this project"
            ) from None


def synthetic_warning(limits: InputLimits) -> str | None:
    """The warning to show with a model trained on the synthetic demo set, else None."""
    return SYNTHETIC_WARNING if limits.trained_on == SYNTHETIC_TRAINING else None


def find_images(paths: Iterable[Path]) -> tuple[list[Path], list[Prediction]]:
    """Files given by name (whatever their suffix) and .jpg/.jpeg/.png files under folders,
    recursively and sorted; paths that do not exist come back as errors."""
    files, missing = [], []
    for path in paths:
        if path.is_dir():
            files += sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
        elif path.is_file():
            files.append(path)
        else:
            missing.append(Prediction(str(path), error="no such file or folder"))
    return files, missing


def read_input(path: Path, max_bytes: int) -> Input | Prediction:
    """The file's bytes as an input, or an error entry: unreadable, or larger than `max_bytes`
    (seen by `stat` before reading, and never more than `max_bytes` + 1 bytes read, should the
    file grow meanwhile)."""
    try:
        size = path.stat().st_size
        if size <= max_bytes:
            with path.open("rb") as handle:
                data = handle.read(max_bytes + 1)
            if len(data) <= max_bytes:
                return Input(str(path), data)
            size = len(data)
    except OSError as error:
        return Prediction(str(path), error=f"cannot read: {error.strerror or error}")
    return Prediction(str(path), error=too_large(size, max_bytes))


def predict_files(
    model: PyFuncModel, files: Sequence[Path], limits: InputLimits, detect: bool = False
) -> list[Prediction]:
    """Every file predicted (each detected face with `detect`), reading `BATCH` files at a
    time, so memory holds one batch of images whatever the number of files."""
    predictions: list[Prediction] = []
    for start in range(0, len(files), BATCH):
        read = [read_input(path, limits.max_image_bytes) for path in files[start : start + BATCH]]
        inputs = [item for item in read if isinstance(item, Input)]
        predictions += [item for item in read if isinstance(item, Prediction)]
        if detect:
            inputs, undetected = detect_face_inputs(inputs, limits)
            predictions += undetected
        predictions += predict_inputs(model, inputs)
    return predictions


def decode_rgb(data: bytes, limits: InputLimits) -> np.ndarray:
    """The RGB uint8 pixels of image bytes, refused (`ImageError`) where the model would."""
    if len(data) > limits.max_image_bytes:
        raise ImageError(too_large(len(data), limits.max_image_bytes), Category.TOO_LARGE)
    return np.asarray(decode_image(data, limits.max_pixels).convert("RGB"))


def face_inputs(path: str, image: np.ndarray, image_size: int) -> list[Input]:
    """One input per face detected in an RGB image: its crop, at the model's input size."""
    boxes = faces.detect_faces(image)
    return [
        Input(path, encode_png(prepare_image(Image.fromarray(crop), image_size)), face, box)
        for face, (box, crop) in enumerate(
            zip(boxes, faces.crop_faces(image, boxes), strict=True), start=1
        )
    ]


def detect_face_inputs(
    inputs: Iterable[Input], limits: InputLimits
) -> tuple[list[Input], list[Prediction]]:
    """The faces of each input image; images that do not decode or show no face are errors."""
    found, errors = [], []
    for item in inputs:
        try:
            image = decode_rgb(item.data, limits)
        except ImageError as error:
            errors.append(Prediction(item.path, error=str(error)))
            continue
        crops = face_inputs(item.path, image, limits.image_size)
        found += crops
        if not crops:
            errors.append(Prediction(item.path, error=NO_FACE))
    return found, errors


def predict_inputs(model: PyFuncModel, inputs: Sequence[Input]) -> list[Prediction]:
    """Predictions in input order, in batches; bad images get the pyfunc's reason as error."""
    predictions = []
    for start in range(0, len(inputs), BATCH):
        batch = inputs[start : start + BATCH]
        frame = pd.DataFrame({IMAGE: [to_base64(item.data) for item in batch]})
        result = model.predict(frame, params={ON_ERROR: "report"})
        for item, row in zip(batch, result.to_dict("records"), strict=True):
            where = {"face": item.face, "box": item.box}
            if row.get(ERROR):
                predictions.append(Prediction(item.path, error=row[ERROR], **where))
            else:
                answer = {k: float(row[k]) for k in (AGE, AGE_LOW, AGE_HIGH, P_FEMALE)}
                answer |= {GENDER: row[GENDER], FACE_CHECK: row[FACE_CHECK]}
                predictions.append(Prediction(item.path, **answer, **where))
    return predictions


def load_model(uri: str | None, model_name: str | None) -> PyFuncModel:
    """The pyfunc at `uri`, by default the champion of `model_name` (params' when None)."""
    tracking.check_store()
    mlflow.set_tracking_uri(tracking.tracking_uri())
    if uri is None:
        name = model_name or load_params(only=("register",)).register_.model_name
        if registry.get_alias_version(registry.registry_client(), name, registry.CHAMPION) is None:
            raise PredictError(
                f"model {name!r} has no {registry.CHAMPION} in {tracking.tracking_uri()}: "
                "train and register one with `dvc repro`, then `utkface promote`"
            )
        uri = registry.champion_uri(name)
    # the model logs its synthetic-set warning as it loads (for `utkface serve`); predict and
    # the app say it themselves (`synthetic_warning`), once
    model_logger = logging.getLogger(PYFUNC_LOGGER)
    level = model_logger.level
    model_logger.setLevel(logging.ERROR)
    try:
        return mlflow.pyfunc.load_model(uri)
    except (MlflowException, OSError, ImportError) as error:  # ImportError: see KerasCnn
        raise PredictError(f"cannot load model {uri}: {error}") from None
    finally:
        model_logger.setLevel(level)


def age_range(prediction: Prediction) -> str:
    """The age interval in whole years, e.g. "24-39"; empty when not predicted."""
    if prediction.age_low is None or prediction.age_high is None:
        return ""
    return f"{prediction.age_low:.0f}-{prediction.age_high:.0f}"


def format_table(predictions: Sequence[Prediction], with_faces: bool = False) -> str:
    """One row per image (per face `with_faces`, adding its number and box x,y,w,h): path,
    age and its interval, gender, p_female, the face check, and why when it was not
    predicted."""
    rows = [
        (
            "path",
            *(("face", "box") if with_faces else ()),
            *("age", "interval", "gender", "p_female", "face_check", "error"),
        )
    ]
    for p in predictions:
        where = (str(p.face or ""), ",".join(map(str, p.box or ()))) if with_faces else ()
        rows.append(
            (
                p.path,
                *where,
                "" if p.age is None else f"{p.age:.1f}",
                age_range(p),
                p.gender or "",
                "" if p.p_female is None else f"{p.p_female:.3f}",
                p.face_check or "",
                p.error or "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
