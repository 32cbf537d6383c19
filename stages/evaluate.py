"""Stage `evaluate`: test-split metrics, the subgroup report, plots, and model registration.

The model is what `train` saved for `model.backbone`: one family, or both averaged (an
ensemble), run and combined exactly as the served model does (`utkface.inference.families`:
the pretrained head's ONNX graph, the scratch CNN's Keras file), each answer with the age
interval train calibrated; its coverage and width are reported overall and per group.
Everything is logged to the MLflow run of the training that produced the model (its id comes
from `models/train_run.json`), so one run shows params, learning curves, test metrics and
figures. The model is then registered as a new version aliased `challenger`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from utkface import paths
from utkface.data.dataset import SplitData, load_split
from utkface.data.labels import AGE, gender_labels
from utkface.inference.families import (
    AGE_HIGH,
    AGE_LOW,
    P_FEMALE,
    Family,
    KerasCnn,
    combine,
    load_family,
)
from utkface.inference.pyfunc import SYNTHETIC_TRAINING, ServingConfig
from utkface.mlops import registry, tracking
from utkface.mlops.promotion import VAL_AGE_MAE, VAL_GENDER_ACCURACY
from utkface.mlops.pyfunc_logging import log_serving_model
from utkface.mlops.runs import stage_run
from utkface.model.fitting import load_inputs
from utkface.params import Member, Params, load_params, run_main
from utkface.scoring import figures
from utkface.scoring.age_interval import AgeInterval
from utkface.scoring.metrics import (
    age_scatter_table,
    by_bucket_table,
    confusion_table,
    evaluation_report,
    median_baseline_mae,
)


def predict_split(
    families: dict[Member, Family],
    inputs: dict[Member, SplitData],
    age_max: int,
    interval: AgeInterval,
) -> pd.DataFrame:
    """True labels beside the predicted ages (clamped) with their intervals and the
    probabilities of female, the families' predictions combined as the served model does."""
    outputs = [family(inputs[member].images) for member, family in families.items()]
    predicted = combine(outputs, age_max, interval)
    table = next(iter(inputs.values())).table
    frame = table[["image_id", "age", "gender", "race"]].reset_index(drop=True).copy()
    frame["pred_age"] = predicted[AGE].to_numpy()
    frame["p_female"] = predicted[P_FEMALE].to_numpy(dtype=float)
    frame[AGE_LOW], frame[AGE_HIGH] = predicted[AGE_LOW], predicted[AGE_HIGH]
    return frame


def serving_config(
    params: Params, families: dict[Member, Family], interval: AgeInterval
) -> ServingConfig:
    """The served model's config; clients crop faces to the largest input of its families."""
    sizes = [
        family.input_size if isinstance(family, KerasCnn) else params.features.image_size
        for family in families.values()
    ]
    return ServingConfig(
        image_size=max(sizes),
        max_image_bytes=params.register_.max_image_bytes,
        max_pixels=params.ingest.max_image_pixels,
        age_max=params.validate_.age_max,
        age_interval=interval.to_config(),
        face_size=params.features.image_size,
        members=tuple(families),
        trained_on=trained_on(params),
    )


def trained_on(params: Params) -> str:
    """What trained the model, in words, for its card and the synthetic-data warnings."""
    if params.ingest.is_synthetic:
        return SYNTHETIC_TRAINING
    return "real images"


def write_plot_tables(frame: pd.DataFrame, report: dict, data: SplitData, params: Params) -> None:
    """What `dvc plots` draws: per-face predictions, the confusion table, the per-bucket table
    and a grid of sample test faces with their predictions."""
    paths.EVALUATE_PLOTS.mkdir(parents=True, exist_ok=True)
    age_scatter_table(frame).to_csv(paths.AGE_PREDICTIONS, index=False)
    predicted = gender_labels(frame["p_female"].to_numpy())
    confusion_table(frame["gender"], predicted).to_csv(paths.GENDER_CONFUSION, index=False)
    by_bucket_table(report).to_csv(paths.BY_AGE_BUCKET, index=False)
    rng = np.random.default_rng(params.seed)
    pick = np.sort(
        rng.choice(len(frame), size=min(params.evaluate.sample_grid, len(frame)), replace=False)
    )
    figures.plot_sample_grid(
        data.images[pick],
        frame["age"].to_numpy()[pick],
        frame["gender"].to_numpy()[pick],
        frame["pred_age"].to_numpy()[pick],
        frame["p_female"].to_numpy()[pick],
        paths.SAMPLE_GRID,
    )


def write_figures(frame: pd.DataFrame, report: dict, folder: Path) -> None:
    """The same views as PNG figures, for the MLflow run."""
    figures.plot_age_scatter(frame["age"], frame["pred_age"], folder / "age_scatter.png")
    figures.plot_confusion(np.asarray(report["confusion_matrix"]), folder / "gender_confusion.png")
    by_bucket = by_bucket_table(report)
    for metric in figures.BUCKET_METRICS:
        figures.plot_by_bucket(by_bucket, metric, folder / f"{metric}_by_age_bucket.png")


