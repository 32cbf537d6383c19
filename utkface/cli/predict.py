"""`utkface predict PATH...`: age and gender of image files, through the registered pyfunc."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from mlflow.exceptions import MlflowException

from utkface.data.labels import IMAGE_SUFFIXES
from utkface.inference.client import (
    InputLimits,
    PredictError,
    find_images,
    format_table,
    load_model,
    predict_files,
    synthetic_warning,
)

ALL_ANSWERED, NONE_ANSWERED, SOME_FAILED = 0, 1, 3  # 2: invalid params.yaml or arguments
EXIT_CODES = (
    f"exit status: {ALL_ANSWERED} every input answered; {SOME_FAILED} some inputs failed (their "
    f"rows give the error, the others are answered); {NONE_ANSWERED} nothing answered (no model, "
    "no image, or every input failed); 2 invalid params.yaml or arguments"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXIT_CODES
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
        help="print a JSON list of {path, age, age_low, age_high, gender, p_female, face_check, "
        "error} (with --detect-faces also face and box)",
    )
    parser.add_argument(
        "--detect-faces",
        action="store_true",
        help="find the faces in each image (OpenCV Haar cascade) and predict each face's "
        "UTKFace-style crop; for photos that are not tight face crops",
    )


def exit_status(answered: int, failed: int) -> int:
    """The exit status (`EXIT_CODES`) of a run that answered and failed these many inputs."""
    if not answered:
        return NONE_ANSWERED
    return SOME_FAILED if failed else ALL_ANSWERED


def run(args: argparse.Namespace) -> int:
    """Every row printed; the exit status says whether all, some or none were answered."""
    files, missing = find_images(args.paths)
    if not files:
        for entry in missing:
            print(f"predict: {entry.path}: {entry.error}", file=sys.stderr)
        print(f"predict: no {'/'.join(IMAGE_SUFFIXES)} image to predict", file=sys.stderr)
        return NONE_ANSWERED
    try:
        model = load_model(args.model, args.model_name)
        limits = InputLimits.of(model)
        if warning := synthetic_warning(limits):
            print(f"predict: warning: {warning}", file=sys.stderr)
        predicted = predict_files(model, files, limits, detect=args.detect_faces)
    except (PredictError, MlflowException) as error:
        print(f"predict: {error}", file=sys.stderr)
        return NONE_ANSWERED
    predictions = sorted([*missing, *predicted], key=lambda p: p.path)
    if args.json:
        hidden = () if args.detect_faces else ("face", "box")
        entries = [{k: v for k, v in asdict(p).items() if k not in hidden} for p in predictions]
        print(json.dumps(entries, indent=2))
    else:
        print(format_table(predictions, with_faces=args.detect_faces))
    failed = sum(p.error is not None for p in predictions)
    print(f"predict: {len(predictions) - failed} predicted, {failed} failed", file=sys.stderr)
    return exit_status(len(predictions) - failed, failed)
