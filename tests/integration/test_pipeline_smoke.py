"""Smoke test: the real DAG (`dvc repro`) on a tiny synthetic set in a temporary copy of the
project, with its own git repo and a throwaway MLflow store at that copy's root."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow import MlflowClient

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PROJECT_FILES = [
    "stages",
    "utkface",
    "dvc.yaml",
    "params.yaml",
    "pyproject.toml",
    ".gitignore",
    ".dvcignore",
    ".dvc/config",
    ".dvc/.gitignore",
    "data/raw/README.md",
]
TINY = {
    "ingest": {"image_size": 48, "synthetic_count": 800},
    "validate": {"min_rows": 100, "min_per_gender": 20, "min_per_age_bucket": 3},
    "balance": {"min_per_age": 4, "max_per_age": 40},
    "model": {"filters": [16, 32, 64], "convs_per_block": 1, "dense_units": 32, "dropout": 0.1},
    "train": {"epochs": 25, "batch_size": 32, "warmup_epochs": 1},
    "tune": {
        "learning_rates": [0.003, 0.01],
        "max_trials": 2,
        "epochs": 1,
        "head": {"max_trials": 2, "epochs": 3},
    },
    "evaluate": {"sample_grid": 4},
}


def _merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _merge(base[key], value) if isinstance(value, dict) else value
    return merged


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, (
        f"{' '.join(args)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    )
    return done


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    return clean | {
        "PATH": f"{bin_dir}{os.pathsep}{clean.get('PATH', '')}",
        "GIT_AUTHOR_NAME": "ci",
        "GIT_AUTHOR_EMAIL": "ci@example.com",
        "GIT_COMMITTER_NAME": "ci",
        "GIT_COMMITTER_EMAIL": "ci@example.com",
        "DVC_NO_ANALYTICS": "1",
    }


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> Path:
    root = tmp_path_factory.mktemp("project")
    for name in PROJECT_FILES:
        source, target = REPO / name, root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            shutil.copy2(source, target)
    params = _merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], root, env)
    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-q", "-m", "tiny project"], root, env)
    _run(["dvc", "repro"], root, env)
    return root


def _client(root: Path) -> MlflowClient:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    return MlflowClient(uri)


def test_repro_writes_every_stage_output(project: Path) -> None:
    for path in [
        "data/ingested/images.npy",
        "data/ingested/labels.parquet",
        "data/balanced/plan.parquet",
        "data/split/train.parquet",
        "data/split/test.parquet",
        "data/features/features.npy",
        "models/model/pretrained.keras",
        "metrics/features.json",
        "metrics/ingest.json",
        "metrics/ingest_rejections.csv",
        "metrics/validation.json",
        "metrics/validation_docs/index.html",
        "metrics/balance.json",
        "metrics/split.json",
        "metrics/tune.json",
        "metrics/train.json",
        "metrics/train_history.csv",
        "metrics/evaluate.json",
        "metrics/evaluate_plots/sample_faces.png",
    ]:
        assert (project / path).is_file(), path
    ingest = json.loads((project / "metrics/ingest.json").read_text())
    assert ingest["images"] == TINY["ingest"]["synthetic_count"]
    assert json.loads((project / "metrics/validation.json").read_text())["success"] is True


def test_trained_model_beats_median_baseline(project: Path) -> None:
    report = json.loads((project / "metrics/evaluate.json").read_text())
    assert report["age_mae"] < 0.8 * report["baseline_age_mae"], report
    assert report["gender_accuracy"] > 0.7, report
    subgroups = json.loads((project / "metrics/subgroups.json").read_text())
    assert {"age_bucket", "gender", "race"} <= set(subgroups)
    assert report["worst_groups"]["age"]["group"]


def test_second_repro_does_nothing(project: Path, env: dict[str, str]) -> None:
    done = _run(["dvc", "repro"], project, env)
    assert "Running stage" not in done.stdout
    assert "up to date" in done.stdout


def test_image_size_change_reruns_ingest_and_validate(project: Path, env: dict[str, str]) -> None:
    params_file = project / "params.yaml"
    original = params_file.read_text()
    try:
        params = yaml.safe_load(original)
        params["ingest"]["image_size"] = TINY["ingest"]["image_size"] + 16
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        status = json.loads(_run(["dvc", "status", "--json"], project, env).stdout)
        assert {"ingest", "validate"} <= set(status)
        assert "balance" not in status
    finally:
        params_file.write_text(original)


def test_mlflow_has_tuning_trials_training_run_and_challenger(project: Path) -> None:
    client = _client(project)
    tune = client.get_experiment_by_name("utkface-age-gender-tuning")
    runs = client.search_runs([tune.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(trials) == 2
    assert all("lr" in t.data.params and "val_objective" in t.data.metrics for t in trials)

    train = client.get_experiment_by_name("utkface-age-gender")
    (run,) = client.search_runs([train.experiment_id])
    assert {"test_age_mae", "test_gender_accuracy", "val_age_mae"} <= set(run.data.metrics)
    assert len(client.get_metric_history(run.info.run_id, "val_age_mae")) >= 2
    assert {"git_commit", "dvc_exp_name", "data_version"} <= set(run.data.tags)
    assert run.data.params["train.epochs"] == str(TINY["train"]["epochs"])
    version = client.get_model_version_by_alias("utkface-age-gender", "challenger")
    assert version.run_id == run.info.run_id
    assert version.tags["data_version"] == run.data.tags["data_version"]


def test_promote_then_predict_with_the_champion(project: Path, env: dict[str, str]) -> None:
    _run(["utkface", "promote"], project, env)
    faces = project / "faces"
    _run(["utkface", "synth", str(faces), "--count", "3"], project, env)
    done = _run(["utkface", "predict", str(faces), "--json"], project, env)
    predictions = json.loads(done.stdout)
    assert len(predictions) == 3
    assert all(p["gender"] in ("male", "female") and 0 <= p["p_female"] <= 1 for p in predictions)


def test_lr_override_retrains_without_tuning(project: Path, env: dict[str, str]) -> None:
    done = _run(["dvc", "exp", "run", "-S", "lr=0.0005"], project, env)
    ran = {line.split("'")[1] for line in done.stdout.splitlines() if "Running stage" in line}
    assert ran == {"train", "evaluate"}
    client = _client(project)
    experiment = client.get_experiment_by_name("utkface-age-gender")
    latest = client.search_runs([experiment.experiment_id], order_by=["start_time DESC"])[0]
    assert float(latest.data.params["lr_used"]) == 0.0005
    assert latest.data.params["lr_source"] == "params"


def test_queued_experiments_land_in_the_repo_root_store(project: Path, env: dict[str, str]) -> None:
    for lr in ("0.002", "0.004"):
        _run(["dvc", "exp", "run", "--queue", "-S", f"lr={lr}"], project, env)
    _run(["dvc", "exp", "run", "--run-all", "-j", "1"], project, env)
    client = _client(project)
    experiment = client.get_experiment_by_name("utkface-age-gender")
    lrs = {r.data.params.get("lr_used") for r in client.search_runs([experiment.experiment_id])}
    assert {"0.002", "0.004"} <= lrs
