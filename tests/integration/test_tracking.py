"""MLflow wiring: the repository root seen from DVC's queue workspaces, the tracking store, the
experiment (artifacts beside a SQLite store), lineage tags, flattened params, per-epoch logging."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
import yaml
from dvc_data.hashfile import hash as dvc_hash
from dvc_project import clean_env, committed_and_reproduced, run
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from tiny import new_store

from utkface import tensorflow_build
from utkface.cli import predict as predict_command
from utkface.mlops import tracking
from utkface.mlops.keras_logging import EpochLogger, log_keras_model
from utkface.mlops.store import repo_root, tracking_uri
from utkface.model.age_network import ChannelAffine
from utkface.model.fitting import LearningRateInLogs
from utkface.model.network import build_model, compile_model
from utkface.params import ModelParams, TrainParams

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    uri = new_store(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return uri


# --- repository root and store ----------------------------------------------------------------


def test_repo_root_of_a_dvc_queue_workspace_is_the_repository(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    workspace = repo / ".dvc" / "tmp" / "exps" / "tmpabc" / "sub"
    assert repo_root(workspace) == repo.resolve()
    assert repo_root(repo / ".dvc" / "tmp" / "exps" / "tmpabc") == repo.resolve()


def test_repo_root_outside_a_queue_workspace_is_the_folder_itself(tmp_path: Path) -> None:
    assert repo_root(tmp_path / "repo" / "sub") == (tmp_path / "repo" / "sub").resolve()
    # .dvc/tmp alone (not exps) is not a queue workspace
    other = tmp_path / "repo" / ".dvc" / "tmp" / "other"
    assert repo_root(other) == other.resolve()


def test_repo_root_defaults_to_the_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    workspace = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpq1w2"
    workspace.mkdir(parents=True)
    monkeypatch.chdir(workspace)
    assert repo_root() == (tmp_path / "repo").resolve()


def test_tracking_uri_honours_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracking_uri() == "http://mlflow.example:5000"


def test_tracking_uri_defaults_to_sqlite_at_the_repository_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    workspace = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpabc"
    workspace.mkdir(parents=True)
    monkeypatch.chdir(workspace)
    assert tracking_uri() == f"sqlite:///{(tmp_path / 'repo').resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # empty counts as unset
    assert tracking_uri().endswith("/repo/mlflow.db")


# --- experiments ------------------------------------------------------------------------------


def test_use_experiment_keeps_artifacts_beside_the_sqlite_store(store: str, tmp_path: Path) -> None:
    experiment_id = tracking.use_experiment("tests-tracking")
    experiment = MlflowClient(store).get_experiment(experiment_id)
    assert experiment.name == "tests-tracking"
    assert experiment.artifact_location == (tmp_path / "mlartifacts").as_uri()
    assert mlflow.get_tracking_uri() == store
    with mlflow.start_run() as run:  # lands in the selected experiment
        mlflow.log_text("hello", "note.txt")
    assert run.info.experiment_id == experiment_id
    logged = list((tmp_path / "mlartifacts").rglob("note.txt"))
    assert len(logged) == 1 and logged[0].read_text() == "hello"


def test_use_experiment_reuses_an_existing_experiment(store: str) -> None:
    first = tracking.use_experiment("tests-tracking")
    tracking.use_experiment("another")
    assert tracking.use_experiment("tests-tracking") == first
    assert mlflow.get_experiment(first).name == "tests-tracking"
    with mlflow.start_run() as run:
        pass
    assert run.info.experiment_id == first


def test_experiments_are_tagged_as_model_training(store: str) -> None:
    created = tracking.use_experiment("tests-kind")
    older = MlflowClient(store).create_experiment("tests-untagged")  # as an old version made it
    tracking.use_experiment("tests-untagged")
    for experiment_id in (created, older):
        tags = MlflowClient(store).get_experiment(experiment_id).tags
        assert tags["mlflow.experimentKind"] == "custom_model_development"


def test_use_experiment_with_a_relative_sqlite_uri(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    experiment_id = tracking.use_experiment("tests-relative")
    experiment = mlflow.get_experiment(experiment_id)
    assert experiment.artifact_location == (tmp_path / "mlartifacts").as_uri()


def test_use_experiment_when_another_process_created_it_meanwhile(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    existing = MlflowClient(store).create_experiment("tests-race")
    # This process looked before the other one created it:
    monkeypatch.setattr(mlflow, "get_experiment_by_name", lambda name: None)
    assert tracking.use_experiment("tests-race") == existing


# --- lineage ----------------------------------------------------------------------------------


def test_data_version_changes_exactly_when_a_file_changes(tmp_path: Path) -> None:
    files = [tmp_path / "images.npy", tmp_path / "train.parquet"]
    files[0].write_bytes(b"\x00" * 3_000_000)  # over one read chunk
    files[1].write_bytes(b"rows")
    version = tracking.data_version(files)
    assert re.fullmatch(r"[0-9a-f]{32}", version)
    assert tracking.data_version(files) == version
    files[1].write_bytes(b"rowz")
    changed = tracking.data_version(files)
    assert changed != version
    files[1].write_bytes(b"rows")
    assert tracking.data_version(files) == version
    data = bytearray(files[0].read_bytes())
    data[-1] = 1  # a byte in the last chunk
    files[0].write_bytes(bytes(data))
    assert tracking.data_version(files) != version


def test_data_version_reads_the_image_cache_and_the_splits_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError):
        tracking.data_version()
    (tmp_path / "data" / "ingested").mkdir(parents=True)
    (tmp_path / "data" / "split").mkdir(parents=True)
    (tmp_path / "data" / "ingested" / "images.npy").write_bytes(b"images")
    for name in ("train", "val", "test"):
        (tmp_path / "data" / "split" / f"{name}.parquet").write_bytes(name.encode())
    version = tracking.data_version()
    (tmp_path / "data" / "split" / "test.parquet").write_bytes(b"other test rows")
    assert tracking.data_version() != version


WRITE_DATA = """\
from pathlib import Path
import pandas as pd
Path("data/ingested").mkdir(parents=True, exist_ok=True)
Path("data/split").mkdir(parents=True, exist_ok=True)
Path("data/ingested/images.npy").write_bytes(b"images")
for i, name in enumerate(("train", "val", "test")):
    table = pd.DataFrame({"index": [i, i + 3], "age": [20 + i, 40], "gender": [0, 1]})
    table.to_parquet(f"data/split/{name}.parquet", index=False)
