"""What a data check reports: the JSON summary of its outcomes and one line per failure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from utkface.checks.expectations import Outcome


def summarize(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """The report a checking stage writes (metrics/validation.json, metrics/features.json)."""
    failed = [o for o in outcomes if not o.success]
    critical = [o for o in failed if o.critical]
    return {
        "success": not critical,
        "evaluated": len(outcomes),
        "failed_critical": len(critical),
        "warnings": len(failed) - len(critical),
        "expectations": [
            {k: v for k, v in asdict(o).items() if v not in (None, (), {})} for o in outcomes
        ],
    }


def describe(outcome: Outcome) -> str:
    """One line on a failure: name, GX type, column(s) and table, then offending values."""
    columns = ", ".join(repr(c) for c in outcome.columns)
    where = f" on column{'s' if len(outcome.columns) > 1 else ''} {columns}" if columns else ""
    head = f"'{outcome.name}' ({outcome.expectation_type}{where} of {outcome.frame}) failed"
    if outcome.error:
        return f"{head}: could not be evaluated: {outcome.error}"
    if outcome.unexpected_count is None:
        return f"{head}: observed {outcome.observed_value!r}, expected {outcome.expected}"
    text = f"{head}: {outcome.unexpected_count} unexpected values, e.g. {list(outcome.examples)}"
    if outcome.example_rows:
        text += f" at {outcome.id_column} {list(outcome.example_rows)}"
    return text


def failures(prog: str, outcomes: Sequence[Outcome]) -> tuple[list[str], str | None]:
    """The warning lines to print, and the message to exit with when a critical check failed."""
    warnings = [
        f"{prog}: warning: expectation {describe(o)}"
        for o in outcomes
        if not o.success and not o.critical
    ]
    critical = [
        f"{prog}: critical expectation {describe(o)}"
        for o in outcomes
        if not o.success and o.critical
    ]
    return warnings, "\n".join(critical) or None
