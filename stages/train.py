"""Stage `train`: fit the dual-head CNN on the training split and track the run in MLflow.

What `tune` found (`models/tuned.json`) is applied in full: its best value of every
`tune.search_space` knob, and its learning rate unless params' top-level `lr` is a number, so
`dvc exp run -S lr=0.0005` retrains without re-running `tune`.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd

from utkface import paths
from utkface.data.dataset import SplitData, load_split
from utkface.data.labels import AGE, GENDER, clamp_ages
from utkface.mlops import tracking
from utkface.mlops.keras_logging import EpochLogger, log_keras_model
from utkface.model.batchnorm import recompute_statistics
from utkface.model.fitting import fit
from utkface.model.network import with_test_time_flip
from utkface.params import EarlyStoppingParams, Params, TunedValues, load_params, run_main
from utkface.scoring.figures import plot_learning_curves
from utkface.scoring.metrics import age_metrics, gender_metrics


def resolve_lr(fixed_lr: float | None, tuned: TunedValues | None) -> tuple[float, str]:
    """The learning rate to train with and where it came from ('params' or 'tune')."""
    if fixed_lr is not None:
        return fixed_lr, "params"
    if tuned is None:
        raise ValueError(
            f"lr is null/auto but there is no {paths.TUNED}: run the tune stage "
            "(dvc repro tune) or set a number, e.g. dvc exp run -S lr=0.001"
        )
    return tuned.lr, "tune"


def load_tuned() -> TunedValues | None:
    """What tune handed over, or None before tune has run."""
    if not paths.TUNED.exists():
        return None
    return TunedValues.model_validate_json(paths.TUNED.read_text())


def history_table(history: dict[str, list[float]]) -> pd.DataFrame:
    """Per-epoch history as the DVC plots / MLflow table (epoch starts at 1)."""
    table = pd.DataFrame(history)
    table.insert(0, "epoch", np.arange(1, len(table) + 1))
    return table


def best_epoch_metrics(history: pd.DataFrame, es: EarlyStoppingParams) -> dict[str, float]:
    """Metrics at the epoch whose weights EarlyStopping kept: the best `es.monitor` from epoch
    `es.start_from_epoch + 1` on, or the last epoch when training ended before that."""
    watched = history.iloc[es.start_from_epoch :]
    row = history.loc[watched[es.monitor].idxmin()] if len(watched) else history.iloc[-1]
    return {k: float(v) for k, v in row.items()} | {"epochs_run": len(history)}


def inference_model(model: keras.Model, params: Params, train: SplitData) -> keras.Model:
    """The model to save: BatchNorm statistics recomputed over the training split
    (`train.precise_batchnorm`), then each face averaged with its mirror
    (`model.test_time_flip`)."""
    if params.train.precise_batchnorm:
        recompute_statistics(model, train.images, params.train.batch_size, params.seed)
    return with_test_time_flip(model) if params.model.test_time_flip else model


def saved_model_metrics(model: keras.Model, val: SplitData, age_max: int) -> dict[str, float]:
    """Validation metrics of the model as saved and served, ages clamped as in `evaluate` (the
    history shows the model during fit, before `inference_model`)."""
    out = model.predict(val.images, batch_size=256, verbose=0)
    age = age_metrics(val.age, clamp_ages(out[AGE].ravel(), age_max))
    gender = gender_metrics(val.gender, out[GENDER].ravel())
    return {
        "saved_val_age_mae": age["age_mae"],
        "saved_val_age_bias": age["age_bias"],
        "saved_val_gender_accuracy": gender["gender_accuracy"],
    }


def main() -> None:
    params = load_params()
    tuned = load_tuned()
    lr, lr_source = resolve_lr(params.fixed_lr, tuned)
    model_cfg = tuned.model_params(params.model) if tuned else params.model
    train, val = load_split("train"), load_split("val")
    version = tracking.data_version()
    tracking.use_experiment(tracking.TRAIN_EXPERIMENT)
    with mlflow.start_run(tags={"stage": "train", **tracking.lineage_tags(version)}) as run:
        logged = {
            "seed": params.seed,
            "lr": params.lr,
            "model": model_cfg.model_dump(),
            "train": params.train.model_dump(),
        }
        mlflow.log_params(tracking.flatten(logged))
        mlflow.log_params({"lr_used": lr, "lr_source": lr_source, "train_rows": len(train.age)})
        started = time.perf_counter()
        model, history = fit(
            model_cfg,
            params.train,
            lr,
            train,
            val,
            params.seed,
            params.train.epochs,
            callbacks=[EpochLogger()],
        )
        seconds = time.perf_counter() - started
        model = inference_model(model, params, train)
        table = history_table(history)
        summary = best_epoch_metrics(table, params.train.early_stopping) | {
            **saved_model_metrics(model, val, params.validate_.age_max),
            "lr": lr,
            "lr_source": lr_source,
            "train_rows": len(train.age),
            "seconds": round(seconds, 1),
            "images_per_second": round(len(train.age) * len(table) / seconds, 1),
        }
        paths.MODELS.mkdir(parents=True, exist_ok=True)
        paths.METRICS.mkdir(parents=True, exist_ok=True)
        model.save(paths.MODEL)
        table.to_csv(paths.TRAIN_HISTORY, index=False)
        paths.TRAIN_METRICS.write_text(json.dumps(summary, indent=2) + "\n")
        mlflow.log_metrics({f"best_{k}": v for k, v in summary.items() if isinstance(v, float)})
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.log_artifact(str(plot_learning_curves(table, Path(tmp) / "learning_curves.png")))
        mlflow.log_artifact(str(paths.TRAIN_HISTORY))
        info = log_keras_model(model, val.images[:2])
        paths.TRAIN_RUN.write_text(
            json.dumps(
                {
                    "run_id": run.info.run_id,
                    "experiment_id": run.info.experiment_id,
                    "model_uri": info.model_uri,
                    "data_version": version,
                },
                indent=2,
            )
            + "\n"
        )
    print(
        f"train: lr={lr} ({lr_source}), {summary['epochs_run']} epochs in {seconds:.0f}s "
        f"({summary['images_per_second']} img/s): val_age_mae={summary['val_age_mae']:.2f} "
        f"val_gender_accuracy={summary['val_gender_accuracy']:.3f} -> {paths.MODEL}, "
        f"MLflow run {run.info.run_id}"
    )


if __name__ == "__main__":
    run_main("train", main)
