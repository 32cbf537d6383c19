"""Stage `train`: fit the model family `model.backbone` chooses on the training split and track
the run in MLflow.

`pretrained` fits the head on the cached face features, `scratch` the CNN on images, and
`ensemble` both (the served model averages them). What `tune` found (`models/tuned.json`) is
applied in full: per family, its best value of every searched knob, and its learning rate unless
params' top-level `lr` is a number, so `dvc exp run -S lr=0.0005` retrains without re-running
`tune` (with `ensemble`, that rate is used for both families).

The pretrained head is also saved as an ONNX graph (`utkface.model.head_export`), which the
served model runs. The saved families then predict the validation split as served, which
calibrates the age interval (`models/model/age_interval.json`) and gives the saved model's
validation metrics.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd

from utkface import paths
from utkface.data.dataset import SplitData
from utkface.data.labels import AGE
from utkface.inference.families import (
    P_FEMALE,
    Outputs,
    calibrate_interval,
    combine,
    load_family,
)
from utkface.mlops import tracking
from utkface.mlops.keras_logging import EpochLogger, log_keras_model
from utkface.mlops.runs import stage_run
from utkface.model.batchnorm import recompute_statistics
from utkface.model.fitting import fit, load_inputs, stops_early
from utkface.model.head import serving_head
from utkface.model.head_export import save_head_onnx
from utkface.model.network import with_test_time_flip
from utkface.model.saving import save_model
from utkface.params import (
    EarlyStoppingParams,
    Member,
    ModelParams,
    Params,
    Tuned,
    TunedValues,
    load_params,
    run_main,
)
from utkface.scoring.figures import plot_learning_curves
from utkface.scoring.metrics import age_metrics, gender_metrics

MEMBER = "member"


def resolve_lr(fixed_lr: float | None, tuned: TunedValues | None) -> tuple[float, str]:
    """The learning rate to train with and where it came from ('params' or 'tune')."""
    if fixed_lr is not None:
        return fixed_lr, "params"
    if tuned is None:
        raise ValueError(
            f"lr is null/auto but {paths.TUNED} has no tuned values for this model family: run "
            "the tune stage (dvc repro tune) or set a number, e.g. dvc exp run -S lr=0.001"
        )
    return tuned.lr, "tune"


def load_tuned() -> Tuned:
    """What tune handed over (nothing before tune has run)."""
    if not paths.TUNED.exists():
        return Tuned()
    return Tuned.model_validate_json(paths.TUNED.read_text())


def member_config(params: Params, member: Member, tuned: TunedValues | None) -> ModelParams:
    """`params.model` with the knobs tuned for `member` applied."""
    if tuned is None:
        return params.model
    if member == "pretrained":
        return params.model.model_copy(update={"head": tuned.head_params(params.model.head)})
    return tuned.model_params(params.model)


def history_table(history: dict[str, list[float]]) -> pd.DataFrame:
    """Per-epoch history as the DVC plots / MLflow table (epoch starts at 1)."""
    table = pd.DataFrame(history)
    table.insert(0, "epoch", np.arange(1, len(table) + 1))
    return table


def best_epoch_metrics(history: pd.DataFrame, es: EarlyStoppingParams | None) -> dict[str, float]:
    """Metrics at the epoch whose weights EarlyStopping kept: the best `es.monitor` from epoch
    `es.start_from_epoch + 1` on, or the last epoch when training ended before that (or
    without early stopping, `es` None)."""
    watched = history.iloc[es.start_from_epoch :] if es else history.iloc[:0]
    row = history.loc[watched[es.monitor].idxmin()] if len(watched) else history.iloc[-1]
    return {k: float(v) for k, v in row.items()} | {"epochs_run": len(history)}


def inference_model(
    model: keras.Model, params: Params, train: SplitData, member: Member = "scratch"
) -> keras.Model:
    """The model to save. The head: its `age` and `gender` outputs. The CNN: BatchNorm
    statistics recomputed over the training split (`train.precise_batchnorm`), then each face
    averaged with its mirror (`model.test_time_flip`)."""
    if member == "pretrained":
        return serving_head(model)
    if params.train.precise_batchnorm:
        recompute_statistics(model, train.images, params.train.batch_size, params.seed)
    return with_test_time_flip(model) if params.model.test_time_flip else model


def effective_model_params(params: Params, tuned: Tuned) -> dict:
    """The model params train uses, tuned knobs applied, keyed as in params.yaml: the head's
    for `pretrained`, the CNN's for `scratch`, both for `ensemble`."""
    logged: dict = {"backbone": params.model.backbone}
    for member in params.model.members:
        cfg = member_config(params, member, tuned.of(member))
        if member == "pretrained":
            logged["head"] = cfg.head.model_dump()
        else:
            logged |= cfg.model_dump(exclude={"backbone", "head"})
    return logged


def served_val_outputs(
    members: tuple[Member, ...], inputs: dict[Member, SplitData]
) -> list[Outputs]:
    """Each family's outputs on its validation inputs, run from the saved files as the served
    model runs them (`utkface.inference.families`)."""
    return [load_family(m, paths.served_file(m))(inputs[m].images) for m in members]


def saved_model_metrics(answers: pd.DataFrame, val: SplitData) -> dict[str, float]:
    """Validation metrics of the model as saved and served (`combine`: the members'
    predictions averaged, then clamped, as in `evaluate` and the served model); the history
    shows each model during fit, before `inference_model`."""
    age = age_metrics(val.age, answers[AGE])
    gender = gender_metrics(val.gender, answers[P_FEMALE])
    return {
        "saved_val_age_mae": age["age_mae"],
        "saved_val_age_bias": age["age_bias"],
        "saved_val_gender_accuracy": gender["gender_accuracy"],
    }


