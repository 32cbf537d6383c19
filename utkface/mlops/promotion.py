"""The promotion gate: move the `champion` alias to a registered version (`utkface promote`).

The candidate must not be worse than the champion by more than params' `promote` tolerances,
on the same test data (`data_version` tags); the first champion must beat predicting the
training median age (`test_baseline_age_mae`). `--force` overrides and says so in the record.
Every decision is recorded as tags on the candidate version.

Without a chosen version, the candidates are the versions registered since the champion that
were never promoted (several after a queue of experiments), best first by their validation
objective: the one tuning uses, age MAE + `tune.gender_weight` x (1 - gender accuracy), of the
saved model on the validation split (train's figures, which evaluate tags each version with).
Ranking on validation keeps the test split for the gate alone, as tuning does; the first
candidate that passes the gate is promoted.
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

from utkface.mlops import registry, store
from utkface.params import PromoteParams

FIRST_MODEL = "first model, beats the baseline"
PROMOTED_AT = "promoted_at"
# train's metrics of the saved model on the validation split, tags of each version
VAL_AGE_MAE, VAL_GENDER_ACCURACY = "saved_val_age_mae", "saved_val_gender_accuracy"
BASELINE_AGE_MAE = "test_baseline_age_mae"  # predicting the training median, on the same faces
CHANCE = 0.5
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
    champion: float | None  # the reference value: the champion's, or the baseline's
    candidate: float | None
    allowed: float
    lower_is_better: bool
    against: str = "champion"

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
            side = "candidate" if self.candidate is None else self.against
            return f"{self.metric} missing on the {side}"
        return (
            f"{self.metric} {self.candidate:.4f} vs {self.against} {self.champion:.4f} "
            f"({self.delta:+.4f}, allowed {self.allowed:+.4f})"
        )


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    checks: tuple[Check, ...] = ()


def first_model_checks(candidate_metrics: Mapping[str, float]) -> tuple[Check, ...]:
    """The first champion's gate: an age MAE below predicting the training median, and gender
    accuracy above chance."""
    return (
        Check(
            registry.AGE_MAE,
            candidate_metrics.get(BASELINE_AGE_MAE),
            candidate_metrics.get(registry.AGE_MAE),
            -TOLERANCE * 2,  # strictly below the baseline
            True,
            "baseline",
        ),
        Check(
            registry.GENDER_ACCURACY,
            CHANCE,
            candidate_metrics.get(registry.GENDER_ACCURACY),
            TOLERANCE * 2,
            False,
            "baseline",
        ),
    )


def decide(
    champion_metrics: Mapping[str, float] | None,
    candidate_metrics: Mapping[str, float],
    champion_data_version: str | None,
    candidate_data_version: str | None,
    gate: PromoteParams,
    force: bool = False,
) -> Decision:
    """Whether the candidate may become champion, and why. No champion: it must beat the
    baseline (`first_model_checks`)."""
    if champion_metrics is None:
        checks = first_model_checks(candidate_metrics)
        failed = [check.explain() for check in checks if not check.ok]
        if not failed:
            return Decision(True, FIRST_MODEL, checks)
        problem = "does not beat the baseline (median age; chance for gender): " + "; ".join(failed)
        return Decision(force, f"forced: {problem}" if force else problem, checks)
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
    for name in (registry.AGE_MAE, registry.GENDER_ACCURACY, BASELINE_AGE_MAE):
        try:
            metrics[name] = float(version.tags[name])
        except (KeyError, ValueError):
            continue
    return metrics


def comparison_table(decision: Decision) -> str:
    """The gate as a table: metric, champion, candidate, delta, allowed, ok."""

    def number(value: float | None, sign: str = "") -> str:
        return "-" if value is None else f"{value:{sign}.4f}"

    against = decision.checks[0].against if decision.checks else "champion"
    rows = [("metric", against, "candidate", "delta", "allowed", "ok")]
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
            f"model {name!r} has no {registry.CHALLENGER!r} version in {store.tracking_uri()}: "
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
            PROMOTED_AT: now,
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


def validation_objective(version: ModelVersion, gender_weight: float) -> float | None:
    """Tuning's objective for the version's saved model on the validation split (its
    `saved_val_*` tags, from train); None for a version registered without them."""
    try:
        mae = float(version.tags[VAL_AGE_MAE])
        accuracy = float(version.tags[VAL_GENDER_ACCURACY])
    except (KeyError, ValueError):
        return None
    return mae + gender_weight * (1 - accuracy)


@dataclass(frozen=True)
class Candidate:
    version: ModelVersion
    objective: float | None


def candidates(client: MlflowClient, name: str, gender_weight: float) -> list[Candidate]:
    """The versions registered after the champion (all, without one) that were never
    promoted, best validation objective first (those without one last, newest first)."""
    if "'" in name:  # MLflow's filter could not quote it; a registry name never has one
        return []
    champion = registry.get_alias_version(client, name, registry.CHAMPION)
    after = 0 if champion is None else int(champion.version)
    found = [
        Candidate(v, validation_objective(v, gender_weight))
        for v in client.search_model_versions(f"name = '{name}'")
        if int(v.version) > after and PROMOTED_AT not in v.tags
    ]
    return sorted(
        found,
        key=lambda c: (c.objective is None, c.objective or 0.0, -int(c.version.version)),
    )


def promote_best(
    client: MlflowClient,
    name: str,
    ranked: list[Candidate],
    gate: PromoteParams,
    force: bool = False,
) -> list[Outcome]:
    """Try the `ranked` candidates in order until one passes the gate (each decision is
    recorded); without candidates, the challenger. The last outcome is the deciding one."""
    if not ranked:
        return [promote(client, name, None, gate, force)]
    outcomes = []
    for candidate in ranked:
        outcomes.append(promote(client, name, int(candidate.version.version), gate, force))
        if outcomes[-1].decision.promote:
            break
    return outcomes
