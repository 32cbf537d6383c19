"""Each model family's saved model run for inference, and the one rule that turns its outputs
into an answer: what `train` (validation), `evaluate` (test) and the served model all call.

The heads of the pretrained and finetuned families run on ONNX Runtime (`pretrained.onnx`,
`finetuned.onnx`, exported by `train`) on the backbone's face features, so serving them imports
neither TensorFlow nor Keras. The scratch CNN stays a Keras model
(`scratch.keras`): Keras, and with it TensorFlow, is imported only when such a model loads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from utkface.data.labels import (
    AGE,
    AGE_BINS,
    BIN_CENTRES,
    GENDER,
    GENDERS,
    clamp_ages,
    gender_labels,
)
from utkface.scoring.age_interval import AGE_HIGH, AGE_LOW, AgeInterval

P_FEMALE = "p_female"
BATCH = 64
HEADS = ("pretrained", "finetuned")  # the families answering from face features


@dataclass(frozen=True)
class Outputs:
    """One family's unclamped ages and probabilities of female, and the head's age-bin
    probabilities with the bins' centres (None for the CNN)."""

    age: np.ndarray
    p_female: np.ndarray
    age_bins: np.ndarray | None = None
    bin_centres: np.ndarray | None = None


class FamilyModel(Protocol):
    def __call__(self, inputs: np.ndarray) -> Outputs: ...


class OnnxHead:
    """A head's ONNX graph: face features in, outputs out; one session, reused."""

    def __init__(self, path: Path, threads: int = 0) -> None:
        import onnxruntime as ort

        from utkface.model.face_backbone import session_options

        self.session = ort.InferenceSession(
            str(path), sess_options=session_options(threads), providers=["CPUExecutionProvider"]
        )
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.bin_centres = np.asarray(json.loads(metadata[BIN_CENTRES]), dtype=float)

    def __call__(self, inputs: np.ndarray) -> Outputs:
        features = np.ascontiguousarray(inputs, dtype=np.float32)
        age, gender, bins = self.session.run([AGE, GENDER, AGE_BINS], {"features": features})
        return Outputs(
            age.astype(float).ravel(), gender.astype(float).ravel(), bins, self.bin_centres
        )


class KerasCnn:
    """The scratch CNN as Keras saved it; TensorFlow is imported when one loads."""

    def __init__(self, path: Path) -> None:
        from utkface import tensorflow_build

        tensorflow_build.require_tensorflow()
        import keras

        self.model = keras.saving.load_model(path, compile=False)

    @property
    def input_size(self) -> int:
        return int(self.model.input_shape[1])

    def __call__(self, inputs: np.ndarray) -> Outputs:
        ages, p_female = [], []
        for start in range(0, len(inputs), BATCH):
            batch = np.asarray(inputs[start : start + BATCH], dtype=np.float32)
            outputs = self.model.predict_on_batch(batch)
            ages.append(np.asarray(outputs[AGE], dtype=float).reshape(-1))
            p_female.append(np.asarray(outputs[GENDER], dtype=float).reshape(-1))
        if not ages:
            return Outputs(np.zeros(0), np.zeros(0))
        return Outputs(np.concatenate(ages), np.concatenate(p_female))


def load_family(member: str, path: Path, threads: int = 0) -> OnnxHead | KerasCnn:
    """The saved model of `member` at `path` (`paths.served_file`), ready to predict; a head
    on `threads` ONNX Runtime threads (0: one per core)."""
    return OnnxHead(path, threads) if member in HEADS else KerasCnn(path)


def answer_columns(
    outputs: Outputs, age_max: int, interval: AgeInterval | None = None
) -> dict[str, np.ndarray]:
    """A family's answer by column: the age clamped and the gender the likelier one; with
    `interval`, `age_low` and `age_high` too (from the bin probabilities when the interval is
    of that kind)."""
    age = clamp_ages(outputs.age, age_max)
    columns = {
        AGE: age,
        GENDER: np.asarray(GENDERS, dtype=object)[gender_labels(outputs.p_female)],
        P_FEMALE: outputs.p_female,
    }
    if interval is not None:
        bins = outputs.age_bins if interval.kind == "bins" else None
        columns[AGE_LOW], columns[AGE_HIGH] = interval.bounds(age, age_max, bins)
    return columns


def to_answers(outputs: Outputs, age_max: int, interval: AgeInterval | None = None) -> pd.DataFrame:
    """`answer_columns` as a frame."""
    return pd.DataFrame(answer_columns(outputs, age_max, interval))


def calibrate_interval(outputs: Outputs, ages: np.ndarray, age_max: int) -> AgeInterval:
    """The interval of a model from its validation `outputs` and true `ages`: from the bin
    distribution for a head, from residuals for the CNN."""
    predicted = to_answers(outputs, age_max)[AGE]
    if outputs.age_bins is not None:
        return AgeInterval.from_bins(outputs.age_bins, ages, outputs.bin_centres, predicted)
    return AgeInterval.from_residuals(predicted, ages)
