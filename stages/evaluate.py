"""Stage `evaluate`: test-split metrics, the subgroup report, plots, and model registration.

The model is what `train` saved for `model.backbone`: one family, or both averaged (an
ensemble), predicted exactly as the served model predicts (`utkface.inference.pyfunc`).
Everything is logged to the MLflow run of the training that produced the model (its id comes
from `models/train_run.json`), so one run shows params, learning curves, test metrics and
figures. The model is then registered as a new version aliased `challenger`.
"""

from __future__ import annotations

import json

import keras
import mlflow
import numpy as np
import pandas as pd

from utkface import paths
from utkface.data.dataset import SplitData, load_split
from utkface.data.labels import AGE, gender_labels
from utkface.inference.pyfunc import (
    P_FEMALE,
    SYNTHETIC_TRAINING,
    ServingConfig,
    combine,
    input_size,
    model_outputs,
)
from utkface.mlops import registry, tracking
from utkface.mlops.pyfunc_logging import log_serving_model
from utkface.model.fitting import load_inputs
from utkface.params import Member, Params, load_params, run_main
from utkface.scoring import figures
from utkface.scoring.metrics import (
    age_scatter_table,
    confusion_table,
    evaluation_report,
    mae_by_bucket_table,
    median_baseline_mae,
)


def predict_split(
    models: dict[Member, keras.Model], inputs: dict[Member, SplitData], age_max: int
) -> pd.DataFrame:
    """True labels beside the predicted ages (clamped) and probabilities of female, the
    families' predictions averaged as the served model does."""
    outputs = [model_outputs(model, inputs[member].images) for member, model in models.items()]
    predicted = combine(outputs, age_max)
    table = next(iter(inputs.values())).table
    frame = table[["image_id", "age", "gender", "race"]].reset_index(drop=True).copy()
    frame["pred_age"] = predicted[AGE].to_numpy()
    frame["p_female"] = predicted[P_FEMALE].to_numpy(dtype=float)
    return frame


def serving_config(params: Params, models: dict[Member, keras.Model]) -> ServingConfig:
    """The served model's config; clients crop faces to the largest input of its families."""
    sizes = [
        params.features.image_size if m == "pretrained" else input_size(model)
        for m, model in models.items()
    ]
    return ServingConfig(
        image_size=max(sizes),
        max_image_bytes=params.register_.max_image_bytes,
        max_pixels=params.ingest.max_image_pixels,
        age_max=params.validate_.age_max,
        members=tuple(models),
        face_size=params.features.image_size,
        trained_on=trained_on(params),
    )


def trained_on(params: Params) -> str:
    """What trained the model, in words, for its card and the synthetic-data warnings."""
    if params.ingest.is_synthetic:
        return SYNTHETIC_TRAINING
    return "real images"


def write_plots(frame: pd.DataFrame, report: dict, data: SplitData, params: Params) -> None:
    """DVC plot tables (drawn by dvc plots / dvc exp show) and PNG figures (for MLflow too)."""
    out = paths.EVALUATE_PLOTS
    out.mkdir(parents=True, exist_ok=True)
    age_scatter_table(frame).to_csv(paths.AGE_PREDICTIONS, index=False)
    predicted = gender_labels(frame["p_female"].to_numpy())
    confusion_table(frame["gender"], predicted).to_csv(paths.GENDER_CONFUSION, index=False)
    by_bucket = mae_by_bucket_table(report)
    by_bucket.to_csv(paths.MAE_BY_AGE_BUCKET, index=False)
    figures.plot_age_scatter(frame["age"], frame["pred_age"], out / "age_scatter.png")
    figures.plot_confusion(np.asarray(report["confusion_matrix"]), out / "gender_confusion.png")
    figures.plot_mae_by_bucket(
        by_bucket["age_bucket"].tolist(),
        by_bucket["age_mae"].tolist(),
        by_bucket["n"].tolist(),
        out / "mae_by_age_bucket.png",
    )
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


def scalar_metrics(report: dict) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in report.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def split_report(report: dict) -> tuple[dict, dict]:
    """(metrics for metrics/evaluate.json, subgroup detail for metrics/subgroups.json).

    The DVC metrics file keeps the overall figures and the worst groups, so `dvc exp show`
    stays readable; the per-group tables go to their own file (and to MLflow).
    """
    subgroups = report["subgroups"]
    headline = {k: v for k, v in report.items() if k != "subgroups"}
    headline["worst_groups"] = subgroups["worst"]
    return headline, subgroups


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


def main() -> None:
    params = load_params()
    members = params.model.members
    test = load_split("test")
    inputs = {m: test if m == "scratch" else load_inputs(m, "test") for m in members}
    train = pd.read_parquet(paths.split_table("train"), columns=["age", "augmented"])
    train_ages = train.loc[~train["augmented"], "age"].to_numpy()
    models = {m: keras.saving.load_model(paths.member_model(m), compile=False) for m in members}
    frame = predict_split(models, inputs, params.validate_.age_max)
    report = evaluation_report(frame, params.age_buckets)
    report["baseline_age_mae"] = median_baseline_mae(train_ages, frame["age"].to_numpy())
    headline, subgroups = split_report(report)
    paths.EVALUATE_METRICS.parent.mkdir(parents=True, exist_ok=True)
    paths.EVALUATE_METRICS.write_text(json.dumps(headline, indent=2) + "\n")
    paths.SUBGROUPS.write_text(json.dumps(subgroups, indent=2) + "\n")
    write_plots(frame, report, test, params)

    lineage = json.loads(paths.TRAIN_RUN.read_text())
    tracking.use_experiment(tracking.TRAIN_EXPERIMENT)
    with mlflow.start_run(run_id=lineage["run_id"]):
        mlflow.log_metrics({f"test_{k}": v for k, v in scalar_metrics(report).items()})
        mlflow.log_dict(headline, "evaluation/evaluate.json")
        mlflow.log_dict(subgroups, "evaluation/subgroups.json")
        mlflow.log_artifacts(str(paths.EVALUATE_PLOTS), "evaluation")
        tags = tracking.lineage_tags(lineage["data_version"])
        config = serving_config(params, models)
        info = log_serving_model(
            paths.MODEL,
            config,
            test.images[:2],
            lineage=tags | {"train_run_id": lineage["run_id"]},
        )
        version = registry.register(
            run_id=lineage["run_id"],
            model_uri=info.model_uri,
            model_name=params.register_.model_name,
            metrics={f"test_{k}": v for k, v in scalar_metrics(report).items()},
            lineage=tags,
            card=registry.ModelCardFacts(
                backbone=params.model.backbone,
                trained_on=config.trained_on,
                training_images=len(train_ages),
                synthetic=params.ingest.is_synthetic,
                age_bands=subgroups.get("age_bucket", []),
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
        f"{worst_groups(subgroups['worst'])}; registered {params.register_.model_name} "
        f"v{version.version} as challenger (promote with: utkface promote)"
    )


if __name__ == "__main__":
    run_main("evaluate", main)
