"""Stage `train`: where the learning rate comes from, the per-epoch table and its best epoch, and
`main()` in a tiny project: model, metrics, history, run record and a complete MLflow run."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from pydantic import ValidationError
from tiny import LEARNING_RATES, tiny_project

from stages import train
from utkface import paths
from utkface.data.dataset import load_split
from utkface.mlops import tracking
from utkface.model import training
from utkface.params import EarlyStoppingParams, ModelParams, Tuned, TunedValues, parse_params

# --- learning rate ----------------------------------------------------------------------------

TUNED = TunedValues(lr=0.005, model={"dropout": 0.4})
SCRATCH = paths.member_model("scratch")  # TINY_PARAMS train the scratch CNN


def test_a_number_in_params_wins_over_the_tuner() -> None:
    assert training.resolve_lr(0.0005, TUNED) == (0.0005, "params")
    assert training.resolve_lr(0.0005, None) == (0.0005, "params")


def test_null_lr_uses_the_tuners_best() -> None:
    lr, source = training.resolve_lr(None, TUNED)
    assert (lr, source) == (0.005, "tune")


def test_null_lr_without_a_tuned_lr_says_how_to_set_one() -> None:
    with pytest.raises(ValueError, match="dvc exp run -S lr=") as error:
        training.resolve_lr(None, None)
    assert "tune" in str(error.value)


@pytest.mark.parametrize(
    "handover",
    [{}, {"model": {"dropout": 0.2}}, {"lr": 2.0}, {"lr": 0.01, "model": {"dropout": "high"}}],
)
def test_a_malformed_tuned_handover_is_refused(handover: dict) -> None:
    with pytest.raises(ValidationError):
        TunedValues.model_validate(handover).model_params(ModelParams())


def test_tuned_knobs_override_the_model_params() -> None:
    assert TUNED.model_params(ModelParams(dropout=0.1, dense_units=8)) == ModelParams(
        dropout=0.4, dense_units=8
    )


def test_auto_lr_in_params_is_resolved_like_null() -> None:
    for value in (None, "auto"):
        params = parse_params({"lr": value})
        assert training.resolve_lr(params.fixed_lr, TUNED) == (0.005, "tune")
    assert training.resolve_lr(parse_params({"lr": 0.002}).fixed_lr, TUNED) == (0.002, "params")


CNN_KEYS = set(ModelParams.model_fields) - {"family", "head", "finetune"}


@pytest.mark.parametrize(
    ("family", "keys"),
    [
        ("pretrained", {"family", "head"}),
        ("finetuned", {"family", "head", "finetune"}),
        ("scratch", {"family", *CNN_KEYS}),
    ],
)
def test_the_logged_model_params_are_those_of_the_family_trained(family, keys) -> None:
    tuned = Tuned(
        pretrained=TunedValues(lr=0.01, model={"units": 64}),
        finetuned=TunedValues(lr=0.01, model={"views": 1}),  # its search tunes model.finetune
        scratch=TUNED,
    )
    logged = training.effective_model_params(parse_params({"model": {"family": family}}), tuned)
    assert set(logged) == keys and logged["family"] == family
    if "head" in keys:  # the head of the family that answers from it, with what tune found
        assert logged["head"]["units"] == (256 if family == "finetuned" else 64)
    if "finetune" in keys:
        assert logged["finetune"]["views"] == 1
    if "dropout" in keys:
        assert logged["dropout"] == 0.4


# --- history ----------------------------------------------------------------------------------

HISTORY = {
    "loss": [9.0, 7.0, 8.0, 8.5],
    "val_loss": [10.0, 6.0, 6.5, 7.0],
    "val_age_mae": [12.0, 9.0, 8.0, 8.5],
    "val_gender_accuracy": [0.5, 0.7, 0.72, 0.71],
}


def test_history_table_numbers_epochs_from_one() -> None:
    table = training.history_table(HISTORY)
    assert table.columns[0] == "epoch"
    assert table["epoch"].tolist() == [1, 2, 3, 4]
    assert table["val_loss"].tolist() == HISTORY["val_loss"]


def test_best_epoch_metrics_picks_the_minimum_of_the_monitor() -> None:
    table = training.history_table(HISTORY)
    best = training.best_epoch_metrics(table, EarlyStoppingParams())
    assert best == {
        "epoch": 2.0,
        "loss": 7.0,
        "val_loss": 6.0,
        "val_age_mae": 9.0,
        "val_gender_accuracy": 0.7,
        "epochs_run": 4,
    }
    by_age = EarlyStoppingParams(monitor="val_age_mae")
    assert training.best_epoch_metrics(table, by_age)["epoch"] == 3.0
    first_of_ties = training.history_table({"val_loss": [3.0, 1.0, 1.0]})
    assert training.best_epoch_metrics(first_of_ties, EarlyStoppingParams())["epoch"] == 2.0


def test_best_epoch_metrics_ignores_epochs_before_start_from_epoch() -> None:
    table = training.history_table(HISTORY)
    late = training.best_epoch_metrics(table, EarlyStoppingParams(start_from_epoch=2))
    assert late["epoch"] == 3.0  # epoch 2 is better but was never watched
    never_watched = training.best_epoch_metrics(table, EarlyStoppingParams(start_from_epoch=9))
    assert never_watched["epoch"] == 4.0  # nothing restored: the last epoch's weights


# --- main -------------------------------------------------------------------------------------


def test_main_without_lr_or_tune_results_fails_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = MlflowClient(tiny_project(tmp_path, monkeypatch))
    with pytest.raises(ValueError, match="dvc exp run -S lr="):
        train.main()
    assert not (tmp_path / paths.MODEL).exists()
    experiments = [e.experiment_id for e in client.search_experiments()]
    assert experiments == ["0"]  # no run started: not even the project's experiment exists
    assert client.search_runs(experiments) == []


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """train.main() once in a tiny project with a fixed lr (3 epochs)."""
    root = tmp_path_factory.mktemp("train")
    with pytest.MonkeyPatch.context() as patch:
        uri = tiny_project(root, patch, {"lr": 0.003, "train": {"epochs": 3}})
        patch.setenv("DVC_EXP_NAME", "tiny-exp")
        train.main()
    return root, uri


def test_main_writes_model_metrics_history_and_run_record(trained: tuple[Path, str]) -> None:
    root, _ = trained
    for path in (SCRATCH, paths.TRAIN_METRICS, paths.TRAIN_HISTORY, paths.TRAIN_RUN):
        assert (root / path).is_file(), path
    history = pd.read_csv(root / paths.TRAIN_HISTORY)
    assert history["epoch"].tolist() == list(range(1, len(history) + 1))
    assert 1 <= len(history) <= 3
    assert {"loss", "val_loss", "age_mae", "val_age_mae", "val_gender_accuracy"} <= set(history)
    metrics = json.loads((root / paths.TRAIN_METRICS).read_text())
    assert metrics["lr_used"] == 0.003 and metrics["lr_source"] == "params"
    assert metrics["epochs_run"] == len(history)
    assert metrics["val_loss"] == pytest.approx(history["val_loss"].min())
    assert metrics["train_rows"] == len(pd.read_parquet(root / paths.split_table("train")))
    record = json.loads((root / paths.TRAIN_RUN).read_text())
    assert set(record) == {"run_id", "experiment_id", "model_uri", "data_version"}
    assert sorted(p.name for p in (root / paths.MODEL).iterdir()) == [
        "age_interval.json",
        "scratch.keras",
    ]
    interval = json.loads((root / paths.AGE_INTERVAL).read_text())
    assert interval["kind"] == "residuals"  # a point regressor: from validation residuals
    assert all(b <= 0 <= a for b, a in zip(interval["below"], interval["above"], strict=True))


def test_saved_model_predicts_like_the_logged_one(
    trained: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, uri = trained
    monkeypatch.chdir(root)
    mlflow.set_tracking_uri(uri)
    record = json.loads((root / paths.TRAIN_RUN).read_text())
    faces = load_split("val").images[:4]
    saved = keras.saving.load_model(root / SCRATCH).predict(faces, verbose=0)
    info = mlflow.models.get_model_info(record["model_uri"])
    (image_spec,) = info.signature.inputs.to_dict()
    assert tuple(image_spec["tensor-spec"]["shape"]) == (-1, 32, 32, 3)
    assert image_spec["tensor-spec"]["dtype"] == "uint8"
    assert {spec["name"] for spec in info.signature.outputs.to_dict()} == {"age", "gender"}
    logged = mlflow.keras.load_model(record["model_uri"]).predict(faces, verbose=0)
    served = mlflow.pyfunc.load_model(record["model_uri"]).predict(faces)
    if isinstance(served, np.ndarray) and served.ndim == 0:
        served = served.item()  # MLflow's Keras pyfunc wraps a dict of outputs in a 0-d array
    for name in ("age", "gender"):
        np.testing.assert_allclose(logged[name], saved[name], rtol=1e-5)
        np.testing.assert_allclose(np.asarray(served[name]), saved[name], rtol=1e-5)
    mirrored = keras.saving.load_model(root / SCRATCH).predict(faces[:, :, ::-1], verbose=0)
    np.testing.assert_allclose(mirrored["age"], saved["age"], atol=1e-4)  # test_time_flip: true
    np.testing.assert_allclose(mirrored["gender"], saved["gender"], atol=1e-5)
    val = load_split("val")
    on_val = keras.saving.load_model(root / SCRATCH).predict(val.images, verbose=0)
    metrics = json.loads((root / paths.TRAIN_METRICS).read_text())
    error = np.clip(on_val["age"].ravel(), 1, 116) - val.age
    assert metrics["saved_val_age_mae"] == pytest.approx(np.mean(np.abs(error)), rel=1e-4)
    assert metrics["saved_val_age_bias"] == pytest.approx(np.mean(error), rel=1e-4, abs=1e-4)


def test_main_logs_params_metrics_and_lineage_to_mlflow(trained: tuple[Path, str]) -> None:
    root, uri = trained
    client = MlflowClient(uri)
    record = json.loads((root / paths.TRAIN_RUN).read_text())
    run = client.get_run(record["run_id"])
    experiment = client.get_experiment_by_name(tracking.TRAIN_EXPERIMENT)
    assert run.info.experiment_id == experiment.experiment_id == record["experiment_id"]
    assert run.info.status == "FINISHED"

    params = run.data.params
    assert params["train.epochs"] == "3"
    assert params["model.dense_units"] == "4"
    assert float(params["lr_used"]) == 0.003 and params["lr_source"] == "params"

    epochs_run = len(pd.read_csv(root / paths.TRAIN_HISTORY))
    for name in ("loss", "val_loss", "val_age_mae", "val_gender_accuracy", "learning_rate"):
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, name))
        assert steps == list(range(epochs_run)), name
    metrics = json.loads((root / paths.TRAIN_METRICS).read_text())
    assert run.data.metrics["best_val_age_mae"] == pytest.approx(metrics["val_age_mae"])

    tags = run.data.tags
    assert tags["stage"] == "train"
    assert tags["dvc_exp_name"] == "tiny-exp"
    assert tags["git_commit"]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        assert tags["data_version"] == record["data_version"] == tracking.data_version()

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"learning_curves.png", "train_history.csv"} <= artifacts
    # the logged model's artifacts live beside the store, not in the project's cwd
    assert (root / paths.MLFLOW_ARTIFACTS).is_dir()


class _Stop(Exception):
    """Stops main() at the fit: everything before it has been decided and logged."""


def test_main_with_null_lr_trains_with_everything_tune_handed_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = tiny_project(tmp_path, monkeypatch)
    (tmp_path / paths.MODELS).mkdir()
    tuned = TunedValues(lr=LEARNING_RATES[1], model={"dense_units": 3})
    (tmp_path / paths.TUNED).write_text(Tuned(scratch=tuned).model_dump_json())
    fitted_with = []

    def fit(model_cfg, train_cfg, lr, *args, **kwargs):
        fitted_with.append((lr, model_cfg.dense_units))
        raise _Stop

    monkeypatch.setattr(training, "fit", fit)
    with pytest.raises(_Stop):
        train.main()
    assert fitted_with == [(LEARNING_RATES[1], 3)]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(tracking.TRAIN_EXPERIMENT)
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FAILED"  # the interrupted fit
    assert float(run.data.params["lr_used"]) == LEARNING_RATES[1]
    assert run.data.params["lr_source"] == "tune"
    assert run.data.params["lr"] == "None"
    assert run.data.params["model.dense_units"] == "3"