"""
STAGE = """\
import json
from utkface.mlops import tracking
report = {"changed": tracking.changed_params(), "version": tracking.data_version()}
open("report.json", "w").write(json.dumps(report))
"""


def _write_data(root: Path) -> None:
    """An image cache and three split tables where the stages write them."""
    subprocess.run([sys.executable, "-c", WRITE_DATA], cwd=root, check=True)


def test_split_tables_are_logged_as_mlflow_datasets(store: str, tmp_path: Path) -> None:
    _write_data(tmp_path)
    tracking.use_experiment("tests-tracking")
    with mlflow.start_run() as run:
        tracking.log_split_datasets(["train", "val"], "v1")
    inputs = MlflowClient(store).get_run(run.info.run_id).inputs.dataset_inputs
    logged = {i.dataset.name: (i.dataset, {t.key: t.value for t in i.tags}) for i in inputs}
    assert sorted(logged) == ["train", "val"]
    table = tmp_path / "data" / "split" / "train.parquet"
    train, tags = logged["train"]
    assert train.digest == hashlib.md5(table.read_bytes()).hexdigest()
    assert train.source_type == "local"
    assert '"num_rows": 2' in train.profile
    assert tags == {"mlflow.data.context": "training", "data_version": "v1"}
    assert logged["val"][1]["mlflow.data.context"] == "validation"


UNIQUE_VIOLATION = (  # what MLflow's server answers the run that lost the insert race
    '(psycopg2.errors.UniqueViolation) duplicate key value violates unique constraint "dataset_pk"'
)


def test_a_split_another_run_inserted_at_the_same_moment_is_still_logged(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_data(tmp_path)
    log_input, refused = mlflow.log_input, []

    def lose_the_first_insert_race(*args: object, **kwargs: object) -> None:
        if not refused:
            refused.append(kwargs["context"])
            raise MlflowException(UNIQUE_VIOLATION)
        log_input(*args, **kwargs)

    monkeypatch.setattr(mlflow, "log_input", lose_the_first_insert_race)
    tracking.use_experiment("tests-tracking")
    with mlflow.start_run() as run:
        tracking.log_split_datasets(["train", "val"], "v1")
    inputs = MlflowClient(store).get_run(run.info.run_id).inputs.dataset_inputs
    assert refused == ["training"]
    assert sorted(i.dataset.name for i in inputs) == ["train", "val"]


def test_other_dataset_errors_are_not_retried(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_data(tmp_path)
    calls = []

    def refuse(*args: object, **kwargs: object) -> None:
        calls.append(kwargs["context"])
        raise MlflowException("the server is read-only")

    monkeypatch.setattr(mlflow, "log_input", refuse)
    tracking.use_experiment("tests-tracking")
    with mlflow.start_run(), pytest.raises(MlflowException, match="read-only"):
        tracking.log_split_datasets(["train"], "v1")
    assert calls == ["training"]


@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git and DVC project whose `data` stage writes the image cache and the splits (as
    outputs: a file and a folder) and whose `report` stage asks `tracking` for the changed
    params and the data version while DVC runs it; reproduced and committed."""
    root = tmp_path_factory.mktemp("dvc-project")
    env = clean_env()
    (root / "params.yaml").write_text("seed: 42\nlr: null\n")
    (root / "make_data.py").write_text(WRITE_DATA)
    (root / "report.py").write_text(STAGE)
    stages = {
        "data": {
            "cmd": "python make_data.py",
            "deps": ["make_data.py"],
            "outs": ["data/ingested/images.npy", "data/split"],
        },
        "report": {
            "cmd": "python report.py",
            "deps": ["report.py", "data/ingested/images.npy", "data/split"],
            "params": ["seed"],
            "outs": [{"report.json": {"cache": False}}],
        },
    }
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    run(["git", "init", "-q", "-b", "main"], root, env)
    run(["dvc", "init", "-q"], root, env)
    return committed_and_reproduced(root, env)


