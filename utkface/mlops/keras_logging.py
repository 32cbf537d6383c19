"""Keras in MLflow: per-epoch metrics of a fit, the trained model, and Keras Tuner trials as
nested runs. Kept apart from `tracking` so that the registry, `utkface promote` and
`utkface serve` never import TensorFlow."""

from __future__ import annotations

import os
from importlib import metadata
from typing import Any

import keras
import keras_tuner as kt
import mlflow
import numpy as np
import pandas as pd
from mlflow.models import Model, infer_signature
from mlflow.models.model import ModelInfo

from utkface import tensorflow_build
from utkface.mlops.runs import process_tags
from utkface.model.search import OBJECTIVE


class EpochLogger(keras.callbacks.Callback):
    """Logs every metric Keras reports at the end of each epoch to the active MLflow run, each
    name after `prefix` (one ensemble member's: `member1_val_age_mae`)."""

    def __init__(self, run_id: str | None = None, prefix: str = "") -> None:
        super().__init__()
        self.run_id = run_id
        self.prefix = prefix

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        metrics = {self.prefix + k: float(v) for k, v in (logs or {}).items()}
        mlflow.log_metrics(metrics, step=epoch, run_id=self.run_id)


def log_history(history: pd.DataFrame) -> None:
    """Every metric of a per-epoch `history` (`training.history_table`) to the active run, as
    `EpochLogger` logs a fit's: an ensemble's mean, beside each member's own epochs."""
    for row in history.to_dict("records"):
        epoch = int(row.pop("epoch"))
        mlflow.log_metrics({k: float(v) for k, v in row.items()}, step=epoch - 1)


class _KerasFlavor:
    """`mlflow.keras` for `Model.log`, creating the model folder first: MLflow 3.17's Keras
    `save_model` writes the input example before it creates that folder, so
    `mlflow.keras.log_model(..., input_example=...)` fails with FileNotFoundError."""

    __name__ = "mlflow.keras"

    @staticmethod
    def save_model(path: str, **kwargs: Any) -> None:
        os.makedirs(path, exist_ok=True)
        mlflow.keras.save_model(path=path, **kwargs)


def pip_requirements() -> list[str]:
    """What loading a Keras-flavor model needs, pinned to this environment. Explicit, because
    MLflow would infer them by loading the model in a fresh process, where the project's custom
    layers (the finetuned family's) are not registered: the load fails, MLflow warns and falls
    back to Keras alone."""
    names = ["keras", tensorflow_build.distribution(), "numpy"]
    return [f"{name}=={metadata.version(name)}" for name in names]


def log_keras_model(
    model: keras.Model, example: np.ndarray | dict[str, np.ndarray], name: str = "model"
) -> ModelInfo:
    """Log `model` (Keras flavor) to the active run with its signature, an input example and
    explicit pip requirements."""
    outputs = {k: np.asarray(v) for k, v in model.predict(example, verbose=0).items()}
    return Model.log(
        artifact_path=None,
        name=name,
        flavor=_KerasFlavor(),
        model=model,
        signature=infer_signature(example, outputs),
        input_example=example,
        pip_requirements=pip_requirements(),
    )


def tracked_tuner(base: type[kt.Tuner], parent_run_id: str | None) -> type[kt.Tuner]:
    """The tuner class `base` with every trial wrapped in a nested MLflow run under
    `parent_run_id`, logging the trial's values and its best objective."""

    class TrackedTuner(base):  # type: ignore[misc, valid-type]
        def run_trial(self, trial: kt.engine.trial.Trial, *args: Any, **kwargs: Any) -> Any:
            with mlflow.start_run(
                run_name=f"trial-{trial.trial_id}",
                nested=True,
                parent_run_id=parent_run_id,
                tags={
                    "stage": "tune",
                    "trial_id": trial.trial_id,
                    "tuner_id": self.tuner_id,
                    **process_tags(),
                },
            ):
                mlflow.log_params(trial.hyperparameters.values)
                results = super().run_trial(trial, *args, **kwargs)
                histories = results if isinstance(results, list) else [results]
                best = min(min(h.history[OBJECTIVE]) for h in histories)
                mlflow.log_metric("best_" + OBJECTIVE, best)
                return results

    return TrackedTuner