def headline_metrics(report: dict) -> dict[str, float]:
    """The overall scalar metrics, named `test_*` as in MLflow: metrics/evaluate.json."""
    return {
        f"test_{k}": float(v)
        for k, v in report.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def detail_report(report: dict) -> dict:
    """metrics/subgroups.json: per age bucket, gender and race, the worst groups, and the
    gender classifier's per-class figures and confusion matrix (kept out of the DVC metrics
    file so that `dvc exp show` stays readable)."""
    return report["subgroups"] | {k: report[k] for k in ("per_class", "confusion_matrix")}


def worst_groups(worst: dict) -> str:
    """E.g. 'worst age MAE: age 70+ (9.1 years), worst gender accuracy: age 0-2 (0.59)'."""
    parts = []
    for task, metric, unit in (("age", "age_mae", " years"), ("gender", "gender_accuracy", "")):
        group = worst.get(task)
        if group:
            kind = "age" if group["grouping"] == "age_bucket" else group["grouping"]
            name = metric.replace("_", " ").replace("mae", "MAE")
            parts.append(f"worst {name}: {kind} {group['group']} ({group[metric]:.2f}{unit})")
    return ", ".join(parts) or "no group large enough to name the worst"


def promote_command() -> str:
    experiment = tracking.dvc_experiment()
    return f"utkface promote --exp {experiment}" if experiment else "utkface promote"


def main() -> None:
    params = load_params()
    members = params.model.members
    test = load_split("test")
    inputs = {m: test if m == "scratch" else load_inputs(m, "test") for m in members}
    train = pd.read_parquet(paths.split_table("train"), columns=["age", "augmented"])
    train_ages = train.loc[~train["augmented"], "age"].to_numpy()
    families = {m: load_family(m, paths.served_file(m)) for m in members}
    interval = AgeInterval.from_config(json.loads(paths.AGE_INTERVAL.read_text()))
    frame = predict_split(families, inputs, params.validate_.age_max, interval)
    report = evaluation_report(frame, params.age_buckets)
    report["baseline_age_mae"] = median_baseline_mae(train_ages, frame["age"].to_numpy())
    metrics, detail = headline_metrics(report), detail_report(report)
    paths.EVALUATE_METRICS.parent.mkdir(parents=True, exist_ok=True)
    paths.EVALUATE_METRICS.write_text(json.dumps(metrics, indent=2) + "\n")
    paths.SUBGROUPS.write_text(json.dumps(detail, indent=2) + "\n")
    write_plot_tables(frame, report, test, params)

    lineage = json.loads(paths.TRAIN_RUN.read_text())
    experiment_id = tracking.use_experiment(tracking.TRAIN_EXPERIMENT)
    with stage_run("evaluate", experiment_id, run_id=lineage["run_id"]):
        mlflow.log_metrics(metrics)
        mlflow.log_dict(metrics, "evaluation/evaluate.json")
        mlflow.log_dict(detail, "evaluation/subgroups.json")
        mlflow.log_artifacts(str(paths.EVALUATE_PLOTS), "evaluation")
        with tempfile.TemporaryDirectory() as folder:
            write_figures(frame, report, Path(folder))
            mlflow.log_artifacts(folder, "evaluation")
        tags = tracking.lineage_tags(lineage["data_version"])
        config = serving_config(params, families, interval)
        info = log_serving_model(
            paths.MODEL,
            config,
            test.images[:2],
            lineage=tags | {"train_run_id": lineage["run_id"]},
        )
        trained = json.loads(paths.TRAIN_METRICS.read_text())
        validation = {k: trained[k] for k in (VAL_AGE_MAE, VAL_GENDER_ACCURACY)}
        version = registry.register(
            run_id=lineage["run_id"],
            model_uri=info.model_uri,
            model_name=params.register_.model_name,
            metrics=metrics | validation,  # validation ranks versions for `utkface promote`
            lineage=tags,
            card=registry.ModelCardFacts(
                backbone=params.model.backbone,
                trained_on=config.trained_on,
                training_images=len(train_ages),
                synthetic=params.ingest.is_synthetic,
                age_bands=detail["age_bucket"],
            ),
        )
    paths.REGISTERED.write_text(
        json.dumps(
            {
                "model_name": params.register_.model_name,
                "version": int(version.version),
                "alias": "challenger",
                "run_id": lineage["run_id"],
            },
            indent=2,
        )
        + "\n"
    )
    print(
        f"evaluate: test age MAE {report['age_mae']:.2f} years (predicting the median: "
        f"{report['baseline_age_mae']:.2f}), gender accuracy {report['gender_accuracy']:.3f}; "
        f"{worst_groups(detail['worst'])}; registered {params.register_.model_name} "
        f"v{version.version} as challenger (promote with: {promote_command()})"
    )


if __name__ == "__main__":
    run_main("evaluate", main)
