"""Logging the served model (`utkface.inference.pyfunc`) to MLflow with its config, its
lineage, exactly the project code it runs, its family's saved model (a head's ONNX graph,
the scratch CNN's Keras file) and the backbone's files: the landmark model (the face check),
manifest and licence notices, and for the head families its ONNX graphs with the feature
outputs exposed (the finetuned family's own age network in place of the package's)."""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models.model import ModelInfo

from utkface import paths, tensorflow_build
from utkface.inference import served_model
from utkface.inference.answering import (
    BACKBONE_ARTIFACT,
    ERROR,
    IMAGE,
    ON_ERROR,
    ROW,
    FaceAnswerer,
    ServingConfig,
    encode_png,
    model_artifact,
    to_base64,
)
from utkface.inference.families import HEADS
from utkface.inference.pyfunc import SIGNATURE, AgeGenderModel
from utkface.mlops.code import copy_code
from utkface.model import face_backbone

SERVING_MODEL_NAME = "serving_model"
PYFUNC_MODULE = AgeGenderModel.__module__
EXAMPLES = 2  # images in the logged input example ...
EXAMPLE_CANDIDATES = 8  # ... the first the model answers of this many


def _pip_requirements(family: str) -> list[str]:
    """What the pyfunc's code imports, pinned to this environment; explicit, because inferring
    them loads the family. Keras and TensorFlow only where a scratch CNN is served."""
    names = ["mlflow", "pillow", "numpy", "pandas", "onnxruntime", "dlib-bin"]
    names += ["opencv-python-headless"]  # the face detector of photos (`inference.faces`)
    if family == "scratch":
        names += ["keras", tensorflow_build.distribution()]
    return [f"{name}=={metadata.version(name)}" for name in names]


def log_serving_model(
    model_folder: Path,
    config: ServingConfig,
    input_example_images: np.ndarray | Sequence[np.ndarray],
    lineage: Mapping[str, Any],
    name: str = SERVING_MODEL_NAME,
) -> ModelInfo:
    """Log the pyfunc serving the saved model of `config.family` in `model_folder`
    (`paths.served_file`) to the active MLflow run.

    `input_example_images` are uint8 (S, S, 3) arrays, sent as base64 PNGs; of the first
    `EXAMPLE_CANDIDATES`, the first `EXAMPLES` that the model answers are its input example
    (`answered_examples`), which MLflow checks by serving it. The model is logged as code
    (`served_model.py`), not as a pickled object. It carries `config` (its `model_config`),
    `lineage` (its metadata: git commit, data version, params...) and, as `code_paths`, only the
    modules the pyfunc imports, so it loads from any working directory.
    """
    candidates = input_example_images[:EXAMPLE_CANDIDATES]
    examples = [to_base64(encode_png(image)) for image in candidates]
    family = config.family
    artifacts = {model_artifact(family): str(paths.served_file(family, model_folder))}
    with tempfile.TemporaryDirectory() as tmp:
        package = copy_code([PYFUNC_MODULE], Path(tmp) / "code")
        finetuned = paths.FINETUNED_AGE_NETWORK.relative_to(paths.MODEL)
        backbone = face_backbone.export(
            face_backbone.package_files(),
            Path(tmp) / "backbone",
            networks=family in HEADS,
            replaced={"age": model_folder / finetuned} if family == "finetuned" else None,
        )
        artifacts[BACKBONE_ARTIFACT] = str(backbone.folder)
        examples = answered_examples(FaceAnswerer(dataclasses.asdict(config), artifacts), examples)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=served_model.__file__,  # models from code: no pickle
            artifacts=artifacts,
            model_config=dataclasses.asdict(config),
            metadata=dict(lineage),
            code_paths=[str(package)],
            signature=SIGNATURE,
            input_example=pd.DataFrame({IMAGE: examples}),
            pip_requirements=_pip_requirements(family),
        )


def answered_examples(answerer: FaceAnswerer, candidates: Sequence[str]) -> list[str]:
    """The first `EXAMPLES` of the base64 images `candidates` that `answerer` answers in its
    default mode, or the first ones if it answers none: an example without a face (UTKFace
    holds a slip of paper labelled 80) would fail MLflow's check and show users a refusal."""
    answers = answerer.predict(pd.DataFrame({IMAGE: list(candidates)}), {ON_ERROR: "report"})
    answered = answers.loc[answers[ERROR].isna(), ROW].unique()
    return [candidates[row] for row in answered[:EXAMPLES]] or list(candidates[:EXAMPLES])
