"""Predicting through the registered pyfunc: what `utkface predict` and the web app call.

The pyfunc (`utkface.inference.pyfunc`) decodes and preprocesses every image exactly as training
did and finds its faces, so this module only finds files, reads their bytes and collects what
the model says: one `Prediction` per face, or per file that got none (with its error).
Unreadable images get an error entry and the rest are still predicted.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from utkface.data.imaging import ImageError, decode_image
from utkface.data.labels import AGE, GENDER, IMAGE_SUFFIXES
from utkface.data.rejections import Category
from utkface.inference import local_model
from utkface.inference.answering import (
    BOX,
    ERROR,
    FACE,
    FACE_CHECK,
    FACE_MODES,
    FACES,
    IMAGE,
    ON_ERROR,
    ROW,
    SYNTHETIC_TRAINING,
    SYNTHETIC_WARNING,
    THREADS,
    FaceAnswerer,
    InvalidInput,
    to_base64,
    too_large,
)
from utkface.inference.faces import Box
from utkface.inference.families import AGE_HIGH, AGE_LOW, P_FEMALE
from utkface.mlops import store
from utkface.params import load_params

BATCH = 64


class PredictError(Exception):
    """No model to predict with (the message says how to get one), or one that refused the
    request."""


class AnsweringModel(Protocol):
    """What predicting needs of a served model: `local_model.LocalModel` or
    `mlflow_model.MlflowModel`."""

    @property
    def model_config(self) -> dict[str, Any]: ...

    def predict(
        self, data: pd.DataFrame, params: Mapping[str, Any] | None = None
    ) -> pd.DataFrame: ...


@dataclass(frozen=True)
class Input:
    """Image bytes to predict, and where they came from."""

    path: str
    data: bytes


@dataclass(frozen=True)
class Prediction:
    """One answer: the age with its interval (`age_low`..`age_high`, see the served model's
    `utkface.inference.pyfunc`), gender, p(female) and the face check, for the face numbered
    `face` (1 = leftmost) in the square `box` (x, y, w, h) of the upright image; or the
    `error` of a file that got no answer."""

    path: str
    age: float | None = None
    age_low: float | None = None
    age_high: float | None = None
    gender: str | None = None
    p_female: float | None = None
    face_check: str | None = None
    error: str | None = None
    face: int | None = None
    box: Box | None = None


@dataclass(frozen=True)
class InputLimits:
    """What the served model accepts (its model config): input size and the refusal limits,
    and what it was trained on."""

    image_size: int
    max_image_bytes: int
    max_pixels: int
    trained_on: str = ""

    @classmethod
    def of(cls, model: AnsweringModel) -> InputLimits:
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
    model: AnsweringModel,
    files: Sequence[Path],
    limits: InputLimits,
    faces: str = FACE_MODES[0],
) -> list[Prediction]:
    """Every face of every file (`faces`: the served model's mode), reading `BATCH` files at a
    time, so memory holds one batch of images whatever the number of files."""
    predictions: list[Prediction] = []
    for start in range(0, len(files), BATCH):
        read = [read_input(path, limits.max_image_bytes) for path in files[start : start + BATCH]]
        predictions += [item for item in read if isinstance(item, Prediction)]
        predictions += predict_inputs(
            model, [item for item in read if isinstance(item, Input)], faces
        )
    return predictions


def decode_rgb(data: bytes, limits: InputLimits) -> np.ndarray:
    """The upright RGB uint8 pixels of image bytes, refused (`ImageError`) where the model
    would."""
    if len(data) > limits.max_image_bytes:
        raise ImageError(too_large(len(data), limits.max_image_bytes), Category.TOO_LARGE)
    return np.asarray(decode_image(data, limits.max_pixels).convert("RGB"))


def predict_inputs(
    model: AnsweringModel, inputs: Sequence[Input], faces: str = FACE_MODES[0]
) -> list[Prediction]:
    """One prediction per face (`faces`: the served model's mode) of the inputs, in input
    order, in batches; an input that got no answer gets the pyfunc's reason as error."""
    predictions = []
    for start in range(0, len(inputs), BATCH):
        batch = inputs[start : start + BATCH]
        frame = pd.DataFrame({IMAGE: [to_base64(item.data) for item in batch]})
        try:
            result = model.predict(frame, params={ON_ERROR: "report", FACES: faces})
        except InvalidInput as error:
            raise PredictError(f"the model refused the request: {error}") from None
        if ROW not in result.columns:
            raise PredictError(
                "the model answers one row per image, without the faces found: it was logged "
                "by an older version of this project; train and register a new one (dvc repro)"
            )
        for row in result.to_dict("records"):
            path = batch[int(row[ROW])].path
            if row.get(ERROR):
                predictions.append(Prediction(path, error=row[ERROR]))
                continue
            answer = {k: float(row[k]) for k in (AGE, AGE_LOW, AGE_HIGH, P_FEMALE)}
            answer |= {GENDER: row[GENDER], FACE_CHECK: row[FACE_CHECK]}
            box = tuple(int(row[name]) for name in BOX)
            predictions.append(Prediction(path, **answer, face=int(row[FACE]), box=box))
    return predictions


def load_model(uri: str | None, model_name: str | None, threads: int = 0) -> AnsweringModel:
    """The served model at `uri`, by default the champion of `model_name` (params' when None),
    on `threads` ONNX Runtime threads a graph (0: the model's own setting, one per core). A
    folder on this machine whose code is the installed code is loaded without importing MLflow
    (`local_model`); any other model by MLflow (`mlflow_model`)."""
    if uri is None:
        name = model_name or load_params(only=("register",)).register_.model_name
        uri = store.cached_champion(name) or _champion_from_store(name)
    folder = Path(uri)
    local = folder.is_dir()
    # the model logs its synthetic-set warning as it loads (for `utkface serve`); predict and
    # the app say it themselves (`synthetic_warning`), once
    model_logger = logging.getLogger(FaceAnswerer.__module__)  # also the carried copy's name
    level = model_logger.level
    model_logger.setLevel(logging.ERROR)
    flavor = local_model.pyfunc_flavor(folder) if local else {}
    overrides = {THREADS: threads} if threads else {}
    try:
        model = (_load_here(folder, flavor, overrides) if local else None) or _load_by_mlflow(
            uri, local, overrides
        )
    finally:
        model_logger.setLevel(level)
    if local and (mismatches := environment_mismatches(folder, flavor)):
        logging.getLogger(__name__).warning(
            "the model was logged in another environment: %s", "; ".join(mismatches)
        )
    return model


def _champion_from_store(name: str) -> str:
    """The champion's files as the store says; `PredictError` without one, or when the store
    cannot answer. Imports MLflow: only where the champion is not cached beside the store."""
    from mlflow.exceptions import MlflowException

    from utkface.mlops import registry

    try:
        files = registry.champion_files(name)
    except MlflowException as error:  # a moved store, an unreachable server
        raise PredictError(str(error)) from None
    if files is None:
        raise PredictError(registry.no_champion(name))
    return files


def _load_here(
    folder: Path, flavor: Mapping[str, Any], overrides: Mapping[str, Any]
) -> AnsweringModel | None:
    """`local_model.load`, its failures as `PredictError` (as `_load_by_mlflow`'s)."""
    try:
        return local_model.load(folder, flavor, overrides)
    except (OSError, ImportError) as error:  # ImportError: see KerasCnn
        raise PredictError(f"cannot load model {folder}: {error}") from None


def _load_by_mlflow(uri: str, local: bool, overrides: Mapping[str, Any]) -> AnsweringModel:
    """`mlflow_model.load`, its failures as `PredictError`."""
    from mlflow.exceptions import MlflowException

    from utkface.inference import mlflow_model  # imports MLflow: see local_model

    try:
        return mlflow_model.load(uri, local, overrides)
    except (MlflowException, OSError, ImportError) as error:  # ImportError: see KerasCnn
        raise PredictError(f"cannot load model {uri}: {error}") from None


def environment_mismatches(folder: Path, flavor: Mapping[str, Any]) -> list[str]:
    """How this environment differs from the one the model at `folder` (its `pyfunc_flavor`:
    `flavor`) was logged in: its Python (major.minor) and its pinned requirements
    (`requirements.txt`, `name==version`)."""
    python = flavor.get("python_version")
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    found = [] if str(python).startswith(f"{here}.") else [f"Python {python} (here {here})"]
    requirements = folder / "requirements.txt"
    for line in requirements.read_text().split() if requirements.is_file() else []:
        name, _, pinned = line.partition("==")
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "not installed"
        if pinned and installed != pinned:
            found.append(f"{name}=={pinned} (here {installed})")
    return found


def age_range(prediction: Prediction) -> str:
    """The age interval in whole years, e.g. "24-39"; empty when not predicted."""
    if prediction.age_low is None or prediction.age_high is None:
        return ""
    return f"{prediction.age_low:.0f}-{prediction.age_high:.0f}"


def format_table(predictions: Sequence[Prediction]) -> str:
    """One row per face (or per file that got no answer): path, the face's number and box
    x,y,w,h, age and its interval, gender, p_female, the face check, and why when it was not
    predicted."""
    rows = [("path", "face", "box", "age", "interval", "gender", "p_female", "face_check", "error")]
    for p in predictions:
        rows.append(
            (
                p.path,
                str(p.face or ""),
                ",".join(map(str, p.box or ())),
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
