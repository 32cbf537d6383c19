"""`utkface promote`: the pure gate on numbers, then the alias moves on a throwaway store."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from datetime import datetime
from itertools import count
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities.model_registry import RegisteredModel
from mlflow.exceptions import MlflowException
from mlflow.models.model import ModelInfo
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST
from model_fixtures import (
    CARD,
    MODEL_NAME,
    log_tiny_serving_model,
    register_version,
    use_tmp_store,
)

from utkface.cli import promote as promote_command
from utkface.mlops import promotion, registry
from utkface.params import PromoteParams

GATE = PromoteParams(max_age_mae_increase=0.1, max_gender_accuracy_decrease=0.005)
CHAMP = {registry.AGE_MAE: 5.0, registry.GENDER_ACCURACY: 0.9}


def metrics(age_mae: float, gender_accuracy: float) -> dict[str, float]:
    return {registry.AGE_MAE: age_mae, registry.GENDER_ACCURACY: gender_accuracy}


def decide(candidate: dict[str, float], data_version: str = "d1", force: bool = False):
    return promotion.decide(CHAMP, candidate, "d1", data_version, GATE, force)


def test_first_model_is_promoted_when_it_beats_the_baseline() -> None:
    beats = metrics(9.0, 0.6) | {promotion.BASELINE_AGE_MAE: 16.0}
    decision = promotion.decide(None, beats, None, "d1", GATE)
    assert decision.promote
    assert decision.reason == promotion.FIRST_MODEL


@pytest.mark.parametrize(
    ("age_mae", "gender_accuracy", "failing"),
    [(16.0, 0.9, registry.AGE_MAE), (9.0, 0.5, registry.GENDER_ACCURACY)],
    ids=["median-age", "chance-gender"],
)
def test_a_first_model_no_better_than_the_baseline_is_refused(
    age_mae: float, gender_accuracy: float, failing: str
) -> None:
    candidate = metrics(age_mae, gender_accuracy) | {promotion.BASELINE_AGE_MAE: 16.0}
    decision = promotion.decide(None, candidate, None, "d1", GATE)
    assert not decision.promote
    assert decision.reason.startswith("does not beat the baseline")
    assert [c.metric for c in decision.checks if not c.ok] == [failing]
    forced = promotion.decide(None, candidate, None, "d1", GATE, force=True)
    assert forced.promote and forced.reason.startswith("forced: does not beat the baseline")
    unknown = promotion.decide(None, metrics(9.0, 0.6), None, "d1", GATE)  # no baseline
    assert not unknown.promote and "missing on the baseline" in unknown.reason


@pytest.mark.parametrize(
    ("age_mae", "gender_accuracy"),
    [(5.0, 0.9), (4.0, 0.95), (5.1, 0.9), (5.0, 0.895), (5.1, 0.895)],
    ids=["equal", "better", "mae-at-limit", "accuracy-at-limit", "both-at-limit"],
)
def test_within_tolerance_passes(age_mae: float, gender_accuracy: float) -> None:
    decision = decide(metrics(age_mae, gender_accuracy))
    assert decision.promote
    assert decision.reason == promotion.PASSED
    assert all(check.ok for check in decision.checks)


@pytest.mark.parametrize(
    ("age_mae", "gender_accuracy", "failing"),
    [(5.2, 0.9, registry.AGE_MAE), (5.0, 0.89, registry.GENDER_ACCURACY)],
)
def test_beyond_tolerance_is_refused(age_mae: float, gender_accuracy: float, failing: str) -> None:
    decision = decide(metrics(age_mae, gender_accuracy))
    assert not decision.promote
    assert decision.reason.startswith("failed quality gate")
    assert failing in decision.reason
    assert [c.metric for c in decision.checks if not c.ok] == [failing]


def test_check_reports_delta_and_allowed() -> None:
    age, accuracy = decide(metrics(5.5, 0.91)).checks
    assert age.delta == pytest.approx(0.5)
    assert age.allowed == 0.1
    assert not age.ok
    assert accuracy.delta == pytest.approx(0.01)
    assert accuracy.allowed == -0.005
    assert accuracy.ok


def test_force_overrides_gate_and_says_why() -> None:
    decision = decide(metrics(7.0, 0.5), force=True)
    assert decision.promote
    assert decision.reason.startswith("forced: failed quality gate")


def test_different_data_versions_are_refused_unless_forced() -> None:
    refused = decide(metrics(4.0, 0.95), data_version="d2")
    assert not refused.promote
    assert "different test data" in refused.reason
    assert "d1" in refused.reason
    assert "d2" in refused.reason
    forced = decide(metrics(4.0, 0.95), data_version="d2", force=True)
    assert forced.promote
    assert forced.reason.startswith("forced: different test data")


def test_missing_metric_is_refused() -> None:
    decision = decide({registry.AGE_MAE: 4.0})
    assert not decision.promote
    assert "test_gender_accuracy missing on the candidate" in decision.reason


def test_comparison_table_lists_every_check() -> None:
    table = promotion.comparison_table(decide(metrics(5.5, 0.91)))
    header, age_row, accuracy_row = table.splitlines()
    assert header.split() == ["metric", "champion", "candidate", "delta", "allowed", "ok"]
    assert age_row.split() == [
        registry.AGE_MAE,
        "5.0000",
        "5.5000",
        "+0.5000",
        "<=",
        "+0.1000",
        "NO",
    ]
    assert accuracy_row.split()[-1] == "yes"


# --- against a throwaway SQLite store ---------------------------------------------------------

_names = count()


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelInfo]:
    """One logged serving model; every test registers versions of it under its own name."""
    with pytest.MonkeyPatch.context() as patch:
        root = tmp_path_factory.mktemp("promote")
        use_tmp_store(patch, root)
        yield log_tiny_serving_model(root)


@pytest.fixture
def name(logged: ModelInfo) -> str:
    return f"model-{next(_names)}"


def run_promote(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    promote_command.add_arguments(parser)
    return promote_command.run(parser.parse_args(list(argv)))


def champion_version(name: str) -> str | None:
    version = registry.get_alias_version(registry.registry_client(), name, registry.CHAMPION)
    return None if version is None else str(version.version)


def tags(name: str, version: int) -> dict[str, str]:
    return registry.registry_client().get_model_version(name, str(version)).tags


def test_register_creates_described_challenger(logged: ModelInfo, name: str) -> None:
    version = register_version(logged, name, age_mae=5.0, gender_accuracy=0.9)
    client = registry.registry_client()
    assert version.aliases == [registry.CHALLENGER]
    assert version.run_id == logged.run_id
    assert version.tags["test_age_mae"] == "5.0"
    assert version.tags["data_version"] == "data-v1"
    assert version.tags["git_commit"] == "abc123"
    assert "5.00 years" in version.description
    described = client.get_registered_model(name).description
    assert "non-commercial research only" in described
    assert "Not for decisions about individuals" in described
    assert registry.get_alias_version(client, name, registry.CHAMPION) is None
    assert registry.get_alias_version(client, "no-such-model", registry.CHAMPION) is None
    assert registry.champion_uri(name) == f"models:/{name}@champion"


class _RacedClient(MlflowClient):
    """Finds the model missing, and another evaluation creates it (undescribed) right after."""

    raced = False

    def get_registered_model(self, name: str) -> RegisteredModel:
        if not self.raced:
            self.raced = True
            MlflowClient().create_registered_model(name)
            raise MlflowException(f"{name} not found", RESOURCE_DOES_NOT_EXIST)
        return super().get_registered_model(name)


def test_register_takes_the_model_a_concurrent_evaluation_created(
    logged: ModelInfo, name: str
) -> None:
    registry._ensure_registered_model(_RacedClient(), name)
    described = registry.registry_client().get_registered_model(name).description
    assert "non-commercial research only" in described


def test_register_refuses_missing_metrics(logged: ModelInfo, name: str) -> None:
    with pytest.raises(ValueError, match="test_gender_accuracy"):
        registry.register(
            logged.run_id,
            logged.model_uri,
            name,
            {registry.AGE_MAE: 1.0},
            {"git_commit": "c", "git_changes": "none", "dvc_exp_name": "e", "data_version": "d"},
            CARD,
        )


def test_first_model_becomes_champion(
    logged: ModelInfo, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    register_version(logged, name)
    assert run_promote("--model-name", name) == 0
    assert champion_version(name) == "1"
    recorded = tags(name, 1)
    assert recorded["promotion_reason"] == promotion.FIRST_MODEL
    assert recorded["previous_champion"] == "none"
    assert recorded["promoted_by"]
    assert datetime.fromisoformat(recorded["promoted_at"]).utcoffset().total_seconds() == 0
    assert "is now champion" in capsys.readouterr().out


def test_a_first_model_worse_than_the_median_is_not_promoted(
    logged: ModelInfo, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    register_version(logged, name, age_mae=21.0, baseline_age_mae=20.0)
    assert run_promote("--model-name", name) == 1
    assert champion_version(name) is None
    out, err = capsys.readouterr()
    assert out.splitlines()[0].split() == [
        "metric",
        "baseline",
        "candidate",
        "delta",
        "allowed",
        "ok",
    ]
    assert "does not beat the baseline" in err


def test_after_a_queue_the_best_on_validation_is_promoted(
    logged: ModelInfo, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    register_version(logged, name, experiment="lr-1", age_mae=5.0, validation=(6.0, 0.90))
    register_version(logged, name, experiment="lr-2", age_mae=4.9, validation=(5.0, 0.92))
    register_version(logged, name, experiment="lr-3", age_mae=6.5, validation=(7.0, 0.85))
    assert run_promote("--model-name", name) == 0  # v3 is the challenger, v2 the best
    assert champion_version(name) == "2"
    out = capsys.readouterr().out
    listed = [line.split()[:2] for line in out.splitlines() if re.match(r"v\d", line)]
    assert listed == [["v2", "lr-2"], ["v1", "lr-1"], ["v3", "lr-3"]]  # 5.8, 7.0, 8.5
    assert "3 versions registered since the champion" in out
    assert "promoted_at" not in tags(name, 1) | tags(name, 3)


def test_the_best_on_validation_gives_way_when_the_gate_refuses_it(
    logged: ModelInfo, name: str
) -> None:
    register_version(logged, name, age_mae=5.0, validation=(5.5, 0.9))
    assert run_promote("--model-name", name) == 0
    register_version(logged, name, age_mae=6.0, validation=(4.0, 0.95))  # best, fails the gate
    register_version(logged, name, age_mae=4.8, validation=(5.0, 0.90))
    assert run_promote("--model-name", name) == 0
    assert champion_version(name) == "3"
    assert "failed quality gate" in tags(name, 2)["last_promotion_refused_reason"]
    assert tags(name, 3)["previous_champion"] == "1"


def test_promote_the_version_a_dvc_experiment_registered(
    logged: ModelInfo, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    register_version(logged, name, age_mae=5.0, experiment="lucky-lion")
    register_version(logged, name, age_mae=6.0, experiment="sunny-lark")  # the challenger
    assert run_promote("--model-name", name, "--exp", "lucky-lion") == 0
    assert champion_version(name) == "1"
    assert run_promote("--model-name", name, "--exp", "no-such-exp") == 2
    assert "no version of" in capsys.readouterr().err
    assert run_promote("--model-name", name, "--exp", "it's") == 2  # never a filter to parse
    assert "no version of" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --exp and --version name the version twice
        run_promote("--model-name", name, "--exp", "lucky-lion", "--version", "1")


def test_worse_challenger_is_refused(
    logged: ModelInfo, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    register_version(logged, name, age_mae=5.0)
    assert run_promote("--model-name", name) == 0
    register_version(logged, name, age_mae=6.0)
    assert run_promote("--model-name", name) == 1
    assert champion_version(name) == "1"
    out, err = capsys.readouterr()
    assert "refused" in err
    assert "test_age_mae" in err
    assert "metric" in out  # the comparison table
    recorded = tags(name, 2)
    assert "failed quality gate" in recorded["last_promotion_refused_reason"]
    assert recorded["last_promotion_refused_at"]
    assert "promoted_at" not in recorded


def test_better_challenger_is_promoted(logged: ModelInfo, name: str) -> None:
    register_version(logged, name, age_mae=5.0, gender_accuracy=0.9)
    run_promote("--model-name", name)
    register_version(logged, name, age_mae=4.5, gender_accuracy=0.92)
    assert run_promote("--model-name", name) == 0
    assert champion_version(name) == "2"
    recorded = tags(name, 2)
    assert recorded["promotion_reason"] == promotion.PASSED
    assert recorded["previous_champion"] == "1"


def test_force_promotes_a_worse_version(logged: ModelInfo, name: str) -> None:
    register_version(logged, name, age_mae=5.0)
    run_promote("--model-name", name)
    register_version(logged, name, age_mae=9.0)
    assert run_promote("--model-name", name, "--force") == 0
    assert champion_version(name) == "2"
    assert tags(name, 2)["promotion_reason"].startswith("forced: failed quality gate")


def test_different_data_version_needs_force(logged: ModelInfo, name: str) -> None:
    register_version(logged, name, age_mae=5.0)
    run_promote("--model-name", name)
    register_version(logged, name, age_mae=4.0, data_version="data-v2")
    assert run_promote("--model-name", name) == 1
    assert champion_version(name) == "1"
    assert "different test data" in tags(name, 2)["last_promotion_refused_reason"]
    assert run_promote("--model-name", name, "--force") == 0
    assert champion_version(name) == "2"


def test_explicit_version_and_rollback(logged: ModelInfo, name: str) -> None:
    register_version(logged, name, age_mae=5.0)
    run_promote("--model-name", name)
    register_version(logged, name, age_mae=4.0)
    run_promote("--model-name", name)
    assert run_promote("--model-name", name, "--version", "1") == 1  # worse than v2
    assert run_promote("--model-name", name, "--version", "1", "--force") == 0
    assert champion_version(name) == "1"
    assert tags(name, 1)["previous_champion"] == "2"


def test_already_champion_is_a_no_op(
    logged: ModelInfo, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    register_version(logged, name)
    run_promote("--model-name", name)
    assert run_promote("--model-name", name) == 0
    assert "already the champion" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [("--version", "7"), ()], ids=["no-such-version", "no-model"])
def test_nothing_to_promote_is_a_clear_error(
    logged: ModelInfo, name: str, argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_promote("--model-name", name, *argv) == 2
    err = capsys.readouterr().err
    assert name in err
    assert "Traceback" not in err


def test_default_model_name_comes_from_params(logged: ModelInfo) -> None:
    assert Path("params.yaml").exists()
    register_version(logged, MODEL_NAME)
    assert run_promote() == 0
    assert champion_version(MODEL_NAME) == "1"
