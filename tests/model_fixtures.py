"""Helpers for the registry, promote, predict and serving tests: a throwaway MLflow store, a
tiny real Keras model, generated images and registered versions of the served model."""

from __future__ import annotations

import io
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from mlflow.entities.model_registry import ModelVersion
from mlflow.models.model import ModelInfo
from PIL import Image
from tiny import AGE_MAX, MAX_PIXELS

from utkface import paths
from utkface.inference.pyfunc import ServingConfig
from utkface.mlops import registry, tracking
from utkface.mlops.pyfunc_logging import log_serving_model
from utkface.model.network import build_model
from utkface.params import ModelParams

IMAGE_SIZE = 32
MAX_IMAGE_BYTES = 20_000  # small, so that a 200x200 noise PNG is "too large"
GATE = {"max_age_mae_increase": 0.1, "max_gender_accuracy_decrease": 0.005}
MODEL_NAME = "test-age-gender"
LINEAGE = {
    "git_commit": "abc123",
    "git_changes": "none",
    "dvc_exp_name": "test",
    "data_version": "data-v1",
}
CARD = registry.ModelCardFacts(backbone="scratch", trained_on="real images", training_images=10)


def use_tmp_store(monkeypatch: pytest.MonkeyPatch, root: Path) -> str:
    """MLflow store, artifacts and a minimal params.yaml under `root`, which becomes the cwd."""
    uri = f"sqlite:///{root}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(root)
    (root / "params.yaml").write_text(
        yaml.safe_dump({"promote": GATE, "register": {"model_name": MODEL_NAME}})
    )
    # use_experiment creates the experiment (artifacts beside the db) but only selects an
    # existing one, so select it here too: otherwise runs land in "Default" (./mlruns).
    mlflow.set_experiment(experiment_id=tracking.use_experiment("tests"))
    return uri


def image_bytes(seed: int, size: int = 48, fmt: str = "PNG") -> bytes:
    """A noise image (no faces needed: the tests check plumbing, not accuracy)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def save_tiny_model(path: Path) -> Path:
    model = build_model(
        ModelParams(filters=[4], convs_per_block=1, dense_units=4), IMAGE_SIZE, seed=0
    )
    model.save(path)
    return path


def log_tiny_serving_model(root: Path, trained_on: str = "real images") -> ModelInfo:
    """The tiny CNN saved under `root`, logged as the served pyfunc in a new run."""
    folder = root / "model"
    folder.mkdir(parents=True, exist_ok=True)
    save_tiny_model(paths.member_model("scratch", folder))
    examples = np.random.default_rng(0).integers(
        0, 256, (2, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8
    )
    config = ServingConfig(
        IMAGE_SIZE, MAX_IMAGE_BYTES, MAX_PIXELS, AGE_MAX, ("scratch",), trained_on=trained_on
    )
    with mlflow.start_run():
        return log_serving_model(folder, config, examples, lineage=LINEAGE)


def register_version(
    info: ModelInfo,
    name: str = MODEL_NAME,
    age_mae: float = 8.0,
    gender_accuracy: float = 0.8,
    data_version: str = "data-v1",
    experiment: str = "test",
) -> ModelVersion:
    """A new `challenger` version of `name` with the given test metrics."""
    return registry.register(
        run_id=info.run_id,
        model_uri=info.model_uri,
        model_name=name,
        metrics={registry.AGE_MAE: age_mae, registry.GENDER_ACCURACY: gender_accuracy},
        lineage=LINEAGE | {"data_version": data_version, "dvc_exp_name": experiment},
        card=CARD,
    )
