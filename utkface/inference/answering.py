"""Answering images: from base64 images to one answer per face: age (with its interval), gender,
p(female) and a face check. This is the served model's work; `utkface.inference.pyfunc` puts
it behind MLflow's pyfunc interface, and `utkface.inference.local_model` loads it from a
logged model's folder without importing MLflow.

Input: a DataFrame with one string column `image` holding base64-encoded JPEG/PNG/... bytes.
Output: one row per face found, in input order and left to right within an image: `row` (the
input row), `faces` (how many faces that image gave), `face` (1 = leftmost) and `box_x`,
`box_y`, `box_w`, `box_h` (the square answered, in the upright image's pixels), then `age`
(years, clamped to [1, `validate.age_max`] like every prediction), `age_low` and `age_high`
(the interval that holds the true age `coverage` of the time, calibrated on the validation
split: `utkface.scoring.age_interval`), `gender` ("male"/"female"), `p_female`, and
`face_check` ("ok", or "implausible" when the crop may not show a usable face:
`utkface.model.face_backbone.Landmarks`).

Which faces an image gives is the parameter `faces`:
- "auto" (default): a tight face crop, as UTKFace's, is one face, the whole image; any other
  photo gives each face that `utkface.inference.faces` finds in it (its UTKFace-style crop),
  and a photo without a face gives an error, not an answer. The image is a tight crop when it
  is about square (`MAX_CROP_ASPECT`) and its centre square passes the face check with the
  landmarks that alignment places in it, eyes `FILL` of it apart (`Face.tight`): a tight crop
  costs no more than its answer.
- "crop": the centre square of every image is one face, whatever it shows.
- "detect": the faces found in every image, a tight crop included.

Every face goes through `utkface.data.imaging.prepare_image`, the preprocessing of training
(EXIF orientation applied), at the input size of the family it carries (`family`), so it sees
exactly the pixels it was trained on: the scratch CNN at its Keras input size; a head at the
backbone's `face_size`, aligned and turned into face features by the backbone files the model
carries (`utkface.model.face_backbone`). The family runs as `utkface.inference.families` loads
it: a head on ONNX Runtime (no TensorFlow), the scratch CNN on Keras.

Bad rows (not base64, not an image, too large, no face) make the whole request fail with
`InvalidInput` naming each bad row (through MLflow: `INVALID_PARAMETER_VALUE`, which `mlflow
models serve` answers with HTTP 400). With the parameter `on_error="report"` they get one row
with an `error` instead (`faces` 0 where no face was found), and the other rows are still
predicted (what `utkface predict` uses).
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from utkface.data.imaging import (
    ImageError,
    decode_image,
    load_image,
    prepare_image,
    upright_size,
)
from utkface.data.labels import AGE, GENDER
from utkface.data.rejections import Category
from utkface.inference import faces
from utkface.inference.families import (
    AGE_HIGH,
    AGE_LOW,
    HEADS,
    P_FEMALE,
    KerasCnn,
    answer_columns,
    load_family,
)
from utkface.model.face_backbone import (
    BackboneFiles,
    FaceBackbone,
    Landmarks,
    Located,
    fills_crop,
)
from utkface.scoring.age_interval import AgeInterval

IMAGE = "image"
ROW, FACES, FACE = "row", "faces", "face"
BOX = ("box_x", "box_y", "box_w", "box_h")
FACE_CHECK = "face_check"
FACE_OK, FACE_IMPLAUSIBLE = "ok", "implausible"
ERROR = "error"
ON_ERROR = "on_error"
ON_ERROR_MODES = ("raise", "report")
FACE_MODES = ("auto", "crop", "detect")  # the parameter `faces`: see the module
NO_FACE = "no face found (faces=crop answers the whole image anyway)"
MAX_CROP_ASPECT = 1.25  # longer over shorter side of an image that may be a tight face crop
BACKBONE_ARTIFACT = "face_backbone"
THREADS = "threads"  # the model config's entry of ONNX Runtime's threads (`ServingConfig`)
SYNTHETIC_TRAINING = "synthetic demo set"  # ServingConfig.trained_on of a demo model
SYNTHETIC_WARNING = (
    "this model was trained on the synthetic demo set of cartoon faces: its predictions for "
    "real faces are meaningless (train on real images: utkface use-data, then dvc repro)"
)

ANSWER_COLUMNS = [ROW, FACES, FACE, *BOX, AGE, AGE_LOW, AGE_HIGH, GENDER, P_FEMALE, FACE_CHECK]


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
    `trained_on` says which data trained it (e.g. the synthetic demo set). `threads` is ONNX
    Runtime's threads a graph (0: one per core), logged so that a loader may override it, as
    MLflow overrides only the entries a model config has: `utkface predict` runs one a process
    when it answers in several (`utkface.inference.processes`)."""

    image_size: int
    max_image_bytes: int
    max_pixels: int
    age_max: int
    age_interval: dict[str, Any]
    face_size: int
    family: str = "scratch"
    trained_on: str = ""
    threads: int = 0


