"""`dvc exp run -S` values as DVC writes them into params.yaml pass `check_params` and are read
as the numbers they were set to: DVC writes small floats in scientific notation (`5e-06`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from dvc_project import clean_env, committed_project, run, stages_run
from tiny import default_params

from utkface.params import load_params

pytestmark = pytest.mark.slow


def test_values_set_in_scientific_notation_pass_check_params(tmp_path: Path) -> None:
    env = clean_env()
    root = committed_project(tmp_path / "project", env, default_params())
    sets = {
        "train.reduce_lr.min_lr": "0.000005",
        "model.finetune.backbone_lr_ratio": "0.00003",
        "tune.learning_rates": "[0.000005,0.001]",
        "lr": "0.000001",
        "train.epochs": "5",
        "model.filters": "[32,64]",
        "balance.enabled": "false",
    }
    args = [arg for key, value in sets.items() for arg in ("-S", f"{key}={value}")]
    done = run(["dvc", "exp", "run", *args, "check_params"], root, env)

    assert stages_run(done.stdout + done.stderr) == {"check_params"}
    written = (root / "params.yaml").read_text()
    assert "min_lr: 5e-06" in written and "backbone_lr_ratio: 3e-05" in written  # as DVC wrote
    params = load_params(root / "params.yaml")
    assert params.train.reduce_lr.min_lr == 5e-06
    assert params.model.finetune.backbone_lr_ratio == 3e-05
    assert params.tune.learning_rates == [5e-06, 0.001]
    assert params.fixed_lr == 1e-06
    assert params.train.epochs == 5 and params.model.filters == [32, 64]
    assert params.balance.enabled is False
