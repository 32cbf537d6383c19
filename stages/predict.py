"""`utkface predict PATH...`: age and gender of image files, through the registered pyfunc.

The pyfunc (`stages.serving`) decodes and preprocesses every image exactly as training did, so
this module only finds files, reads their bytes and prints what the model says. Unreadable
images get an error entry and the rest are still predicted.

Prediction works on `(label, bytes)` inputs rather than on files, which is where face
detection will hook in: it will turn one file into one input per detected face.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PyFuncModel

from stages import registry, tracking
from stages.model import AGE, GENDER
from stages.params import ParamsError, load_params
from stages.serving import ERROR, IMAGE, ON_ERROR, P_FEMALE, to_base64

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
BATCH = 64


class PredictError(Exception):
    """No model to predict with; the message says how to get one."""


@dataclass(frozen=True)
class Prediction:
    path: str
    age: float | None = None
    gender: str | None = None
    p_female: float | None = None
    error: str | None = None


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


def read_inputs(files: Iterable[Path]) -> tuple[list[tuple[str, bytes]], list[Prediction]]:
    """(label, bytes) of each readable file, and an error entry for each unreadable one."""
    inputs, errors = [], []
    for path in files:
        try:
            inputs.append((str(path), path.read_bytes()))
        except OSError as error:
            errors.append(Prediction(str(path), error=f"cannot read: {error.strerror or error}"))
    return inputs, errors


def predict_inputs(model: PyFuncModel, inputs: Sequence[tuple[str, bytes]]) -> list[Prediction]:
    """Predictions in input order, in batches; bad images get the pyfunc's reason as error."""
    predictions = []
    for start in range(0, len(inputs), BATCH):
        batch = inputs[start : start + BATCH]
        frame = pd.DataFrame({IMAGE: [to_base64(data) for _, data in batch]})
        result = model.predict(frame, params={ON_ERROR: "report"})
        for (label, _), row in zip(batch, result.to_dict("records"), strict=True):
            if row.get(ERROR):
                predictions.append(Prediction(label, error=row[ERROR]))
            else:
                predictions.append(
                    Prediction(label, float(row[AGE]), row[GENDER], float(row[P_FEMALE]))
                )
    return predictions


def load_model(uri: str | None, model_name: str | None) -> PyFuncModel:
    """The pyfunc at `uri`, by default the champion of `model_name` (params' when None)."""
    mlflow.set_tracking_uri(tracking.tracking_uri())
    if uri is None:
        name = model_name or load_params().register_.model_name
        if registry.get_alias_version(registry.registry_client(), name, registry.CHAMPION) is None:
            raise PredictError(
                f"model {name!r} has no {registry.CHAMPION} in {tracking.tracking_uri()}: "
                "train and register one with `dvc repro`, then `utkface promote`"
            )
        uri = registry.champion_uri(name)
    try:
        return mlflow.pyfunc.load_model(uri)
    except (MlflowException, OSError) as error:
        raise PredictError(f"cannot load model {uri}: {error}") from None


def format_table(predictions: Sequence[Prediction]) -> str:
    """One row per image: path, age, gender, p_female, and why when it was not predicted."""
    rows = [("path", "age", "gender", "p_female", "error")]
    rows += [
        (
            p.path,
            "" if p.age is None else f"{p.age:.1f}",
            p.gender or "",
            "" if p.p_female is None else f"{p.p_female:.3f}",
            p.error or "",
        )
        for p in predictions
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="image files, or folders searched for .jpg/.jpeg/.png",
    )
    parser.add_argument(
        "--model",
        metavar="URI",
        help="any pyfunc URI: models:/..., runs:/..., a local path "
        "(default: models:/<model-name>@champion)",
    )
    parser.add_argument(
        "--model-name", help="registered model (default: register.model_name in params.yaml)"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print a JSON list of {path, age, gender, p_female, error}",
    )


def run(args: argparse.Namespace) -> int:
    """0 when at least one image was predicted, 1 otherwise (or when there is no model)."""
    files, missing = find_images(args.paths)
    inputs, unreadable = read_inputs(files)
    if not inputs:
        for entry in [*missing, *unreadable]:
            print(f"predict: {entry.path}: {entry.error}", file=sys.stderr)
        print(f"predict: no {'/'.join(IMAGE_SUFFIXES)} image to predict", file=sys.stderr)
        return 1
    try:
        predicted = predict_inputs(load_model(args.model, args.model_name), inputs)
    except (PredictError, ParamsError, MlflowException) as error:
        print(f"predict: {error}", file=sys.stderr)
        return 1
    predictions = sorted([*missing, *unreadable, *predicted], key=lambda p: p.path)
    if args.json:
        print(json.dumps([asdict(p) for p in predictions], indent=2))
    else:
        print(format_table(predictions))
    failed = sum(p.error is not None for p in predictions)
    print(f"predict: {len(predictions) - failed} predicted, {failed} failed", file=sys.stderr)
    return 0 if failed < len(predictions) else 1
