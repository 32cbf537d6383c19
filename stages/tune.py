"""Stage `tune`: Keras Tuner searches the learning rate (and optional model knobs).

Objective (minimised), one number for both tasks because Keras Tuner would sum a list of
objectives unweighted and years of MAE would swamp accuracy:

    val_objective = val_age_mae + tune.gender_weight * (1 - val_gender_accuracy)

With gender_weight = 10, one percentage point of gender accuracy is worth 0.1 year of MAE.

Each trial is a nested MLflow run under one `tune` parent run. Distributed search uses Keras
Tuner's own chief/worker mode: with KERASTUNER_TUNER_ID=chief this process serves the oracle
and writes the results; with KERASTUNER_TUNER_ID=tuner0, tuner1, ... it runs trials for the
chief at KERASTUNER_ORACLE_IP:KERASTUNER_ORACLE_PORT and logs them under the chief's parent run.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any

import keras
import keras_tuner as kt
import mlflow
import numpy as np

from stages import paths, tracking
from stages.dataset import SplitData, load_split, sample_rows
from stages.model import build_model, compile_model
from stages.params import Params, load_params
from stages.training import (
    LearningRateInLogs,
    clean_batchnorm_callbacks,
    make_dataset,
    progress_verbosity,
    seed_everything,
)

OBJECTIVE = "val_objective"
ORACLE_TAG = "keras_tuner_oracle"


def combined_objective(
    val_age_mae: float, val_gender_accuracy: float, gender_weight: float
) -> float:
    """Lower is better; see the module docstring."""
    return val_age_mae + gender_weight * (1.0 - val_gender_accuracy)


class ObjectiveCallback(keras.callbacks.Callback):
    """Adds `val_objective` to each epoch's logs, where the tuner and History read it."""

    def __init__(self, gender_weight: float) -> None:
        super().__init__()
        self.gender_weight = gender_weight

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if logs is not None and "val_age_mae" in logs:
            logs[OBJECTIVE] = combined_objective(
                logs["val_age_mae"], logs["val_gender_accuracy"], self.gender_weight
            )


class DualHeadHyperModel(kt.HyperModel):
    """Builds the project's model (`stages.model.build_model`) for each trial's values."""

    def __init__(self, params: Params, image_size: int, age_prior: float) -> None:
        super().__init__(name="dual_head")
        self.params, self.image_size, self.age_prior = params, image_size, age_prior

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        cfg = self.params.tune
        lr = hp.Choice("lr", cfg.learning_rates)
        knobs = {knob: hp.Choice(knob, values) for knob, values in cfg.search_space.items()}
        keras.utils.set_random_seed(self.params.seed)  # every trial starts from the same init
        model_cfg = self.params.model.model_copy(update=knobs)
        model = build_model(model_cfg, self.image_size, self.params.seed, self.age_prior)
        return compile_model(model, self.params.train, lr)


def _tracked(base: type[kt.Tuner], parent_run_id: str | None) -> type[kt.Tuner]:
    """The tuner class `base` with every trial wrapped in a nested MLflow run."""

    class TrackedTuner(base):  # type: ignore[misc, valid-type]
        def run_trial(self, trial: kt.engine.trial.Trial, *args: Any, **kwargs: Any) -> Any:
            with mlflow.start_run(
                run_name=f"trial-{trial.trial_id}",
                nested=True,
                parent_run_id=parent_run_id,
                tags={"stage": "tune", "trial_id": trial.trial_id, "tuner_id": self.tuner_id},
            ):
                mlflow.log_params(trial.hyperparameters.values)
                results = super().run_trial(trial, *args, **kwargs)
                histories = results if isinstance(results, list) else [results]
                best = min(min(h.history[OBJECTIVE]) for h in histories)
                mlflow.log_metric("best_" + OBJECTIVE, best)
                return results

    return TrackedTuner


def is_worker() -> bool:
    """A Keras Tuner worker of a distributed search (the chief's id is `chief`)."""
    return os.environ.get("KERASTUNER_TUNER_ID", "chief") != "chief"


def make_tuner(params: Params, hypermodel: kt.HyperModel, parent_run_id: str | None) -> kt.Tuner:
    cfg = params.tune
    objective = kt.Objective(OBJECTIVE, direction="min")
    common = {
        "hypermodel": hypermodel,
        "objective": objective,
        "seed": params.seed,
        "directory": str(paths.TUNER_DIR),
        "project_name": "search",
        # main() clears the directory for a new search; a worker must keep what others write.
        "overwrite": not is_worker(),
        "executions_per_trial": cfg.executions_per_trial,
        "max_consecutive_failed_trials": 2,
    }
    if cfg.tuner == "hyperband":
        return _tracked(kt.Hyperband, parent_run_id)(max_epochs=cfg.epochs, **common)
    base = kt.RandomSearch if cfg.tuner == "random" else kt.BayesianOptimization
    return _tracked(base, parent_run_id)(max_trials=cfg.max_trials, **common)


def subsample(data: SplitData, fraction: float, seed: int) -> SplitData:
    """A seeded random share of the training split, so trials stay cheap on CPU."""
    return sample_rows(data, max(1, int(len(data.age) * fraction)), seed)


