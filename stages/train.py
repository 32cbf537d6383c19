"""Stage `train`: fit the model family `model.family` chooses on the training split
(`utkface.model.training`), judge the saved model on the validation split as it will be served
(`utkface.inference.validation`: the age interval and the `saved_val_*` metrics), and track
the run in MLflow."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow

from utkface import paths
from utkface.inference.validation import judge_saved_model
from utkface.mlops import tracking
from utkface.mlops.keras_logging import EpochLogger, log_history, log_keras_model
from utkface.mlops.runs import stage_run
from utkface.model.training import effective_model_params, load_tuned, resolve_lr, train_member
from utkface.outputs import write_json
from utkface.params import load_params, run_main
from utkface.scoring.figures import plot_learning_curves


def main() -> None:
    params = load_params()
    tuned = load_tuned()
    family = params.model.family
    lr, source = resolve_lr(params.fixed_lr, tuned.of(family))  # fail before any run
    version = tracking.data_version()
    experiment_id = tracking.use_experiment(tracking.TRAIN_EXPERIMENT)
    tags = {"stage": "train", **tracking.lineage_tags(version)}
    with stage_run("train", experiment_id, run_name=tracking.run_name("train"), tags=tags) as run:
        tracking.log_split_datasets(["train", "val"], version)
        logged = {
            "seed": params.seed,
            "lr": params.lr,
            "model": effective_model_params(params, tuned),
            "train": params.train.model_dump(),
        }
        mlflow.log_params(tracking.flatten(logged))
        for old in paths.MODEL.glob("*"):
            old.unlink()
        # logged first: a stopped run says what it was trying
        mlflow.log_params({"lr_used": lr, "lr_source": source})
        trained = train_member(
            params,
            family,
            tuned.of(family),
            lr,
            source,
            lambda prefix: [EpochLogger(prefix=prefix)],
        )
        if trained.members > 1:  # the members' mean, as one model's epochs are logged
            log_history(trained.history)
        mlflow.log_params({"train_rows": trained.summary["train_rows"]})
        mlflow.log_metrics(trained.speed)
        interval, saved = judge_saved_model(family, params.validate_.age_max)
        write_json(paths.AGE_INTERVAL, interval.to_config())
        mlflow.log_dict(interval.to_config(), "age_interval.json")
        summary = {"family": family} | trained.summary | saved
        paths.METRICS.mkdir(parents=True, exist_ok=True)
        trained.history.to_csv(paths.TRAIN_HISTORY, index=False)
        write_json(paths.TRAIN_METRICS, summary)
        flat = tracking.flatten(summary)
        mlflow.log_metrics({f"best_{k}": v for k, v in flat.items() if isinstance(v, float)})
        with tempfile.TemporaryDirectory() as tmp:
            curves = plot_learning_curves(trained.history, Path(tmp) / "learning_curves.png")
            mlflow.log_artifact(str(curves))
        mlflow.log_artifact(str(paths.TRAIN_HISTORY))
        uri = log_keras_model(trained.model, trained.example(), name=f"{family}_model").model_uri
        lineage = {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id}
        write_json(paths.TRAIN_RUN, lineage | {"model_uri": uri, "data_version": version})
    print(f"train: {family}: {trained.report()}")
    print(
        f"train: saved {family} model: val age MAE "
        f"{summary['saved_val_age_mae']:.2f}, gender accuracy "
        f"{summary['saved_val_gender_accuracy']:.3f} -> {paths.MODEL}, MLflow run {run.info.run_id}"
    )


if __name__ == "__main__":
    run_main("train", main)
