"""The experiment loop on the real DAG: `dvc exp run` with `-S`, a queue of three run by
`dvc exp run --run-all`, `dvc exp show`, `dvc plots diff`, sharing an experiment through a git
and a DVC remote, and a training stopped or killed mid-run, in a temporary copy of a tiny
reproduced project (`tiny.TINY_DAG`: the loop's mechanics, not a model's quality, which
test_pipeline_smoke checks) with its own git repository, DVC cache and throwaway MLflow store.

The session reproduces that project once (`tiny_dag`, shared with test_first_hour); the module
runs the queue once in a copy of it (`experiments`); a test that changes a project gets its own
copy (`workspace`).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from dvc_project import clean_env, copied_project, store_client, train_runs
from dvc_project import run as _run
from dvc_project import stages_run as _stages_run
from tiny import with_overrides

from utkface.mlops.runs import ENDED_BY_TAG

pytestmark = pytest.mark.slow

BEFORE_TRAIN = {"ingest", "features", "prefix", "validate", "balance", "split", "tune"}
QUEUED = {
    "exp-lr-002": "lr=0.002",
    "exp-lr-004": "lr=0.004",
    "exp-balance": "balance.min_per_age=4",  # more augmented copies of rare ages: a new plan
}
# README, "Experiments": the params that vary and the headline test metrics
COMPACT = [
    "dvc", "exp", "show", "--no-pager", "--only-changed",
    "--drop", r"^(?!Experiment|seed$|lr$|test_(age_mae|gender_accuracy)$|[a-z_]+\.)",
]  # fmt: skip


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return clean_env()


@pytest.fixture
def workspace(tiny_dag: Path, tmp_path: Path) -> Path:
    """A copy of the reproduced tiny project for a test that changes it."""
    return copied_project(tiny_dag, tmp_path / "project")


@pytest.fixture(scope="module")
def experiments(
    tiny_dag: Path, env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A copy of the reproduced tiny project after `QUEUED` ran through `dvc exp run --queue`
    and `--run-all`."""
    root = copied_project(tiny_dag, tmp_path_factory.mktemp("experiments") / "project")
    for name, change in QUEUED.items():
        _run(["dvc", "exp", "run", "--queue", "-n", name, "-S", change], root, env)
    _run(["dvc", "exp", "run", "--run-all", "-j", "1"], root, env)
    return root


def test_lr_override_retrains_without_tuning(workspace: Path, env: dict[str, str]) -> None:
    done = _run(["dvc", "exp", "run", "-n", "exp-lr-0005", "-S", "lr=0.0005"], workspace, env)
    assert _stages_run(done.stdout) == {"check_params", "train", "evaluate"}
    latest = train_runs(workspace)[0]
    assert float(latest.data.params["lr_used"]) == 0.0005
    assert latest.data.params["lr_source"] == "params"
    assert latest.info.run_name == latest.data.tags["dvc_exp_name"] == "exp-lr-0005"
    assert latest.data.tags["git_changes"] == "params: lr=0.0005"


def test_queued_experiments_restore_every_stage_they_do_not_change(
    experiments: Path, env: dict[str, str]
) -> None:
    for name in QUEUED:
        log = _run(["dvc", "queue", "logs", name], experiments, env).stdout
        ran = _stages_run(log)
        expected = {"train", "evaluate"} if name.startswith("exp-lr") else {"balance", "split"}
        assert expected <= ran, (name, log[-3000:])
        skipped = {"ingest", "features", "prefix", "validate"}
        skipped |= BEFORE_TRAIN if "lr" in name else set()
        assert not ran & skipped, (name, ran)
    runs = {r.info.run_name: r for r in train_runs(experiments)}
    assert set(QUEUED) <= set(runs)  # MLflow run names are the DVC experiment names
    assert {runs[n].data.params["lr_used"] for n in ("exp-lr-002", "exp-lr-004")} == {
        "0.002",
        "0.004",
    }
    assert runs["exp-balance"].data.tags["git_changes"] == "params: balance.min_per_age=4"