def _metric_at(trial: Any, name: str) -> float | None:
    history = trial.metrics.get_history(name) if trial.metrics.exists(name) else []
    at_best = [o.value[0] for o in history if o.step == trial.best_step]
    return float(at_best[0]) if at_best else None


def summarize(tuner: kt.Tuner, params: Params, seconds: float, run_id: str | None) -> dict:
    """Best hyperparameters and the trial table for metrics/tune.json."""
    trials = list(tuner.oracle.trials.values())
    table = [
        {
            "trial_id": t.trial_id,
            "status": t.status,
            "hyperparameters": t.hyperparameters.values,
            "best_epoch": t.best_step,
            "val_age_mae": _metric_at(t, "val_age_mae"),
            "val_gender_accuracy": _metric_at(t, "val_gender_accuracy"),
            OBJECTIVE: None if t.score is None else float(t.score),
        }
        for t in sorted(trials, key=lambda t: t.trial_id)
    ]
    completed = [row for row in table if row[OBJECTIVE] is not None]
    if not completed:
        messages = "\n".join(f"trial {t.trial_id}: {t.message}" for t in trials if t.message)
        raise RuntimeError(f"tune: no trial completed; the trials failed with:\n{messages}")
    best = min(completed, key=lambda row: row[OBJECTIVE])
    return {
        "best": best["hyperparameters"],
        "best_" + OBJECTIVE: best[OBJECTIVE],
        "best_val_age_mae": best["val_age_mae"],
        "best_val_gender_accuracy": best["val_gender_accuracy"],
        "objective": f"val_age_mae + {params.tune.gender_weight} * (1 - val_gender_accuracy)",
        "tuner": params.tune.tuner,
        "trials": table,
        "seconds": round(seconds, 1),
        "mlflow_run_id": run_id,
    }


def _parent_run_for_worker(oracle: str, wait_s: float = 60.0) -> str | None:
    """The chief's parent run, found by its oracle address tag."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        runs = mlflow.search_runs(
            filter_string=f"tags.{ORACLE_TAG} = '{oracle}' and attributes.status = 'RUNNING'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
            output_format="list",
        )
        if runs:
            return runs[0].info.run_id
        time.sleep(1.0)
    return None


def search(params: Params, train: SplitData, val: SplitData, parent_run_id: str | None) -> kt.Tuner:
    seed_everything(params.seed)
    subset = subsample(train, params.tune.train_fraction, params.seed)
    hypermodel = DualHeadHyperModel(params, train.images.shape[1], float(np.median(subset.age)))
    tuner = make_tuner(params, hypermodel, parent_run_id)
    batch = params.train.batch_size
    tuner.search(
        make_dataset(subset, batch, shuffle=True, seed=params.seed),
        validation_data=make_dataset(val, batch, shuffle=False, seed=params.seed),
        epochs=params.tune.epochs,
        callbacks=[
            ObjectiveCallback(params.tune.gender_weight),
            LearningRateInLogs(),
            *clean_batchnorm_callbacks(params.train, subset, params.seed),
            tracking.EpochLogger(),
        ],
        verbose=progress_verbosity(),
    )
    return tuner


def main() -> None:
    params = load_params()
    role = os.environ.get("KERASTUNER_TUNER_ID", "single")
    oracle = f"{os.environ.get('KERASTUNER_ORACLE_IP')}:{os.environ.get('KERASTUNER_ORACLE_PORT')}"
    tracking.use_experiment(tracking.TUNE_EXPERIMENT)
    train, val = load_split("train"), load_split("val")
    started = time.perf_counter()
    if is_worker():
        parent = _parent_run_for_worker(oracle)
        search(params, train, val, parent)
        print(f"tune: worker {role} finished its trials for the chief at {oracle}")
        return
    if paths.TUNER_DIR.exists():
        shutil.rmtree(paths.TUNER_DIR)
    tags = {"stage": "tune", **tracking.lineage_tags(tracking.data_version())}
    if role == "chief":
        tags[ORACLE_TAG] = oracle
    with mlflow.start_run(run_name="tune", tags=tags) as run:
        mlflow.log_params(tracking.flatten({"seed": params.seed, "tune": params.tune.model_dump()}))
        tuner = search(params, train, val, run.info.run_id)
        summary = summarize(tuner, params, time.perf_counter() - started, run.info.run_id)
        mlflow.log_params({f"best.{k}": v for k, v in summary["best"].items()})
        mlflow.log_metrics(
            {k: v for k, v in summary.items() if k.startswith("best_") and v is not None}
        )
        paths.TUNE_METRICS.parent.mkdir(parents=True, exist_ok=True)
        paths.TUNE_METRICS.write_text(json.dumps(summary, indent=2) + "\n")
        mlflow.log_artifact(str(paths.TUNE_METRICS))
    print(
        f"tune: best {summary['best']} ({OBJECTIVE}={summary['best_' + OBJECTIVE]:.3f}) "
        f"after {len(summary['trials'])} trials in {summary['seconds']:.0f}s"
    )


if __name__ == "__main__":
    main()
