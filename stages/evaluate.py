"""Stage `evaluate`: test-split metrics, the subgroup report, plots, and model registration.

The model is what `train` saved for `model.family`, predicted as the served model predicts
(`utkface.inference.evaluation`), each answer with the age interval train calibrated; its
coverage and width are reported overall and per group (`utkface.scoring.report`). Everything is
logged to the MLflow run of the training that produced the model (its id comes from
`models/train_run.json`), so one run shows params, learning curves, test metrics and figures.
The model is then registered as a new version aliased `challenger`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
import pandas as pd

from utkface import paths
from utkface.data.dataset import load_split
from utkface.inference.evaluation import predict_split, served_inputs, serving_config
from utkface.inference.families import load_family
from utkface.inference.pyfunc_logging import log_serving_model
from utkface.mlops import registry, tracking
from utkface.mlops.promotion import VAL_AGE_MAE, VAL_GENDER_ACCURACY
from utkface.mlops.runs import stage_run
from utkface.outputs import write_json
from utkface.params import load_params, run_main
from utkface.scoring.age_interval import AgeInterval
from utkface.scoring.metrics import evaluation_report, median_baseline_mae
from utkface.scoring.report import (
    detail_report,
    headline_metrics,
    worst_groups,
    write_figures,
    write_plot_tables,
)


def promote_command() -> str:
    experiment = tracking.dvc_experiment()
    return f"utkface promote --exp {experiment}" if experiment else "utkface promote"


def main() -> None:
    params = load_params()
    family = params.model.family
    model = load_family(family, paths.served_file(family))
    test = load_split("test")
    inputs = served_inputs(family, "test")
    train = pd.read_parquet(paths.split_table("train"), columns=["age", "augmented"])
    train_ages = train.loc[~train["augmented"], "age"].to_numpy()
    interval = AgeInterval.from_config(json.loads(paths.AGE_INTERVAL.read_text()))
    frame = predict_split(model, inputs, params.validate_.age_max, interval)
    report = evaluation_report(frame, params.age_buckets)
    report["baseline_age_mae"] = median_baseline_mae(train_ages, frame["age"].to_numpy())
    metrics, detail = headline_metrics(report), detail_report(report)
    write_json(paths.EVALUATE_METRICS, metrics)
    write_json(paths.SUBGROUPS, detail)
    write_plot_tables(frame, report, test, params)

    lineage = json.loads(paths.TRAIN_RUN.read_text())
    experiment_id = tracking.use_experiment(tracking.TRAIN_EXPERIMENT)
    with stage_run("evaluate", experiment_id, run_id=lineage["run_id"]):
        tracking.log_split_datasets(["test"], lineage["data_version"])
        mlflow.log_metrics(metrics)
        mlflow.log_dict(metrics, "evaluation/evaluate.json")
        mlflow.log_dict(detail, "evaluation/subgroups.json")
        mlflow.log_artifacts(str(paths.EVALUATE_PLOTS), "evaluation")
        with tempfile.TemporaryDirectory() as folder:
            write_figures(frame, report, Path(folder))
            mlflow.log_artifacts(folder, "evaluation")
        tags = tracking.lineage_tags(lineage["data_version"])
        config = serving_config(params, model, interval)
        lineage_tags = tags | {"train_run_id": lineage["run_id"]}
        info = log_serving_model(paths.MODEL, config, test.images, lineage=lineage_tags)
        trained = json.loads(paths.TRAIN_METRICS.read_text())
        validation = {k: trained[k] for k in (VAL_AGE_MAE, VAL_GENDER_ACCURACY)}
        version = registry.register(
            run_id=lineage["run_id"],
            model_uri=info.model_uri,
            model_name=params.register_.model_name,
            metrics=metrics | validation,  # validation ranks versions for `utkface promote`
            lineage=tags,
            card=registry.ModelCardFacts(
                family=family,
                trained_on=config.trained_on,
                training_images=len(train_ages),
                synthetic=params.ingest.is_synthetic,
                age_bands=detail["age_bucket"],
            ),
        )
    name = params.register_.model_name
    registered = {"model_name": name, "version": int(version.version), "alias": "challenger"}
    write_json(paths.REGISTERED, registered | {"run_id": lineage["run_id"]})
    print(
        f"evaluate: test age MAE {report['age_mae']:.2f} years (predicting the median: "
        f"{report['baseline_age_mae']:.2f}), gender accuracy {report['gender_accuracy']:.3f}; "
        f"{worst_groups(detail['worst'])}; registered {name} v{version.version} as challenger "
        f"(promote with: {promote_command()})"
    )


if __name__ == "__main__":
    run_main("evaluate", main)
