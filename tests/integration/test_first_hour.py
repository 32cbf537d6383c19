"""A newcomer's first hour, following the README on a fresh copy of the project: the same
figures on a second `dvc repro --force`, a bad `-S` value that costs no work, a queue of two
experiments whose better one `utkface promote` picks, exit codes a script can trust, and the
README's test command still passing after its experiments."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from dvc_project import REPO, clean_env, copied_project, run, stages_run

from utkface import paths
from utkface.data.synthetic import draw_face

pytestmark = pytest.mark.slow

README_TEST = "tests/unit/test_readme.py"
# the tests of the figures the docs quote from the committed run
FIGURE_TESTS = [
    f"{README_TEST}::test_quoted_figures_equal_the_committed_metrics",
    f"{README_TEST}::test_readme_quotes_no_committed_figure_without_a_marker",
]


def _digests(root: Path) -> dict[str, str]:
    """The md5 of every file the train stage wrote."""
    files = [*(root / paths.MODEL).iterdir(), root / paths.TRAIN_RUN, root / paths.TRAIN_METRICS]
    return {f.name: hashlib.md5(f.read_bytes()).hexdigest() for f in files}


def _version(root: Path) -> int:
    return json.loads((root / paths.REGISTERED).read_text())["version"]


def _commit_the_docs(root: Path, env: dict[str, str]) -> None:
    """This checkout's README, docs and their figures' test committed in `root`, with the
    committed `metrics/evaluate.json` they quote: HEAD there holds what a clone's HEAD holds."""
    committed = run(["git", "show", f"HEAD:./{paths.EVALUATE_METRICS}"], REPO, env).stdout
    (root / paths.EVALUATE_METRICS).write_text(committed)
    shutil.copy2(REPO / "README.md", root / "README.md")
    shutil.copytree(REPO / "docs", root / "docs")
    (root / "tests" / "unit").mkdir(parents=True)
    shutil.copy2(REPO / README_TEST, root / README_TEST)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-q", "-m", "the docs and the figures they quote"], root, env)


def test_the_first_hour(tiny_dag: Path, tmp_path: Path) -> None:
    env = clean_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/project/mlflow.db")
    root = copied_project(tiny_dag, tmp_path / "project")  # `dvc repro`, then committed

    # reproducible: a second run on the same machine changes no committed metrics file
    run(["dvc", "repro", "--force"], root, env)
    assert run(["git", "status", "--porcelain", "metrics"], root, env).stdout == ""
    first = _version(root)

    # a bad value stops at check_params, before DVC removes any output
    before = _digests(root)
    done = run(["dvc", "exp", "run", "-S", "lr=-1"], root, env, check=False)
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert stages_run(output) == {"check_params"}
    assert "lr: Value error, must be null, 'auto' or a number between 0 and 1" in output
    assert "undo the change with `git checkout params.yaml`" in output
    assert _digests(root) == before
    assert "lr: -1" in (root / "params.yaml").read_text()  # as DVC left it
    # ... and commands that do not read `lr` still work
    run(["utkface", "promote", "--version", str(first), "--force"], root, env)
    face = tmp_path / "face.png"
    draw_face(30, 1, 0, np.random.default_rng(0)).save(face)
    answered = run(["utkface", "predict", "--json", str(face)], root, env)
    assert json.loads(answered.stdout)[0]["error"] is None
    run(["git", "checkout", "params.yaml"], root, env)  # the undo the message names
    assert "up to date" in run(["dvc", "status"], root, env).stdout

    # two queued experiments: promote picks the better one on validation, which passes the gate
    tuned = json.loads((root / paths.TRAIN_METRICS).read_text())["lr_used"]
    # the champion's own rate, and one too small
    queued = {"lr-same": f"{tuned}", "lr-tiny": "0.000001"}
    for name, lr in queued.items():
        run(["dvc", "exp", "run", "--queue", "-n", name, "-S", f"lr={lr}"], root, env)
    run(["dvc", "exp", "run", "--run-all", "-j", "1"], root, env)
    status = run(["dvc", "queue", "status"], root, env).stdout
    assert status.count("Success") == 2, status
    promoted = run(["utkface", "promote"], root, env)
    assert "2 versions registered since the champion" in promoted.stdout
    lines = promoted.stdout.splitlines()
    listed = [line.split()[1] for line in lines if re.match(r"v\d+ ", line)]
    assert listed == ["lr-same", "lr-tiny"]  # best validation objective first
    assert "is now champion" in promoted.stdout  # the same model as the champion: it passes

    # predict exits 3 when some inputs fail, and still prints every row
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    mixed = run(["utkface", "predict", "--json", str(face), str(broken)], root, env, check=False)
    assert mixed.returncode == 3
    rows = {Path(r["path"]).name: r for r in json.loads(mixed.stdout)}
    assert rows["face.png"]["error"] is None and rows["broken.jpg"]["error"]

    # the README's experiment rewrites the workspace's metrics; the docs' figures, checked
    # against the committed ones, still pass
    _commit_the_docs(root, env)
    run(["dvc", "exp", "run", "-S", "lr=0.0005"], root, env)
    head = run(["git", "show", f"HEAD:./{paths.EVALUATE_METRICS}"], root, env).stdout
    assert json.loads((root / paths.EVALUATE_METRICS).read_text()) != json.loads(head)
    checked = run([sys.executable, "-m", "pytest", "-p", "no:randomly", *FIGURE_TESTS], root, env)
    assert "passed" in checked.stdout and "skipped" not in checked.stdout, checked.stdout