@dataclass
class TrainedMember:
    """One model family as trained: the saved model, its history (with a `member` column),
    its summary for metrics/train.json and the validation inputs it was judged on."""

    model: keras.Model
    history: pd.DataFrame
    summary: dict
    val: SplitData
    speed: dict[str, float]  # seconds and images per second: MLflow's, not DVC's


def train_member(
    params: Params, member: Member, tuned: TunedValues | None, lr: float, lr_source: str
) -> TrainedMember:
    """Fit, finish and save `member`."""
    cfg = member_config(params, member, tuned)
    train, val = load_inputs(member, "train"), load_inputs(member, "val")
    prefix = f"{member}_" if len(params.model.members) > 1 else ""  # the ensemble's two
    used = {"lr_used": lr, "lr_source": lr_source, "train_rows": len(train.age)}
    mlflow.log_params({f"{prefix}{k}": v for k, v in used.items()})
    started = time.perf_counter()
    model, history = fit(
        cfg,
        params.train,
        lr,
        train,
        val,
        params.seed,
        cfg.head.epochs if member == "pretrained" else params.train.epochs,
        callbacks=[EpochLogger(prefix=prefix)],
        member=member,
    )
    seconds = time.perf_counter() - started
    served = inference_model(model, params, train, member)
    table = history_table(history)
    early = params.train.early_stopping if stops_early(member) else None
    speed = {"seconds": seconds, "images_per_second": len(train.age) * len(table) / seconds}
    mlflow.log_metrics({f"{prefix}{k}": v for k, v in speed.items()})  # not in metrics/train.json
    summary = best_epoch_metrics(table, early) | used
    paths.MODEL.mkdir(parents=True, exist_ok=True)
    save_model(served, paths.member_model(member))  # the same weights, the same bytes
    if member == "pretrained":  # served on ONNX Runtime, with the bins for its interval
        save_head_onnx(model, paths.served_file(member))
    table.insert(1, MEMBER, member)
    return TrainedMember(served, table, summary, val, speed)


def main() -> None:
    params = load_params()
    tuned = load_tuned()
    members = params.model.members
    lrs = {m: resolve_lr(params.fixed_lr, tuned.of(m)) for m in members}  # fail before any run
    version = tracking.data_version()
    experiment_id = tracking.use_experiment(tracking.TRAIN_EXPERIMENT)
    with stage_run(
        "train",
        experiment_id,
        run_name=tracking.run_name("train"),
        tags={"stage": "train", **tracking.lineage_tags(version)},
    ) as run:
        logged = {
            "seed": params.seed,
            "lr": params.lr,
            "model": effective_model_params(params, tuned),
            "train": params.train.model_dump(),
        }
        mlflow.log_params(tracking.flatten(logged))
        if paths.MODEL.exists():
            for old in paths.MODEL.iterdir():
                old.unlink()
        trained = {m: train_member(params, m, tuned.of(m), *lrs[m]) for m in members}
        val = trained[members[0]].val  # the same rows for every family
        outputs = served_val_outputs(members, {m: t.val for m, t in trained.items()})
        age_max = params.validate_.age_max
        interval = calibrate_interval(outputs, val.age, age_max)
        paths.AGE_INTERVAL.write_text(json.dumps(interval.to_config(), indent=2) + "\n")
        mlflow.log_dict(interval.to_config(), "age_interval.json")
        per_member = {m: t.summary for m, t in trained.items()}
        summary = {"backbone": params.model.backbone}
        summary |= per_member[members[0]] if len(members) == 1 else per_member
        summary |= saved_model_metrics(combine(outputs, age_max), val)
        table = pd.concat([t.history for t in trained.values()], ignore_index=True)
        paths.METRICS.mkdir(parents=True, exist_ok=True)
        table.to_csv(paths.TRAIN_HISTORY, index=False)
        paths.TRAIN_METRICS.write_text(json.dumps(summary, indent=2) + "\n")
        mlflow.log_metrics(
            {f"best_{k}": v for k, v in tracking.flatten(summary).items() if isinstance(v, float)}
        )
        with tempfile.TemporaryDirectory() as tmp:
            for member in members:
                curves = table[table[MEMBER] == member].drop(columns=MEMBER)
                name = f"learning_curves_{member}" if len(members) > 1 else "learning_curves"
                figure = Path(tmp) / f"{name}.png"
                mlflow.log_artifact(str(plot_learning_curves(curves, figure)))
        mlflow.log_artifact(str(paths.TRAIN_HISTORY))
        infos = {
            m: log_keras_model(t.model, t.val.images[:2], name=f"{m}_model")
            for m, t in trained.items()
        }
        paths.TRAIN_RUN.write_text(
            json.dumps(
                {
                    "run_id": run.info.run_id,
                    "experiment_id": run.info.experiment_id,
                    "model_uris": {m: info.model_uri for m, info in infos.items()},
                    "data_version": version,
                },
                indent=2,
            )
            + "\n"
        )
    for member, result in per_member.items():
        speed = trained[member].speed
        print(
            f"train: {member}: lr={result['lr_used']} ({result['lr_source']}), "
            f"{result['epochs_run']} epochs in {speed['seconds']:.0f}s "
            f"({speed['images_per_second']:.0f} rows/s): "
            f"val_age_mae={result['val_age_mae']:.2f} "
            f"val_gender_accuracy={result['val_gender_accuracy']:.3f}"
        )
    print(
        f"train: saved {params.model.backbone} model: val age MAE "
        f"{summary['saved_val_age_mae']:.2f}, gender accuracy "
        f"{summary['saved_val_gender_accuracy']:.3f} -> {paths.MODEL}, MLflow run {run.info.run_id}"
    )


if __name__ == "__main__":
    run_main("train", main)