@dataclass(frozen=True)
class Face:
    """One face to answer: the input `row` it is in, its `number` there (1 = leftmost), the
    square `box` (x, y, w, h) of the upright image it is, its crop at the face size with the
    crop's landmarks and face check (`Landmarks.check`), and the family's input (the crop, or
    for the scratch CNN the face at its input size)."""

    row: int
    number: int
    box: faces.Box
    crop: np.ndarray
    located: Located
    plausible: bool
    family_input: np.ndarray

    def tight(self, face_size: int) -> bool:
        """Whether it is a tight face crop, as UTKFace's: it passes the face check and the
        face fills it."""
        return self.plausible and fills_crop(self.located.points, face_size)


class RowError(Exception):
    """An input row that gets no answer: why, and how many faces were found in it (None when it
    is not an image)."""

    def __init__(self, message: str, found: int | None = None) -> None:
        super().__init__(message)
        self.found = found


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


class InvalidInput(ValueError):
    """A request that cannot be answered: a bad parameter, no image column, or (with
    `on_error="raise"`) a bad row."""


def _param(params: Mapping[str, Any] | None, name: str, choices: tuple[str, ...]) -> str:
    """The parameter `name`, by default the first of its `choices`."""
    value = (params or {}).get(name, choices[0])
    if value not in choices:
        raise InvalidInput(f"{name} must be one of {choices}, got {value!r}")
    return value


