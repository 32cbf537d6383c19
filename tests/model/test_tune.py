"""The search (`utkface.model.search`) and stage `tune`: the combined objective, trials fitted
like `train`, one nested MLflow run per trial, the summary written to metrics/tune.json, the
hand-over to train (models/tuned.json), and `main()` in a tiny project."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import keras
import keras_tuner as kt
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from tiny import (
    KERASTUNER_ENV,
    LEARNING_RATES,
    TINY_PARAMS,
    free_port,
    split,
    tiny_project,
    with_overrides,
)

from stages import tune
from utkface import paths
from utkface.data.dataset import SplitData, load_split
from utkface.mlops import tracking
from utkface.model import fitting, search
from utkface.params import Tuned, TunedValues, load_params, parse_params

# --- objective -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mae", "accuracy", "weight", "expected"),
    [(5.0, 0.9, 10.0, 6.0), (3.0, 1.0, 10.0, 3.0), (4.0, 0.5, 0.0, 4.0), (0.0, 0.0, 2.0, 2.0)],
)
def test_combined_objective(mae: float, accuracy: float, weight: float, expected: float) -> None:
    assert search.combined_objective(mae, accuracy, weight) == pytest.approx(expected)


def test_one_accuracy_point_is_worth_a_tenth_of_a_year_at_weight_10() -> None:
    worse_gender = search.combined_objective(5.0, 0.89, 10.0)
    worse_age = search.combined_objective(5.1, 0.90, 10.0)
    assert worse_gender == pytest.approx(worse_age)


def test_objective_callback_adds_val_objective_to_the_logs() -> None:
    callback = search.ObjectiveCallback(gender_weight=10.0)
    logs = {"val_age_mae": 5.0, "val_gender_accuracy": 0.9, "loss": 1.0}
    callback.on_epoch_end(0, logs)
    assert logs[search.OBJECTIVE] == pytest.approx(6.0)
    assert logs["loss"] == 1.0


def test_objective_callback_leaves_logs_without_validation_alone() -> None:
    callback = search.ObjectiveCallback(gender_weight=10.0)
    logs = {"age_mae": 5.0, "gender_accuracy": 0.9}
    callback.on_epoch_end(0, logs)
    assert search.OBJECTIVE not in logs
    callback.on_epoch_end(0, None)  # Keras may pass no logs


# --- subsample -------------------------------------------------------------------------------


def _numbered(n: int) -> SplitData:
    """Row i has age i, gender i % 2 and an image filled with i, so alignment is checkable."""
    images = np.repeat(np.arange(n, dtype=np.uint8), 4 * 4 * 3).reshape(n, 4, 4, 3)
    table = pd.DataFrame({"row": np.arange(n)})
    return SplitData(images, np.arange(n, dtype=np.float32), np.arange(n) % 2.0, table)


def test_subsample_keeps_the_fraction_aligned_and_in_order() -> None:
    data = _numbered(40)
    part = search.subsample(data, 0.25, seed=3)
    assert len(part.age) == len(part.gender) == len(part.images) == len(part.table) == 10
    rows = part.table["row"].to_numpy()
    assert np.all(np.diff(rows) > 0)  # sorted, no repeats
    np.testing.assert_array_equal(part.age, rows)
    np.testing.assert_array_equal(part.gender, rows % 2)
    np.testing.assert_array_equal(part.images[:, 0, 0, 0], rows)


def test_subsample_is_deterministic_per_seed() -> None:
    data = _numbered(40)
    first = search.subsample(data, 0.5, seed=3).table["row"].tolist()
    assert search.subsample(data, 0.5, seed=3).table["row"].tolist() == first
    assert search.subsample(data, 0.5, seed=4).table["row"].tolist() != first


def test_subsample_full_fraction_returns_everything_and_tiny_keeps_one() -> None:
    data = _numbered(10)
    assert search.subsample(data, 1.0, seed=0) is data
    assert len(search.subsample(data, 0.01, seed=0).age) == 1


# --- hypermodel and tuner choice -------------------------------------------------------------


def test_hypermodel_builds_the_chosen_lr_and_search_space_knobs() -> None:
    params = parse_params(
        with_overrides(TINY_PARAMS, {"tune": {"search_space": {"dense_units": [3, 5]}}})
    )
    train = split(8)
    train.age[:] = 40.0  # the age bias starts at the training median
    hypermodel = search.DualHeadHyperModel(params, "scratch", train)
    hp = kt.HyperParameters()
    hp.values.update({"lr": 0.01, "dense_units": 5})
    model = hypermodel.build(hp)
    assert hp.get("lr") == 0.01
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert [layer.units for layer in dense] == [5, 1, 1]
    assert model.get_layer("age").bias.numpy() == pytest.approx([40.0])


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("random", kt.RandomSearch),
        ("bayesian", kt.BayesianOptimization),
        ("hyperband", kt.Hyperband),
    ],
)
def test_make_tuner_picks_the_configured_tuner(
    name: str, expected: type, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for variable in KERASTUNER_ENV:
        monkeypatch.delenv(variable, raising=False)
    params = parse_params(
        with_overrides(TINY_PARAMS, {"tune": {"tuner": name, "max_trials": 3, "epochs": 4}})
    )
    hypermodel = search.DualHeadHyperModel(params, "scratch", split(8))
    tuner = search.make_tuner(params, hypermodel)
    assert isinstance(tuner, expected)
    assert tuner.oracle.objective.name == search.OBJECTIVE
    assert tuner.oracle.objective.direction == "min"
    if name == "hyperband":
        assert tuner.oracle.max_epochs == 4
    else:
        assert tuner.oracle.max_trials == 3
    assert Path(tuner.project_dir).resolve() == (tmp_path / paths.TUNER_DIR / "scratch").resolve()
    lr = tuner.oracle.get_space().get_config()["space"][0]["config"]
    assert lr["name"] == "lr" and lr["values"] == LEARNING_RATES


def test_worker_tuner_keeps_the_shared_tuner_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    running = tmp_path / paths.TUNER_DIR / "scratch" / "trial_00" / "checkpoint.weights.h5"
    running.parent.mkdir(parents=True)
    running.write_bytes(b"weights another worker is writing")
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "tuner1")
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", str(free_port()))  # nothing listens: no call
    params = parse_params(TINY_PARAMS)
    tuner = search.make_tuner(params, search.DualHeadHyperModel(params, "scratch", split(8)))
    assert type(tuner.oracle).__name__ == "OracleClient"  # really a worker
    assert running.exists()


def test_chief_reports_the_trials_it_hands_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from keras_tuner.src.distribute import oracle_chief

    tiny_project(tmp_path, monkeypatch)
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "chief")
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", str(free_port()))
    monkeypatch.setattr(oracle_chief, "start_server", lambda oracle: None)  # serve nobody
    params = load_params()
    tuner = search.search(params, load_split("train"), load_split("val"))
    capsys.readouterr()
    trial = tuner.oracle.create_trial("tuner0")  # what a worker's CreateTrial request does
    assert trial.status == "RUNNING"
    assert "Running Trial #1" in capsys.readouterr().out


def test_trials_fit_with_the_schedule_and_callbacks_of_train(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tune_cfg = {"epochs": 3, "max_trials": 1, "learning_rates": [0.01]}
    uri = tiny_project(tmp_path, monkeypatch, {"tune": tune_cfg, "train": {"warmup_epochs": 1}})
    params = load_params()
    train = load_split("train")
    tracking.use_experiment(tracking.TUNE_EXPERIMENT)
    with mlflow.start_run() as parent:
        tune.tracked_search(params, "scratch", train, load_split("val"), parent.info.run_id)
    client = MlflowClient(uri)
    (trial,) = _trial_runs(client, parent.info.run_id)
    history = client.get_metric_history(trial.info.run_id, "learning_rate")
    logged = [m.value for m in sorted(history, key=lambda m: m.step)]
    steps = math.ceil(len(train.age) / params.train.batch_size)  # train_fraction is 1
    schedule = fitting.learning_rate(params.train, 0.01, 3, steps)
    expected = [float(schedule(steps * epoch)) for epoch in (1, 2, 3)]
    assert logged == pytest.approx(expected, rel=1e-5)
    assert logged[0] > logged[1] > logged[2]  # decaying after the warm-up: not a constant rate


# --- summarize -------------------------------------------------------------------------------


def test_summarize_refuses_a_search_without_completed_trials() -> None:
    failed = SimpleNamespace(
        trial_id="00",
        status="FAILED",
        hyperparameters=SimpleNamespace(values={"lr": 0.01}),
        best_step=0,
        metrics=SimpleNamespace(exists=lambda name: False),
        score=None,
        message="ValueError: boom",
    )
    tuner = SimpleNamespace(oracle=SimpleNamespace(trials={"00": failed}))
    with pytest.raises(RuntimeError, match="no trial completed") as error:
        tune.summarize(tuner, parse_params(TINY_PARAMS), "scratch")
    assert "trial 00: ValueError: boom" in str(error.value)


# --- a real search ---------------------------------------------------------------------------


def _trial_runs(client: MlflowClient, parent_id: str) -> list:
    parent = client.get_run(parent_id)
    return client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
    )


@pytest.mark.slow
def test_search_runs_one_nested_mlflow_run_per_trial_and_summarizes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = tiny_project(tmp_path, monkeypatch, {"tune": {"epochs": 2}})
    params = load_params()
    tracking.use_experiment(tracking.TUNE_EXPERIMENT)
    train, val = load_split("train"), load_split("val")
    with mlflow.start_run(run_name="tune") as parent:
        tuner = tune.tracked_search(params, "scratch", train, val, parent.info.run_id)
        summary = tune.summarize(tuner, params, "scratch")

    trials = summary["trials"]
    assert len(trials) == 2
    assert {t["status"] for t in trials} == {"COMPLETED"}
    assert sorted(t["hyperparameters"]["lr"] for t in trials) == LEARNING_RATES
    for row in trials:
        assert row["best_epoch"] in (0, 1)
        # the score is the combined objective of the best epoch's metrics
        assert row[search.OBJECTIVE] == pytest.approx(
            search.combined_objective(row["val_age_mae"], row["val_gender_accuracy"], 10.0),
            rel=1e-5,
        )
    best = min(trials, key=lambda row: row[search.OBJECTIVE])
    assert summary["best"] == best["hyperparameters"]
    assert summary["best"]["lr"] in LEARNING_RATES
    assert summary["best_" + search.OBJECTIVE] == best[search.OBJECTIVE]
    assert summary["best_val_age_mae"] == best["val_age_mae"]
    assert "seconds" not in summary and "mlflow_run_id" not in summary  # MLflow's, not DVC's
    assert summary["tuner"] == "random"
    json.dumps(summary)  # what main() writes to metrics/tune.json

    client = MlflowClient(uri)
    runs = _trial_runs(client, parent.info.run_id)
    assert len(runs) == 2
    assert sorted(float(r.data.params["lr"]) for r in runs) == LEARNING_RATES
    by_lr = {float(t["hyperparameters"]["lr"]): t for t in trials}
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.tags["stage"] == "tune"
        assert run.data.tags["tuner_id"] == "tuner0"
        history = client.get_metric_history(run.info.run_id, search.OBJECTIVE)
        assert sorted(m.step for m in history) == [0, 1]  # one value per epoch
        for name in ("val_age_mae", "val_gender_accuracy", "age_mae", "loss", "learning_rate"):
            assert len(client.get_metric_history(run.info.run_id, name)) == 2, name
        row = by_lr[float(run.data.params["lr"])]
        assert run.data.metrics["best_" + search.OBJECTIVE] == pytest.approx(
            min(m.value for m in history)
        )
        assert run.data.metrics["best_" + search.OBJECTIVE] == pytest.approx(row[search.OBJECTIVE])
        assert run.data.tags["trial_id"] == row["trial_id"]


@pytest.mark.slow
def test_main_single_process_writes_tune_json_and_a_parent_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = tiny_project(tmp_path, monkeypatch)
    stale = tmp_path / paths.TUNER_DIR / "old-search" / "oracle.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")

    tune.main()

    summary = json.loads((tmp_path / paths.TUNE_METRICS).read_text())
    assert len(summary["trials"]) == 2
    assert {t["status"] for t in summary["trials"]} == {"COMPLETED"}
    assert summary["best"]["lr"] in LEARNING_RATES
    assert math.isfinite(summary["best_" + search.OBJECTIVE])
    tuned = Tuned.model_validate_json((tmp_path / paths.TUNED).read_text())
    assert tuned == Tuned(scratch=TunedValues(lr=summary["best"]["lr"], model={}))
    assert not stale.exists()  # the tuner folder starts afresh
    assert (tmp_path / paths.TUNER_DIR / "scratch" / "oracle.json").is_file()

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(tracking.TUNE_EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], "tags.stage = 'tune'")
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]  # not its trials
    assert parent.data.metrics["seconds"] > 0  # timings go to MLflow, not metrics/tune.json
    assert parent.info.experiment_id == experiment.experiment_id
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["stage"] == "tune"
    assert parent.data.tags["data_version"] == tracking.data_version()
    assert tune.ORACLE_TAG not in parent.data.tags  # only a chief announces an oracle
    assert parent.data.params["tune.max_trials"] == "2"
    assert float(parent.data.params["best.lr"]) == summary["best"]["lr"]
    assert parent.data.metrics["best_" + search.OBJECTIVE] == pytest.approx(
        summary["best_" + search.OBJECTIVE]
    )
    assert "tune.json" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert len(_trial_runs(client, parent.info.run_id)) == 2
