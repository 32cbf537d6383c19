"""Tiny, fast stand-ins shared by the tests: a tiny model config, random images and splits,
synthetic faces decoded like ingest does, and a tiny project directory with its own MLflow store
(params.yaml, an image cache and three split tables)."""

from __future__ import annotations

import contextlib
import functools
import shutil
import socket
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from utkface import paths
from utkface.data.balancing import original_rows
from utkface.data.dataset import SplitData
from utkface.data.imaging import load_image
from utkface.data.labels import AGE, GENDER, parse_file_name
from utkface.data.synthetic import synthetic_files
from utkface.params import ModelAugmentParams, ModelParams, Params

REPO = Path(__file__).resolve().parents[1]
DEFAULTS = Params()
AGE_MAX = DEFAULTS.validate_.age_max  # the limits the stages get from params.yaml
MAX_PIXELS = DEFAULTS.ingest.max_image_pixels
SIZE = 32
TINY_MODEL = ModelParams(stem_filters=4, filters=[8], convs_per_block=1, dense_units=4)
NO_AUGMENT = ModelAugmentParams(
    horizontal_flip=False, rotation=0.0, zoom=0.0, translation=0.0, contrast=0.0
)


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3)).astype("uint8")


def targets(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        AGE: rng.uniform(1, 90, n).astype("float32"),
        GENDER: rng.integers(0, 2, n).astype("float32"),
    }


def split(n: int, seed: int = 0) -> SplitData:
    y = targets(n, seed)
    return SplitData(images(n, seed), y[AGE], y[GENDER], pd.DataFrame({"age": y[AGE]}))


LEARNING_RATES = [0.001, 0.01]
TINY_PARAMS: dict[str, Any] = {
    "seed": 7,
    "lr": None,
    "ingest": {"image_size": 32},
    "model": {
        "family": "scratch",
        "stem_filters": 4,
        "filters": [8],
        "convs_per_block": 1,
        "dense_units": 4,
    },
    "train": {"epochs": 2, "batch_size": 16},
    "tune": {
        "learning_rates": LEARNING_RATES,
        "max_trials": 2,
        "epochs": 1,
        "train_fraction": 1.0,
    },
}
# Overrides of the repository's params.yaml that run the whole DAG in seconds per stage.
TINY_DAG: dict[str, Any] = {
    "ingest": {"image_size": 32, "synthetic_count": 160},
    "validate": {"min_rows": 50, "min_per_gender": 10, "min_per_age_bucket": 1},
    "balance": {"min_per_age": 2, "max_per_age": 10},
    "model": {
        "stem_filters": 4,
        "filters": [8],
        "convs_per_block": 1,
        "dense_units": 4,
        "head": {"epochs": 3},
        "finetune": {"epochs": 2, "views": 1, "members": 1},  # two: test_model_families
    },
    "train": {"epochs": 1, "batch_size": 32, "precise_batchnorm_sample": 64},
    "tune": {
        "learning_rates": [0.01],
        "max_trials": 1,
        "epochs": 1,
        "head": {"learning_rates": [0.01], "max_trials": 1, "epochs": 1},
        "finetune": {"learning_rates": [0.001], "max_trials": 1, "epochs": 1},
    },
    "evaluate": {"sample_grid": 2},
}
KERASTUNER_ENV = ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT")


@functools.cache
def synthetic_faces(count: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    """`count` synthetic faces decoded like ingest does, and their labels (read-only: cached)."""
    images, rows = [], []
    for index, (name, data) in enumerate(synthetic_files(count, seed)):
        label = parse_file_name(name, AGE_MAX)
        images.append(load_image(data, size, MAX_PIXELS))
        rows.append(
            {
                "image_id": label.image_id,
                "cache_index": index,
                "age": label.age,
                "gender": label.gender,
                "race": label.race,
            }
        )
    images_array = np.stack(images)
    images_array.setflags(write=False)
    return images_array, pd.DataFrame(rows)


def default_params() -> dict[str, Any]:
    """The code's defaults as a params.yaml mapping: what the committed params.yaml says for the
    embedded synthetic set. Never the workspace's params.yaml, which `dvc exp run -S ...`
    rewrites and `utkface use-data` points at real data."""
    return DEFAULTS.model_dump(mode="json", by_alias=True)


def dag_params(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The default params with `TINY_DAG` and then `overrides` applied."""
    return with_overrides(with_overrides(default_params(), TINY_DAG), overrides or {})


def with_overrides(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = with_overrides(base.get(key, {}), value) if isinstance(value, dict) else value
    return merged


def write_tiny_project(
    root: Path, overrides: dict[str, Any] | None = None, count: int = 60
) -> None:
    """params.yaml, data/ingested/images.npy and data/split/*.parquet under `root` (60/20/20)."""
    params = with_overrides(TINY_PARAMS, overrides or {})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    images, labels = synthetic_faces(count)
    (root / paths.INGESTED).mkdir(parents=True, exist_ok=True)
    np.save(root / paths.IMAGES, images)
    (root / paths.SPLIT).mkdir(parents=True, exist_ok=True)
    rows = original_rows(labels)
    n_train, n_val = int(0.6 * count), int(0.2 * count)
    parts = {
        "train": rows.iloc[:n_train],
        "val": rows.iloc[n_train : n_train + n_val],
        "test": rows.iloc[n_train + n_val :],
    }
    for name, part in parts.items():
        part.reset_index(drop=True).to_parquet(root / paths.split_table(name), index=False)


def tiny_project(
    root: Path, monkeypatch: pytest.MonkeyPatch, overrides: dict[str, Any] | None = None
) -> str:
    """A tiny project at `root`, made the cwd, with its own MLflow store; returns the store URI."""
    write_tiny_project(root, overrides)
    return enter_project(monkeypatch, root)


def enter_project(monkeypatch: pytest.MonkeyPatch, root: Path) -> str:
    """`root` made the cwd, with a new MLflow store of its own, outside any DVC experiment or
    distributed search; returns the store URI."""
    monkeypatch.chdir(root)
    uri = new_store(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for name in ("DVC_EXP_NAME", *KERASTUNER_ENV):
        monkeypatch.delenv(name, raising=False)
    return uri


@functools.cache
def _empty_store() -> Path:
    """An MLflow SQLite store with its tables made, once per process: making them takes about
    a second, copying the file a few milliseconds."""
    store = Path(tempfile.mkdtemp(prefix="mlflow-template-")) / "mlflow.db"
    MlflowClient(f"sqlite:///{store}").search_experiments()
    return store


def new_store(root: Path) -> str:
    """A fresh, empty MLflow SQLite store at `root`/mlflow.db, its Default experiment's
    artifacts under `root`/mlruns as MLflow would make them there; its URI."""
    shutil.copyfile(_empty_store(), root / "mlflow.db")
    with contextlib.closing(sqlite3.connect(root / "mlflow.db")) as db, db:
        db.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
            (str(root / "mlruns" / "0"),),
        )
    return f"sqlite:///{root}/mlflow.db"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
