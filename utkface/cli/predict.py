"""`utkface predict PATH...`: age and gender of every face in image files, through the
registered model: a tight face crop is one face, a photo gives each face found in it."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from utkface.cli.arguments import positive_int
from utkface.data.labels import IMAGE_SUFFIXES
from utkface.inference.client import (
    BATCH,
    FACE_MODES,
    AnsweringModel,
    InputLimits,
    PredictError,
    Prediction,
    find_images,
    format_table,
    load_model,
    predict_files,
    synthetic_warning,
)
from utkface.inference.processes import (
    CHUNKS_PER_PROCESS,
    ChunkAnswerer,
    SharedFiles,
    process_count,
    threads_per_process,
)

ALL_ANSWERED, NONE_ANSWERED, SOME_FAILED = 0, 1, 3  # 2: invalid params.yaml or arguments
EXIT_CODES = (
    f"exit status: {ALL_ANSWERED} every input answered; {SOME_FAILED} some inputs failed (not an "
    "image, or no face found: their rows give the error, the others are answered); "
    f"{NONE_ANSWERED} nothing answered (no model, no image, or every input failed); 2 invalid "
    "params.yaml or arguments"
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
        help="print a JSON list of {path, face, box, age, age_low, age_high, gender, p_female, "
        "face_check, error}, one per face (or per file that got no answer)",
    )
    parser.add_argument(
        "--faces",
        choices=FACE_MODES,
        default=FACE_MODES[0],
        help="auto (default): a tight face crop is one face, any other photo gives each face "
        "found in it (no face: an error); crop: the centre square of each image is one face, "
        "whatever it shows; detect: the faces found in each image, tight crops too",
    )
    parser.add_argument(
        "--jobs",
        type=positive_int,
        metavar="N",
        help=f"processes answering the files (default: one for every {BATCH * CHUNKS_PER_PROCESS} "
        "files, rounded up, up to one per core; "
        "1 on systems other than Linux); each loads its own copy of the model",
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
    processes = process_count(args.jobs, chunks=-(-len(files) // BATCH))
    threads = threads_per_process(processes)

    def load() -> AnsweringModel:
        return load_model(args.model, args.model_name, threads)

    def answerer(model: AnsweringModel) -> ChunkAnswerer[Prediction]:
        limits = InputLimits.of(model)
        return lambda chunk: predict_files(model, chunk, limits, args.faces)

    try:  # the helpers fork before any model loads: see utkface.inference.processes
        with SharedFiles(files, BATCH, processes - 1, lambda: answerer(load())) as shared:
            model = load()
            if warning := synthetic_warning(InputLimits.of(model)):
                print(f"predict: warning: {warning}", file=sys.stderr)
            predicted = shared.answer(answerer(model))
    except PredictError as error:
        print(f"predict: {error}", file=sys.stderr)
        return NONE_ANSWERED
    predictions = sorted([*missing, *predicted], key=lambda p: p.path)
    if args.json:
        print(json.dumps([asdict(p) for p in predictions], indent=2))
    else:
        print(format_table(predictions))
    failed = sum(p.error is not None for p in predictions)
    answered = len(predictions) - failed
    by = f", in {processes} processes" if processes > 1 else ""
    print(f"predict: {answered} predicted, {failed} failed{by}", file=sys.stderr)
    return exit_status(answered, failed)