class FaceAnswerer:
    """The served model's work, built from its model config (`ServingConfig` as a mapping)
    and its artifacts (name -> local path)."""

    def __init__(self, config: Mapping[str, Any], artifacts: Mapping[str, str]) -> None:
        family = config["family"]
        threads = int(config.get(THREADS, 0))
        self.model = load_family(family, Path(artifacts[model_artifact(family)]), threads)
        files = BackboneFiles(Path(artifacts[BACKBONE_ARTIFACT]))
        self.backbone = FaceBackbone(files, threads) if family in HEADS else None
        self.landmarks = self.backbone.landmarks if self.backbone else Landmarks(files)
        self.face_size = int(config["face_size"])
        # the side of the square image the family is prepared at
        self.size = self.model.input_size if isinstance(self.model, KerasCnn) else self.face_size
        self.max_image_bytes = int(config["max_image_bytes"])
        self.max_pixels = int(config["max_pixels"])
        self.age_max = int(config["age_max"])
        self.interval = AgeInterval.from_config(config["age_interval"])

    @classmethod
    def load(cls, config: Mapping[str, Any], artifacts: Mapping[str, str]) -> FaceAnswerer:
        """The answerer of a served model loaded for use, which warns when it is a demo model
        (an answerer built to check the model as it is logged does not)."""
        answerer = cls(config, artifacts)
        if config.get("trained_on") == SYNTHETIC_TRAINING:
            logging.getLogger(__name__).warning(SYNTHETIC_WARNING)
        return answerer

    def face(
        self,
        row: int,
        number: int,
        box: faces.Box,
        pixels: Image.Image,
        family_input: np.ndarray | None = None,
    ) -> Face:
        """The face of `pixels`, the square `box` of its image, or that image (whose centre
        square `prepare_image` takes), located and checked; the family's input is prepared
        from `pixels` unless given."""
        crop = prepare_image(pixels, self.face_size)
        located = self.landmarks.locate(crop)
        (plausible,) = self.landmarks.check([crop], [located])
        if family_input is None:
            same = self.size == self.face_size
            family_input = crop if same else prepare_image(pixels, self.size)
        return Face(row, number, box, crop, located, bool(plausible), family_input)

    def find_faces(self, row: int, data: bytes, mode: str) -> list[Face]:
        """The faces of one input image in `mode` (see the module); raises `ImageError` and
        `RowError`."""
        if mode != "detect":
            # decoded as training decodes (`load_image`, a reduced JPEG decoding at each input
            # size), so that a tight crop gets the very pixels of training
            pixels = decode_image(data, self.max_pixels, self.face_size)
            width, height = upright_size(data)
            side = min(width, height)
            if mode == "crop" or max(width, height) <= MAX_CROP_ASPECT * side:
                own = self.size != self.face_size
                family_input = load_image(data, self.size, self.max_pixels) if own else None
                centre = ((width - side) // 2, (height - side) // 2, side, side)
                whole = self.face(row, 1, centre, pixels, family_input)
                if mode == "crop" or whole.tight(self.face_size):
                    return [whole]
        image = decode_image(data, self.max_pixels).convert("RGB")
        width, height = image.size
        found = faces.detect_faces(np.asarray(image))
        boxes = [faces.crop_box(box, width, height) for box in found]
        if not boxes:
            raise RowError(NO_FACE, found=0)
        return [
            self.face(row, number, (x, y, w, h), image.crop((x, y, x + w, y + h)))
            for number, (x, y, w, h) in enumerate(boxes, start=1)
        ]

    def answer(self, found: list[Face]) -> pd.DataFrame:
        """The answer rows (`ANSWER_COLUMNS`) of faces, in their order."""
        if not found:
            return pd.DataFrame(columns=ANSWER_COLUMNS)
        crops = [face.crop for face in found]
        located = [face.located for face in found]
        if self.backbone is not None:
            outputs = self.model(self.backbone.located_features(crops, located))
        else:
            outputs = self.model(np.stack([face.family_input for face in found]))
        plausible = [face.plausible for face in found]
        counts = Counter(face.row for face in found)
        # one frame from all columns: adding them one by one cost 2 ms, as much as the networks
        # for one image
        columns = {
            ROW: [face.row for face in found],
            FACES: [counts[face.row] for face in found],
            FACE: [face.number for face in found],
            **{name: [face.box[i] for face in found] for i, name in enumerate(BOX)},
            **answer_columns(outputs, self.age_max, self.interval),
            FACE_CHECK: np.where(plausible, FACE_OK, FACE_IMPLAUSIBLE).astype(object),
        }
        return pd.DataFrame(columns, columns=ANSWER_COLUMNS)

    def predict(
        self, model_input: pd.DataFrame, params: Mapping[str, Any] | None = None
    ) -> pd.DataFrame:
        """The answer rows of base64 images (column `IMAGE`), with `params` `on_error` and
        `faces` (see the module); raises `InvalidInput`."""
        on_error = _param(params, ON_ERROR, ON_ERROR_MODES)
        mode = _param(params, FACES, FACE_MODES)
        if IMAGE not in model_input.columns:
            raise InvalidInput(
                f"input needs a column {IMAGE!r} of base64-encoded images, "
                f"got columns {list(model_input.columns)}"
            )
        found: list[Face] = []
        errors: dict[int, RowError] = {}
        for row, value in enumerate(model_input[IMAGE]):
            try:
                found += self.find_faces(row, decode_row(value, self.max_image_bytes), mode)
            except ImageError as error:
                errors[row] = RowError(str(error))
            except RowError as error:
                errors[row] = error
        if errors and on_error == "raise":
            reasons = "; ".join(f"row {row}: {reason}" for row, reason in errors.items())
            raise InvalidInput(
                f"{len(errors)} of {len(model_input)} input row(s) rejected: {reasons}"
            )
        predicted = self.answer(found)
        if on_error == "raise":
            return predicted
        return _with_errors(predicted, errors)


def _with_errors(predicted: pd.DataFrame, errors: dict[int, RowError]) -> pd.DataFrame:
    """The predicted rows and one row per rejected input row, in input order, each with its
    `error`; absent values are None (JSON null, where NaN would not be valid JSON). Built
    column by column from Python lists: going through records and pandas' missing-value
    replacement cost 4 ms a call, as much as answering one image."""
    columns = {name: predicted[name].tolist() for name in predicted.columns}
    columns[ERROR] = [None] * len(predicted)
    for row, error in errors.items():
        rejected = {ROW: row, FACES: error.found, ERROR: str(error)}
        for name, values in columns.items():
            values.append(rejected.get(name))
    order = sorted(range(len(columns[ROW])), key=columns[ROW].__getitem__)  # stable: faces
    # stay left to right
    return pd.DataFrame(
        {name: [_none_for_nan(values[i]) for i in order] for name, values in columns.items()},
        columns=list(columns),
        dtype=object,
    )


def _none_for_nan(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value
