"""The team's tracking server (`utkface tracking-server`): PostgreSQL on loopback, MLflow with
proxied artifacts; two queued experiments run at once (`dvc queue start -j 2`) into it and one is
promoted through it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from dvc_project import clean_env, copied_project, run, stages_run
from mlflow import MlflowClient
from tiny import dag_params, free_port

from utkface.mlops import registry, tracking_server
from utkface.mlops.tracking_server import ServerConfig, TrackingServerError

QUEUED = {"team-lr-002": "lr=0.002", "team-lr-004": "lr=0.004"}
QUEUE_TIMEOUT_S = 900
# `utkface promote`'s gate decided by the age MAE alone: no rise allowed, gender accuracy free
GATE = {"promote": {"max_age_mae_increase": 0.0, "max_gender_accuracy_decrease": 1.0}}


def _utkface(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "utkface.cli.main", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


def test_start_refuses_a_non_loopback_address_before_touching_anything(tmp_path: Path) -> None:
    home = tmp_path / "home"
    done = _utkface("tracking-server", "start", "--home", str(home), "--host", "0.0.0.0")
    assert done.returncode == 1
    assert "refusing to listen on 0.0.0.0" in done.stderr
    assert "no authentication" in done.stderr
    assert done.stdout == "" and not home.exists()


def test_remote_listening_is_allowed_when_asked() -> None:
    tracking_server.check_host("0.0.0.0", allow_remote=True)
    config = ServerConfig(Path("/srv/x"), host="0.0.0.0", port=5100)
    assert config.tracking_uri == "http://127.0.0.1:5100"  # what this machine's clients export


def test_database_names_must_be_plain_identifiers() -> None:
    with pytest.raises(TrackingServerError, match="plain PostgreSQL name"):
        ServerConfig(Path("/srv/x"), db_name="mlflow; DROP DATABASE postgres")


def test_server_pid_is_that_of_a_live_process(tmp_path: Path) -> None:
    config = ServerConfig(tmp_path)
    assert tracking_server.server_pid(config) is None  # no server.pid
    config.pid_file.write_text("not a pid")
    assert tracking_server.server_pid(config) is None
    config.pid_file.write_text(str(os.getpid()))
    assert tracking_server.server_pid(config) == os.getpid()
    config.pid_file.write_text("1")  # init: root's, alive whoever asks
    assert tracking_server.server_pid(config) == 1
    server = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        os.waitid(os.P_PID, server.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
        config.pid_file.write_text(str(server.pid))
        assert tracking_server.server_pid(config) is None
    finally:
        server.wait()
    assert tracking_server.server_pid(config) is None  # reaped: gone


def test_stop_returns_once_the_server_exits_though_nobody_reaped_it(tmp_path: Path) -> None:
    """A server `start` ran from this process stays a zombie here after it exits: `stop` no
    longer waits 30 s for it, and it ended by SIGTERM, not by the SIGKILL after the deadline."""
    config = ServerConfig(tmp_path)
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    server = subprocess.Popen(sleeper, start_new_session=True)
    try:
        config.pid_file.write_text(str(server.pid))
        assert tracking_server.group_alive(server.pid)
        started = time.monotonic()
        assert tracking_server.stop_mlflow(config) is True
        assert time.monotonic() - started < 10
        os.waitid(os.P_PID, server.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
        assert not tracking_server.group_alive(server.pid)
        assert not config.pid_file.exists()
    finally:
        server.kill()
        assert server.wait() == -signal.SIGTERM


@pytest.mark.slow
def test_start_is_idempotent_and_runs_survive_a_restart(
    tracking_server_config: ServerConfig, tmp_path: Path
) -> None:
    config = tracking_server_config
    again = _utkface(
        "tracking-server", "start", "--home", str(config.home),
        "--port", str(config.port), "--db-port", str(config.db_port),
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"export MLFLOW_TRACKING_URI={config.tracking_uri}\n"
    assert "already running" in again.stderr
    assert (config.home / "db-password").stat().st_mode & 0o077 == 0

    client = MlflowClient(config.tracking_uri)
    experiment_id = client.create_experiment("restart-check")
    run_id = client.create_run(experiment_id).info.run_id
    client.log_metric(run_id, "m", 1.5)
    note = tmp_path / "note.txt"
    note.write_text("kept")
    client.log_artifact(run_id, str(note))  # through the server's artifact proxy
    client.set_terminated(run_id)
    assert list((config.home / "artifacts").rglob("note.txt")), "not in the artifact store"

    stopped = tracking_server.stop(config)
    assert stopped == ["MLflow server stopped", "PostgreSQL stopped"]
    assert tracking_server.status(config)[0] is False
    tracking_server.start(config)
    assert tracking_server.status(config)[0] is True
    assert client.get_run(run_id).data.metrics == {"m": 1.5}
    fetched = client.download_artifacts(run_id, "note.txt", str(tmp_path / "back"))
    assert Path(fetched).read_text() == "kept"


@pytest.mark.slow
def test_two_first_starts_at_once_bring_up_one_server(
    unstarted_server_config: ServerConfig,
) -> None:
    """Two team members (or two terminals) run `start` on a fresh home at the same time: the
    second waits for the first, then finds both servers up."""
    config = unstarted_server_config
    command = [sys.executable, "-m", "utkface.cli.main", "tracking-server", "start"]
    command += ["--home", str(config.home), "--port", str(config.port)]
    command += ["--db-port", str(config.db_port)]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    starts = [subprocess.Popen(command, **pipes) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in starts]
    results = [(p.returncode, out, err) for p, (out, err) in zip(starts, outputs, strict=True)]
    for code, out, err in results:
        assert code == 0, err
        assert out == f"export MLFLOW_TRACKING_URI={config.tracking_uri}\n"
    notes = sorted("already running" in err for _, _, err in results)
    assert notes == [False, True]  # one started it, the other found it running
    assert tracking_server.status(config)[0]
    assert "Address already in use" not in config.log.read_text()


@pytest.mark.slow
def test_status_and_stop_find_the_ports_start_recorded_in_the_home(
    unstarted_server_config: ServerConfig,
) -> None:
    """Started on a non-default port, the home is enough: `status` and `stop` take the ports from
    it, and a flag that disagrees with them is an error rather than a look at another port."""
    config = unstarted_server_config
    home = ["--home", str(config.home)]
    started = _utkface(
        "tracking-server", "start", *home,
        "--port", str(config.port), "--db-port", str(config.db_port),
    )  # fmt: skip
    assert started.returncode == 0, started.stderr

    status = _utkface("tracking-server", "status", *home)
    assert status.returncode == 0, status.stderr
    assert f"MLflow server: running on {config.tracking_uri}" in status.stderr
    assert f"PostgreSQL: running on 127.0.0.1:{config.db_port}" in status.stderr

    other = free_port()
    wrong = _utkface("tracking-server", "status", *home, "--port", str(other))
    assert wrong.returncode == 1
    assert f"--port {other}" in wrong.stderr and str(config.port) in wrong.stderr
    assert len(wrong.stderr.splitlines()) == 1, wrong.stderr
    moved = _utkface("tracking-server", "start", *home, "--port", str(other))
    assert moved.returncode == 1 and config.tracking_uri in moved.stderr, moved.stderr
    assert moved.stdout == ""

    stopped = _utkface("tracking-server", "stop", *home)
    assert stopped.returncode == 0, stopped.stderr
    assert "MLflow server stopped" in stopped.stderr and "PostgreSQL stopped" in stopped.stderr
    after = _utkface("tracking-server", "status", *home)
    assert after.returncode == 3
    assert "MLflow server: stopped" in after.stderr and "PostgreSQL: stopped" in after.stderr


def _wait_for_queue(root: Path, env: dict[str, str]) -> str:
    deadline = time.monotonic() + QUEUE_TIMEOUT_S
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], root, env).stdout
        if not any(word in status for word in ("Queued", "Running")):
            return status
        time.sleep(3)
    run(["dvc", "queue", "kill", *QUEUED], root, env, check=False)
    raise AssertionError(f"the queue did not finish in {QUEUE_TIMEOUT_S}s:\n{status}")


@pytest.mark.slow
def test_two_queued_experiments_run_at_once_into_the_server_and_one_is_promoted(
    tracking_server_config: ServerConfig, tiny_dag: Path, tmp_path: Path
) -> None:
    uri = tracking_server_config.tracking_uri
    env = clean_env(MLFLOW_TRACKING_URI=uri)
    # the session's reproduced tiny project without its own MLflow store, GATE committed with
    # its dvc.lock (a change only check_params reads)
    root = copied_project(tiny_dag, tmp_path / "project")
    (root / "mlflow.db").unlink()
    shutil.rmtree(root / "mlruns", ignore_errors=True)
    (root / "params.yaml").write_text(yaml.safe_dump(dag_params(GATE), sort_keys=False))
    assert stages_run(run(["dvc", "repro"], root, env).stdout) == {"check_params"}
    run(["git", "commit", "-q", "-am", "the promotion gate"], root, env)
    for name, change in QUEUED.items():
        run(["dvc", "exp", "run", "--queue", "-n", name, "-S", change], root, env)
    run(["dvc", "queue", "start", "-j", "2"], root, env)
    status = _wait_for_queue(root, env)
    logs = {
        name: run(["dvc", "queue", "logs", name], root, env, check=False).stdout for name in QUEUED
    }
    assert status.count("Success") == len(QUEUED), (status, {n: t[-3000:] for n, t in logs.items()})
    assert not (root / "mlflow.db").exists()  # every run went to the server
    for log in logs.values():
        assert "database is locked" not in log and "Traceback" not in log, log[-3000:]

    client = MlflowClient(uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("utkface-age-gender")
    runs = {
        name: client.search_runs([experiment.experiment_id], f"tags.dvc_exp_name = '{name}'")
        for name in QUEUED
    }
    assert all(len(found) == 1 for found in runs.values()), runs
    for name, (found,) in runs.items():
        assert found.info.status == "FINISHED"
        assert found.info.artifact_uri.startswith("mlflow-artifacts:/")  # proxied
        assert float(found.data.params["lr_used"]) == float(QUEUED[name].split("=")[1])
        assert "test_age_mae" in found.data.metrics
    model_name = dag_params()["register"]["model_name"]
    versions = {v.run_id: v for v in client.search_model_versions(f"name = '{model_name}'")}
    registered = {name: versions[found.info.run_id] for name, (found,) in runs.items()}
    assert all(v.status == "READY" for v in registered.values())
    assert "Traceback" not in tracking_server_config.log.read_text(errors="replace")

    def champion() -> str:
        return client.get_model_version_by_alias(model_name, registry.CHAMPION).version

    def age_mae(name: str) -> float:
        return runs[name][0].data.metrics["test_age_mae"]

    better, worse = sorted(QUEUED, key=age_mae)
    assert age_mae(better) < age_mae(worse), "equal MAEs: the gate's outcome is not known"
    # forced: a tiny model need not beat the median baseline that gates a first champion
    run(["utkface", "promote", "--exp", worse, "--force"], root, env)
    assert champion() == registered[worse].version
    # GATE: the age MAE may not rise at all, so the age MAE alone decides
    passed = run(["utkface", "promote", "--exp", better], root, env, check=False)
    assert passed.returncode == 0, (passed.stdout, passed.stderr)
    assert champion() == registered[better].version
    refused = run(["utkface", "promote", "--exp", worse], root, env, check=False)
    assert refused.returncode == 1, (refused.stdout, refused.stderr)
    assert "test_age_mae" in refused.stdout + refused.stderr  # compared through the server
    assert champion() == registered[better].version