def test_the_data_version_is_made_of_the_md5s_dvc_records(
    dvc_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Untouched since `dvc repro`: the md5s are those in dvc.lock, from DVC's state database
    without reading a file again, and equal to hashing the files, as outside DVC."""
    lock = yaml.safe_load((dvc_project / "dvc.lock").read_text())
    (images,) = [o for o in lock["stages"]["data"]["outs"] if o["path"].endswith("images.npy")]
    monkeypatch.chdir(dvc_project)
    with monkeypatch.context() as reading:
        reading.setattr(dvc_hash, "file_md5", _unexpected_read)
        md5s = tracking.file_md5s()
        version = tracking.data_version()
    assert md5s[Path("data/ingested/images.npy")] == images["md5"]
    for path, md5 in md5s.items():
        assert md5 == hashlib.md5(path.read_bytes()).hexdigest(), path
    reported = json.loads((dvc_project / "report.json").read_text())
    assert reported["version"] == version  # what the stage found under `dvc repro`
    outside = shutil.copytree(dvc_project / "data", tmp_path / "plain" / "data")
    monkeypatch.chdir(outside.parent)  # no DVC: the files are hashed
    assert tracking.data_version() == version


def _edit_in_place(path: Path, first_byte: bytes) -> bytes:
    """Overwrite the file's first byte, keeping its size and inode; its new content."""
    with path.open("r+b") as handle:
        handle.write(first_byte)
    return path.read_bytes()


def test_a_same_size_edit_changes_the_data_version(
    dvc_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An edit that keeps a file's size (and inode) after DVC's state database holds its md5:
    the image cache's new md5 is the one `dvc commit` then records; a split table's too."""
    copy = shutil.copytree(dvc_project, tmp_path / "copy", symlinks=True)
    env = clean_env()
    monkeypatch.chdir(copy)
    images, table = Path("data/ingested/images.npy"), Path("data/split/test.parquet")
    for path in (images, table):  # a file of its own: DVC may have linked it to its cache
        data = path.read_bytes()
        path.unlink()
        path.write_bytes(data)
    recorded = tracking.data_version()  # DVC's state database now holds every file's md5
    edited = _edit_in_place(images, b"I")
    assert len(edited) == len(b"images")
    md5s = tracking.file_md5s()
    assert md5s[images] == hashlib.md5(b"Images").hexdigest()
    run(["dvc", "commit", "--force", "data"], copy, env)
    lock = yaml.safe_load((copy / "dvc.lock").read_text())
    (out,) = [o for o in lock["stages"]["data"]["outs"] if o["path"] == images.as_posix()]
    assert md5s[images] == out["md5"]
    after_images = tracking.data_version()
    assert after_images != recorded
    table_bytes = _edit_in_place(table, b"X")
    assert tracking.file_md5s()[table] == hashlib.md5(table_bytes).hexdigest()
    assert tracking.data_version() not in (recorded, after_images)


@pytest.mark.slow
def test_a_stage_run_by_dvc_sees_the_params_dvc_exp_run_set(
    dvc_project: Path, tmp_path: Path
) -> None:
    """`tracking.changed_params` asks DVC while `dvc repro` / `dvc exp run` hold the
    repository's lock."""
    assert json.loads((dvc_project / "report.json").read_text())["changed"] == {}
    copy = shutil.copytree(dvc_project, tmp_path / "copy", symlinks=True)
    env = clean_env()
    run(["dvc", "exp", "run", "-S", "seed=3", "-S", "lr=0.0005"], copy, env)
    assert json.loads((copy / "report.json").read_text())["changed"] == {
        "lr": 0.0005,
        "seed": 3,
    }


def _unexpected_read(path: str, *args: object, **kwargs: object) -> str:
    raise AssertionError(f"{path} was read although DVC's state database holds its md5")


def test_lineage_tags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.chdir(REPO)
    tags = tracking.lineage_tags("abc")
    assert tags["data_version"] == "abc"
    assert tags["dvc_exp_name"] == "workspace"
    assert re.fullmatch(r"[0-9a-f]{40}", tags["git_commit"])
    assert tags["git_changes"]
    monkeypatch.setenv("DVC_EXP_NAME", "sunny-lark")
    monkeypatch.chdir(tmp_path)  # not a git repository
    tags = tracking.lineage_tags("abc")
    assert tags["dvc_exp_name"] == "sunny-lark"
    assert tags["git_commit"] == "unknown"
    assert tags["git_changes"] == "none"


def test_no_params_changes_outside_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    monkeypatch.chdir(tmp_path)
    assert tracking.changed_params() == {}
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    assert tracking.changed_params() == {}


def _git(root: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=root,
        check=True,
        capture_output=True,
    )


@pytest.fixture
def committed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git and DVC repository with params.yaml, a module and a metrics file committed."""
    (tmp_path / "params.yaml").write_text("seed: 42\nlr: null\ntrain: {epochs: 60}\n")
    (tmp_path / "stage.py").write_text("x = 1\n")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "evaluate.json").write_text("{}\n")
    _git(tmp_path, "init", "-q")
    subprocess.run(["dvc", "init", "-q"], cwd=tmp_path, check=True)
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-q", "-m", "base")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    return tmp_path


def test_a_clean_checkout_has_no_changes(committed: Path) -> None:
    assert tracking.changed_params() == {}
    assert tracking.workspace_changes() == "none"
    assert tracking.run_name("train") == f"train @{tracking.git_commit()[:7]}"


def test_changes_name_the_params_dvc_exp_run_set_not_the_files_dvc_rewrites(
    committed: Path,
) -> None:
    """`dvc exp run -S` rewrites params.yaml, and the stages rewrite dvc.lock and metrics/: a
    run says which params differ, not a bare '-dirty'."""
    (committed / "params.yaml").write_text("seed: 3\nlr: 0.0005\ntrain: {epochs: 60}\n")
    (committed / "metrics" / "evaluate.json").write_text('{"test_age_mae": 5.0}\n')
    assert tracking.changed_params() == {"lr": 0.0005, "seed": 3}
    assert tracking.workspace_changes() == "params: lr=0.0005, seed=3"
    assert tracking.run_name("train") == "train lr=0.0005, seed=3"
    (committed / "stage.py").write_text("x = 2\n")
    assert tracking.workspace_changes() == "params: lr=0.0005, seed=3; files: stage.py"


def test_a_dvc_experiment_names_the_run(committed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (committed / "params.yaml").write_text("seed: 42\nlr: 0.002\ntrain: {epochs: 60}\n")
    monkeypatch.setenv("DVC_EXP_NAME", "bulky-tick")
    assert tracking.run_name("train") == "bulky-tick"
    assert tracking.lineage_tags("v")["dvc_exp_name"] == "bulky-tick"
    assert tracking.lineage_tags("v")["git_changes"] == "params: lr=0.002"


def test_long_lists_of_changes_are_shortened(committed: Path) -> None:
    keys = "\n".join(f"k{i}: {i}" for i in range(6))
    (committed / "params.yaml").write_text(f"seed: 42\nlr: null\ntrain: {{epochs: 60}}\n{keys}\n")
    assert tracking.run_name("train") == "train k0=0, k1=1, k2=2 (+3 more)"
    assert tracking.workspace_changes() == "params: k0=0, k1=1, k2=2, k3=3 (+2 more)"


def test_flatten_uses_dotted_keys() -> None:
    params = {
        "seed": 42,
        "train": {"epochs": 3, "loss_weights": {"age": 1.0, "gender": 10.0}},
        "tune": {"learning_rates": [0.001, 0.01], "search_space": {}},
        "lr": None,
    }
    assert tracking.flatten(params) == {
        "seed": 42,
        "train.epochs": 3,
        "train.loss_weights.age": 1.0,
        "train.loss_weights.gender": 10.0,
        "tune.learning_rates": [0.001, 0.01],
        "lr": None,
    }
    assert tracking.flatten({}) == {}
    assert type(tracking.flatten({"n": 1})["n"]) is int  # a Python value, not NumPy's


# --- per-epoch logging ------------------------------------------------------------------------


def test_epoch_logger_logs_every_epoch_with_the_learning_rate(store: str) -> None:
    """EpochLogger logs what the logs hold; LearningRateInLogs, placed before it, adds the rate."""
    tracking.use_experiment("tests-tracking")
    model = build_model(
        ModelParams(stem_filters=4, filters=[8], convs_per_block=1, dense_units=4), 32, seed=0
    )
    compile_model(model, TrainParams(), lr=0.004)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (8, 32, 32, 3)).astype("uint8")
    y = {"age": rng.uniform(1, 90, 8).astype("float32"), "gender": rng.integers(0, 2, 8) * 1.0}
    with mlflow.start_run() as run:
        history = model.fit(
            x,
            y,
            validation_data=(x, y),
            epochs=3,
            verbose=0,
            callbacks=[LearningRateInLogs(), EpochLogger()],
        )
    client = MlflowClient(store)
    for name in ("loss", "age_mae", "gender_accuracy", "val_age_mae", "val_gender_accuracy"):
        logged = client.get_metric_history(run.info.run_id, name)
        assert [m.step for m in sorted(logged, key=lambda m: m.step)] == [0, 1, 2], name
        values = [m.value for m in sorted(logged, key=lambda m: m.step)]
        assert values == pytest.approx(history.history[name]), name
    rates = client.get_metric_history(run.info.run_id, "learning_rate")
    assert [m.value for m in rates] == pytest.approx([0.004] * 3)


def test_epoch_logger_can_target_a_run_that_is_not_active(store: str) -> None:
    tracking.use_experiment("tests-tracking")
    with mlflow.start_run() as run:
        pass
    logger = EpochLogger(run_id=run.info.run_id)
    logger.set_model(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]))  # no optimizer
    logger.on_epoch_end(4, {"val_loss": 2.5})
    (logged,) = MlflowClient(store).get_metric_history(run.info.run_id, "val_loss")
    assert (logged.step, logged.value) == (4, 2.5)
    assert mlflow.active_run() is None


def test_a_keras_model_with_project_layers_is_logged_with_its_requirements_quietly(
    store: str, caplog: pytest.LogCaptureFixture
) -> None:
    """MLflow would infer the requirements by loading the model in a fresh process, where the
    project's layers are not registered: it warned and logged Keras alone."""
    tracking.use_experiment("tests-tracking")
    inputs = keras.Input((4,), name="features")
    hidden = ChannelAffine()(inputs)
    outputs = {"age": keras.layers.Dense(1, name="age")(hidden)}
    outputs["gender"] = keras.layers.Dense(1, activation="sigmoid", name="gender")(hidden)
    model = keras.Model(inputs, outputs)
    mlflow_logger = logging.getLogger("mlflow")  # it does not propagate to the root logger
    mlflow_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="mlflow"), mlflow.start_run():
            info = log_keras_model(model, np.zeros((2, 4), "float32"))
    finally:
        mlflow_logger.removeHandler(caplog.handler)
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [message for message in warned if "inferring pip requirements" in message], warned
    requirements = Path(mlflow.pyfunc.get_model_dependencies(info.model_uri)).read_text()
    names = ["mlflow", "keras", tensorflow_build.distribution(), "numpy"]
    assert sorted(requirements.split()) == sorted(f"{n}=={metadata.version(n)}" for n in names)


# --- a store that moves with its clone ----------------------------------------------------------


def test_a_copied_clone_refuses_the_store_that_points_at_the_original(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    original, copy = tmp_path / "original", tmp_path / "copy"
    original.mkdir()
    (original / "params.yaml").write_text("# the defaults\n")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(original)
    tracking.use_experiment(tracking.TRAIN_EXPERIMENT)
    with mlflow.start_run():
        mlflow.log_text("hello", "note.txt")
    tracking.check_store()  # the original is fine
    shutil.copytree(original, copy)
    monkeypatch.chdir(copy)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri sets it
    with pytest.raises(tracking.StoreMovedError) as moved:
        tracking.use_experiment(tracking.TRAIN_EXPERIMENT)
    message = str(moved.value)
    assert f"{copy / 'mlflow.db'}" in message and f"{original / 'mlartifacts'}" in message
    assert f"{copy / 'mlartifacts'}" in message
    (copy / "face.png").write_bytes(b"not read: the store is refused first")
    parser = argparse.ArgumentParser()
    predict_command.add_arguments(parser)
    assert predict_command.run(parser.parse_args(["face.png"])) == 1
    assert "was copied or moved from another clone" in capsys.readouterr().err


def test_a_remote_or_new_store_is_not_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    tracking.check_store("http://127.0.0.1:1")  # a server decides where artifacts go
    tracking.check_store(f"sqlite:///{tmp_path}/none-yet.db")
    assert not (tmp_path / "none-yet.db").exists()
