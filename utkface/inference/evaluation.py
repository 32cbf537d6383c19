"""A split predicted as the served model predicts (the family run from its saved file on the
inputs the served model would give it, answered by `families.to_answers`, each answer with the
calibrated age interval), and the served model's config."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from utkface import paths
from utkface.data.dataset import SplitData, load_split
from utkface.data.labels import AGE
from utkface.inference.answering import SYNTHETIC_TRAINING, ServingConfig
from utkface.inference.families import (
    AGE_HIGH,
    AGE_LOW,
    P_FEMALE,
    FamilyModel,
    KerasCnn,
    to_answers,
)
from utkface.model import face_backbone
from utkface.params import Family, Params
from utkface.scoring.age_interval import AgeInterval


def served_inputs(member: Family, split: str) -> SplitData:
    """What the served model gives family `member` for one split's faces: the image for the
    scratch CNN, the face features for a head. The finetuned family's are computed here by the
    age networks it saved (on the aligned chips `features` cached) beside the gender network's
    cached ones; the pretrained family's are those `features` cached."""
    if member == "scratch":
        return load_split(split)
    data = load_split(split, images_path=paths.FEATURE_TABLE, augment=False)
    if member == "pretrained":
        return data
    chips = np.load(paths.AGE_CHIPS, mmap_mode="r")[data.table["cache_index"].to_numpy()]
    with tempfile.TemporaryDirectory() as folder:
        files = face_backbone.export(
            face_backbone.package_files(),
            Path(folder),
            replaced={"age": paths.FINETUNED_AGE_NETWORK},
        )
        backbone = face_backbone.FaceBackbone(files)
        age = backbone.network_features("age", np.asarray(chips))
        gender = data.images.shape[1] - backbone.network_size("gender")
    features = np.concatenate([age, data.images[:, gender:]], axis=1)
    return SplitData(features, data.age, data.gender, data.table)


def predict_split(
    model: FamilyModel, inputs: SplitData, age_max: int, interval: AgeInterval
) -> pd.DataFrame:
    """True labels beside the predicted ages (clamped) with their intervals and the
    probabilities of female, answered as the served model answers."""
    predicted = to_answers(model(inputs.images), age_max, interval)
    frame = inputs.table[["image_id", "age", "gender", "race"]].reset_index(drop=True).copy()
    frame["pred_age"] = predicted[AGE].to_numpy()
    frame["p_female"] = predicted[P_FEMALE].to_numpy(dtype=float)
    frame[AGE_LOW], frame[AGE_HIGH] = predicted[AGE_LOW], predicted[AGE_HIGH]
    return frame


def serving_config(params: Params, model: FamilyModel, interval: AgeInterval) -> ServingConfig:
    """The served model's config for `model`, the saved model of `params.model.family`;
    clients crop faces to its input size (the CNN's Keras input, or the face networks')."""
    face_size = params.features.image_size
    return ServingConfig(
        image_size=model.input_size if isinstance(model, KerasCnn) else face_size,
        max_image_bytes=params.register_.max_image_bytes,
        max_pixels=params.ingest.max_image_pixels,
        age_max=params.validate_.age_max,
        age_interval=interval.to_config(),
        face_size=face_size,
        family=params.model.family,
        trained_on=trained_on(params),
    )


def trained_on(params: Params) -> str:
    """What trained the model, in words, for its card and the synthetic-data warnings."""
    if params.ingest.is_synthetic:
        return SYNTHETIC_TRAINING
    return "real images"
