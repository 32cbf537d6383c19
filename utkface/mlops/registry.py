"""The model registry: registering evaluated models and reading the `champion` / `challenger`.

`evaluate` registers every model it tests as a new version aliased `challenger`; `utkface
promote` moves `champion` to a version that passes the quality gate; `predict` and `serve` use
`models:/<name>@champion`. Aliases replace MLflow's deprecated stages. Each version carries its
test metrics and lineage as tags, so promotion compares versions without opening their runs.
"""

from __future__ import annotations

from collections.abc import Mapping

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

from utkface.mlops import tracking

CHAMPION = "champion"
CHALLENGER = "challenger"
AGE_MAE, GENDER_ACCURACY = "test_age_mae", "test_gender_accuracy"
LINEAGE_KEYS = ("git_commit", "dvc_exp_name", "data_version")

MODEL_DESCRIPTION = """\
Dual-head CNN estimating apparent age (years) and gender (probability of female) from a face
crop. Input: base64 JPEG/PNG images (column `image`); output: `age`, `gender`, `p_female`.

Intended use: research and teaching on reproducible ML pipelines.

Limits:
- Trained on UTKFace, which is licensed for non-commercial research only; so is this model.
- Age and gender inferred from faces are sensitive attributes. Gender is predicted as a binary
  label from appearance and says nothing about a person's gender identity.
- Not for decisions about individuals (access, hiring, credit, law enforcement, age checks...).
- Performance varies across age, gender and race groups: see each version's subgroup report
  (evaluation/evaluate.json in its run) before relying on it for any population.
- Expects one roughly centred face cropped like UTKFace's; it centre-crops other photos.
  `utkface predict --detect-faces` and `utkface app` find and crop faces first (a Haar
  cascade: it misses small, turned and poorly lit faces).
"""


def registry_client() -> MlflowClient:
    """A client on the project's store, which also holds the registry."""
    uri = tracking.tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def champion_uri(name: str) -> str:
    return f"models:/{name}@{CHAMPION}"


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
        f"Trained and evaluated in MLflow run {run_id} (git {lineage['git_commit']}, "
        f"DVC experiment {lineage['dvc_exp_name']})."
    )


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        model = client.get_registered_model(name)
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
        client.create_registered_model(name, description=MODEL_DESCRIPTION)
        return
    if not model.description:
        client.update_registered_model(name, description=MODEL_DESCRIPTION)


def register(
    run_id: str,
    model_uri: str,
    model_name: str,
    metrics: Mapping[str, float],
    lineage: Mapping[str, str],
    description: str | None = None,
) -> ModelVersion:
    """Register `model_uri` as a new version of `model_name` and alias it `challenger`.

    Uses the current MLflow tracking URI (the registry lives in the same store). `metrics` must
    hold `test_age_mae` and `test_gender_accuracy`, `lineage` the keys of
    `tracking.lineage_tags`. The registered model is created on first use, with a description
    of intended use and limits.
    """
    tags = version_tags(metrics, lineage)
    registry = MlflowClient()
    _ensure_registered_model(registry, model_name)
    version = mlflow.register_model(model_uri, model_name, tags=tags)
    registry.update_model_version(
        model_name,
        version.version,
        description=description or version_description(run_id, metrics, lineage),
    )
    registry.set_registered_model_alias(model_name, CHALLENGER, version.version)
    return registry.get_model_version(model_name, version.version)
