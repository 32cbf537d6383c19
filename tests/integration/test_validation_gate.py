"""The card's order: data that fails validation stops `dvc repro` right after ingest, before
any face features are extracted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dvc_project import clean_env, committed_project, run
from tiny import default_params, with_overrides

pytestmark = pytest.mark.slow


def test_data_that_fails_validation_costs_no_feature_extraction(tmp_path: Path) -> None:
    env = clean_env()
    too_few = {"ingest": {"synthetic_count": 60}, "validate": {"min_rows": 100}}
    root = committed_project(tmp_path / "project", env, with_overrides(default_params(), too_few))
    done = run(["dvc", "repro"], root, env, check=False)
    assert done.returncode != 0
    ran = [line.split("'")[1] for line in done.stdout.splitlines() if "Running stage" in line]
    assert ran == ["check_params", "ingest", "validate"]
    assert "critical expectation 'row_count'" in done.stderr
    report = json.loads((root / "metrics/validation.json").read_text())
    failed = {e["name"] for e in report["expectations"] if not e["success"]}
    assert report["success"] is False
    assert "row_count" in failed
    assert not (root / "data/features").exists()
