"""A bad value in params.yaml never costs work: `dvc exp run -S` with a value no stage accepts
stops at the `check_params` stage, before DVC removes any stage's outputs, says how to undo
it, and the commands that do not read the bad key keep working."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from dvc_project import clean_env, reproduced_project, run, stages_run
from tiny import dag_params

from utkface import paths
from utkface.data.synthetic import draw_face

pytestmark = pytest.mark.slow


def _digests(root: Path) -> dict[str, str]:
    """The md5 of every file the train stage wrote."""
    files = [*(root / paths.MODEL).iterdir(), root / paths.TRAIN_RUN, root / paths.TRAIN_METRICS]
    return {f.name: hashlib.md5(f.read_bytes()).hexdigest() for f in files}


def test_a_bad_value_stops_before_any_output_is_removed(tmp_path: Path) -> None:
    env = clean_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/project/mlflow.db")
    root = reproduced_project(tmp_path / "project", env, dag_params())
    before = _digests(root)

    done = run(["dvc", "exp", "run", "-S", "lr=-1"], root, env, check=False)
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert stages_run(output) == {"check_params"}
    assert "lr: Value error, must be null, 'auto' or a number between 0 and 1" in output
    assert "undo the change with `git checkout params.yaml`" in output
    assert _digests(root) == before  # the model, its run record and metrics are all there
    assert "lr: -1" in (root / "params.yaml").read_text()  # as DVC left it

    # predict, which reads only `register`, still answers with the model trained before
    run(["utkface", "promote", "--force"], root, env)
    face = tmp_path / "face.png"
    draw_face(30, 1, 0, np.random.default_rng(0)).save(face)
    answered = run(["utkface", "predict", "--json", str(face)], root, env)
    assert '"error": null' in answered.stdout

    run(["git", "checkout", "params.yaml"], root, env)  # the undo the message names
    assert "up to date" in run(["dvc", "status"], root, env).stdout
