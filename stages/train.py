"""Stage `train`: fit the model family `model.backbone` chooses on the training split
(`utkface.model.training`), judge the saved model on the validation split as it will be served
(`utkface.inference.validation`: the age interval and the `saved_val_*` metrics), and track
the run in MLflow."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import pandas as pd

from utkface import paths
from utkface.inference.validation import judge_saved_model
from utkface.mlops import tracking
from utkface.mlops.keras_logging import EpochLogger, log_keras_model
from utkface.mlops.runs import stage_run
from utkface.model.training import (
    MEMBER,
    effective_model_params,
    load_tuned,
    resolve_lr,
    train_member,
)
from utkface.outputs import write_json
from utkface.params import load_params, run_main
from utkface.scoring.figures import plot_learning_curves


def main() -> None:
    params = load_params()
    tuned = load_tuned()
    members = params.model.members
    lrs = {m: resolve_lr(params.fixed_lr, tuned.of(m)) for m in members}  # fail before any run
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
        trained = {}
        for member in members:
            prefix = f"{member}_" if len(members) > 1 else ""  # the ensemble's two
            lr, source = lrs[member]  # logged first: a stopped run says what it was trying
            mlflow.log_params({f"{prefix}lr_used": lr, f"{prefix}lr_source": source})
            trained[member] = result = train_member(
                params, member, tuned.of(member), lr, source, [EpochLogger(prefix=prefix)]
            )
            mlflow.log_params({f"{prefix}train_rows": result.summary["train_rows"]})
            mlflow.log_metrics({f"{prefix}{k}": v for k, v in result.speed.items()})
        interval, saved = judge_saved_model(members, params.validate_.age_max)
        write_json(paths.AGE_INTERVAL, interval.to_config())
        mlflow.log_dict(interval.to_config(), "age_interval.json")
        per_member = {m: t.summary for m, t in trained.items()}
        summary = {"backbone": params.model.backbone}
        summary |= per_member[members[0]] if len(members) == 1 else per_member
        summary |= saved
        history = pd.concat([t.history for t in trained.values()], ignore_index=True)
        paths.METRICS.mkdir(parents=True, exist_ok=True)
        history.to_csv(paths.TRAIN_HISTORY, index=False)
        write_json(paths.TRAIN_METRICS, summary)
        flat = tracking.flatten(summary)
        mlflow.log_metrics({f"best_{k}": v for k, v in flat.items() if isinstance(v, float)})
        with tempfile.TemporaryDirectory() as tmp:
            for member in members:
                curves = history[history[MEMBER] == member].drop(columns=MEMBER)
                name = f"learning_curves_{member}" if len(members) > 1 else "learning_curves"
                mlflow.log_artifact(str(plot_learning_curves(curves, Path(tmp) / f"{name}.png")))
        mlflow.log_artifact(str(paths.TRAIN_HISTORY))
        uris = {
            m: log_keras_model(t.model, t.example(), name=f"{m}_model").model_uri
            for m, t in trained.items()
        }
        lineage = {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id}
        write_json(paths.TRAIN_RUN, lineage | {"model_uris": uris, "data_version": version})
    for member, result in trained.items():
        print(f"train: {member}: {result.report()}")
    print(
        f"train: saved {params.model.backbone} model: val age MAE "
        f"{summary['saved_val_age_mae']:.2f}, gender accuracy "
        f"{summary['saved_val_gender_accuracy']:.3f} -> {paths.MODEL}, MLflow run {run.info.run_id}"
    )


if __name__ == "__main__":
    run_main("train", main)
