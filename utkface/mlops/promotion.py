"""The promotion gate: move the `champion` alias to a registered version (`utkface promote`).

The candidate (default: the `challenger`) must not be worse than the champion by more than
params' `promote` tolerances, on the same test data (`data_version` tags). `--force` overrides
and says so in the record. Every decision is recorded as tags on the candidate version.
"""

from __future__ import annotations

import getpass
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

from utkface.mlops import registry, tracking
from utkface.params import PromoteParams

FIRST_MODEL = "first model"
PASSED = "passed quality gate"
ALREADY_CHAMPION = "already the champion"
TOLERANCE = 1e-9  # deltas equal to the allowed change pass despite float rounding


class PromotionError(Exception):
    """Nothing to decide: no such model, version or challenger."""


@dataclass(frozen=True)
class Check:
    """One gated metric; `allowed` is the largest tolerated change in the worse direction
    (+ for an error like MAE, - for an accuracy)."""

    metric: str
    champion: float | None
    candidate: float | None
    allowed: float
    lower_is_better: bool

    @property
    def delta(self) -> float | None:
        if self.champion is None or self.candidate is None:
            return None
        return self.candidate - self.champion

    @property
    def ok(self) -> bool:
        if self.delta is None:
            return False
        if self.lower_is_better:
            return self.delta <= self.allowed + TOLERANCE
        return self.delta >= self.allowed - TOLERANCE

    def explain(self) -> str:
        if self.delta is None:
            side = "candidate" if self.candidate is None else "champion"
            return f"{self.metric} missing on the {side}"
        return (
            f"{self.metric} {self.candidate:.4f} vs champion {self.champion:.4f} "
            f"({self.delta:+.4f}, allowed {self.allowed:+.4f})"
        )


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    checks: tuple[Check, ...] = ()


def decide(
    champion_metrics: Mapping[str, float] | None,
    candidate_metrics: Mapping[str, float],
    champion_data_version: str | None,
    candidate_data_version: str | None,
    gate: PromoteParams,
    force: bool = False,
) -> Decision:
    """Whether the candidate may become champion, and why. No champion: it may (first model)."""
    if champion_metrics is None:
        return Decision(True, FIRST_MODEL)
    checks = (
        Check(
            registry.AGE_MAE,
            champion_metrics.get(registry.AGE_MAE),
            candidate_metrics.get(registry.AGE_MAE),
            gate.max_age_mae_increase,
            True,
        ),
        Check(
            registry.GENDER_ACCURACY,
            champion_metrics.get(registry.GENDER_ACCURACY),
            candidate_metrics.get(registry.GENDER_ACCURACY),
            -gate.max_gender_accuracy_decrease,
            False,
        ),
    )
    problems = []
    if champion_data_version != candidate_data_version:
        problems.append(
            f"different test data (champion data_version {champion_data_version}, candidate "
            f"{candidate_data_version}): the metrics are not comparable"
        )
    failed = [check.explain() for check in checks if not check.ok]
    if failed:
        problems.append("failed quality gate: " + "; ".join(failed))
    if not problems:
        return Decision(True, PASSED, checks)
    if force:
        return Decision(True, "forced: " + "; ".join(problems), checks)
    return Decision(False, "; ".join(problems), checks)


def version_metrics(version: ModelVersion) -> dict[str, float]:
    """The gated test metrics recorded as tags on a version (absent ones left out)."""
    metrics = {}
    for name in (registry.AGE_MAE, registry.GENDER_ACCURACY):
        try:
            metrics[name] = float(version.tags[name])
        except (KeyError, ValueError):
            continue
    return metrics


def comparison_table(decision: Decision) -> str:
    """The gate as a table: metric, champion, candidate, delta, allowed, ok."""

    def number(value: float | None, sign: str = "") -> str:
        return "-" if value is None else f"{value:{sign}.4f}"

    rows = [("metric", "champion", "candidate", "delta", "allowed", "ok")]
    for check in decision.checks:
        bound = "<=" if check.lower_is_better else ">="
        rows.append(
            (
                check.metric,
                number(check.champion),
                number(check.candidate),
                number(check.delta, "+"),
                f"{bound} {check.allowed:+.4f}",
                "yes" if check.ok else "NO",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    )


@dataclass(frozen=True)
class Outcome:
    decision: Decision
    candidate: ModelVersion
    champion: ModelVersion | None


def _user() -> str:
    try:
        return getpass.getuser()
    except OSError:  # no login name, e.g. a container running as an unnamed uid
        return "unknown"


def _candidate(client: MlflowClient, name: str, version: int | None) -> ModelVersion:
    if version is not None:
        try:
            return client.get_model_version(name, str(version))
        except MlflowException as error:
            if error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                raise PromotionError(f"model {name!r} has no version {version}") from None
            raise
    challenger = registry.get_alias_version(client, name, registry.CHALLENGER)
    if challenger is None:
        raise PromotionError(
            f"model {name!r} has no {registry.CHALLENGER!r} version in {tracking.tracking_uri()}: "
            "run `dvc repro` (evaluate registers one) or pass --version N"
        )
    return challenger


def promote(
    client: MlflowClient, name: str, version: int | None, gate: PromoteParams, force: bool = False
) -> Outcome:
    """Decide on the candidate, move `champion` when allowed, and tag the decision."""
    candidate = _candidate(client, name, version)
    champion = registry.get_alias_version(client, name, registry.CHAMPION)
    if champion is not None and candidate.version == champion.version:
        return Outcome(Decision(True, ALREADY_CHAMPION), candidate, champion)
    decision = decide(
        None if champion is None else version_metrics(champion),
        version_metrics(candidate),
        None if champion is None else champion.tags.get("data_version"),
        candidate.tags.get("data_version"),
        gate,
        force,
    )
    now = datetime.now(UTC).isoformat(timespec="seconds")
    if decision.promote:
        client.set_registered_model_alias(name, registry.CHAMPION, candidate.version)
        tags = {
            "promoted_by": _user(),
            "promoted_at": now,
            "promotion_reason": decision.reason,
            "previous_champion": "none" if champion is None else str(champion.version),
        }
    else:
        tags = {
            "last_promotion_refused_by": _user(),
            "last_promotion_refused_at": now,
            "last_promotion_refused_reason": decision.reason,
        }
    for key, value in tags.items():
        client.set_model_version_tag(name, candidate.version, key, value)
    return Outcome(decision, candidate, champion)