def test_exp_show_lists_params_and_test_metrics_of_main_and_each_experiment(
    experiments: Path, env: dict[str, str]
) -> None:
    shown = json.loads(_run(["dvc", "exp", "show", "--json"], experiments, env).stdout)
    baseline = next(entry for entry in shown if entry["rev"] != "workspace")
    rows = {"main": baseline["data"]}
    rows |= {e["name"]: e["revs"][0]["data"] for e in baseline.get("experiments") or []}
    assert set(QUEUED) | {"main"} <= set(rows), list(rows)
    for name in set(QUEUED) | {"main"}:
        data = rows[name]
        metrics = data["metrics"]
        assert metrics["metrics/evaluate.json"]["data"]["test_age_mae"] > 0, name
        assert "test_gender_accuracy" in metrics["metrics/evaluate.json"]["data"], name
        assert "best_val_objective" in metrics["metrics/tune.json"]["data"], name
        assert "lr" in data["params"]["params.yaml"]["data"], name
    markdown = _run([*COMPACT, "--md"], experiments, env).stdout
    table = [line for line in markdown.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    # the filter keeps the headline metrics that differ, `lr` and the params that vary
    assert header[:2] == ["Experiment", "test_age_mae"], table[0]
    assert header[-2:] == ["lr", "balance.min_per_age"], table[0]
    assert set(header) <= {*header[:2], "test_gender_accuracy", *header[-2:]}, table[0]
    rows = {row.split("|")[1].split("[")[-1].strip(" ]"): row for row in table[2:]}
    assert "| 0.002 " in rows["exp-lr-002"] and "| 4 " in rows["exp-balance"], table
    terminal = _run(COMPACT, experiments, env | {"COLUMNS": "80"}).stdout
    assert all(len(line) <= 80 for line in terminal.splitlines()), terminal
    assert "exp-lr-002" in terminal and "test_gender_accuracy" in terminal, terminal
    diff = _run(["dvc", "exp", "diff", "exp-lr-002", "exp-lr-004", "--json"], experiments, env)
    assert "test_age_mae" in json.loads(diff.stdout)["metrics"]["metrics/evaluate.json"]


def test_plots_diff_draws_both_experiments(experiments: Path, env: dict[str, str]) -> None:
    args = ["dvc", "plots", "diff", "exp-lr-002", "exp-lr-004", "--json"]
    shown = json.loads(_run(args, experiments, env).stdout)["data"]
    for title in ("Loss", "Predicted vs actual age (test)", "Age MAE per age bucket (test)"):
        (plot,) = shown[title]
        revs = {row["rev"] for row in plot["content"]["data"]["values"]}
        assert revs == {"exp-lr-002", "exp-lr-004"}, (title, revs)


def _experiment_metrics(root: Path, env: dict[str, str], name: str) -> dict:
    """metrics/evaluate.json of experiment `name` as `dvc exp show` lists it in `root`."""
    shown = json.loads(_run(["dvc", "exp", "show", "--json"], root, env).stdout)
    baseline = next(entry for entry in shown if entry["rev"] != "workspace")
    (experiment,) = [e for e in baseline.get("experiments") or [] if e["name"] == name]
    return experiment["revs"][0]["data"]["metrics"]["metrics/evaluate.json"]["data"]


def test_an_experiment_pushed_from_one_clone_shows_in_another(
    experiments: Path, env: dict[str, str], tmp_path: Path
) -> None:
    """DVC's way across machines: a shared git remote and a shared DVC remote."""
    project = copied_project(experiments, tmp_path / "project")  # it gets remotes
    shared = tmp_path / "shared"
    shared.mkdir()
    git_remote, dvc_remote = shared / "project.git", shared / "dvc-storage"
    _run(["git", "init", "-q", "--bare", "-b", "main", str(git_remote)], shared, env)
    _run(["git", "push", "-q", str(git_remote), "main"], project, env)
    _run(["dvc", "remote", "add", "--local", "-f", "-d", "shared", str(dvc_remote)], project, env)
    _run(["dvc", "exp", "push", str(git_remote), "exp-lr-002"], project, env)
    other = tmp_path / "clone"
    _run(["git", "clone", "-q", str(git_remote), str(other)], shared, env)
    _run(["dvc", "remote", "add", "--local", "-f", "-d", "shared", str(dvc_remote)], other, env)
    _run(["dvc", "exp", "pull", str(git_remote), "exp-lr-002"], other, env)
    pulled, here = (_experiment_metrics(root, env, "exp-lr-002") for root in (other, project))
    assert pulled["test_age_mae"] == here["test_age_mae"]
    _run(["dvc", "exp", "apply", "exp-lr-002"], other, env)  # its models came with it
    assert (other / "models/model/finetuned.keras").is_file()
    assert json.loads((other / "metrics/train.json").read_text())["lr_used"] == 0.002


def _wait_for_epochs(root: Path, process: subprocess.Popen[str]) -> str:
    """The id of the RUNNING train run of `process` once it has logged an epoch."""
    client = store_client(root)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        for run in train_runs(root):
            mine = run.info.status == "RUNNING" and run.data.tags.get("pid") == str(process.pid)
            if mine and client.get_metric_history(run.info.run_id, "val_age_mae"):
                return run.info.run_id
        time.sleep(0.25)
    raise AssertionError(f"train (pid {process.pid}) logged no epoch: {process.communicate()}")


def test_a_stopped_or_killed_training_is_never_left_running(
    workspace: Path, env: dict[str, str]
) -> None:
    """SIGTERM ends the run as KILLED at once; after SIGKILL the next train closes it."""
    params_file = workspace / "params.yaml"
    committed = params_file.read_text()
    endless = with_overrides(yaml.safe_load(committed), {"model": {"finetune": {"epochs": 1000}}})
    params_file.write_text(yaml.safe_dump(endless, sort_keys=False))
    client = store_client(workspace)
    outcome = {}
    for stop in (signal.SIGTERM, signal.SIGKILL):
        process = subprocess.Popen(
            [sys.executable, "-m", "stages.train"], cwd=workspace, env=env, text=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        run_id = _wait_for_epochs(workspace, process)
        process.send_signal(stop)
        process.wait(timeout=60)
        outcome[stop] = run_id, process.returncode
    terminated, returncode = outcome[signal.SIGTERM]
    assert returncode == 128 + signal.SIGTERM
    assert client.get_run(terminated).info.status == "KILLED"
    killed, _ = outcome[signal.SIGKILL]
    assert client.get_run(killed).info.status == "RUNNING"  # nobody could close it
    params_file.write_text(committed)
    _run(["dvc", "repro", "--force", "--single-item", "train"], workspace, env)
    run = client.get_run(killed)
    assert run.info.status == "KILLED"
    assert "marked KILLED by the next train run" in run.data.tags[ENDED_BY_TAG]
    assert not [r for r in train_runs(workspace) if r.info.status == "RUNNING"]
