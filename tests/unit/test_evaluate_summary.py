"""The one-line summary of stage `evaluate`: the worst groups named with their grouping."""

from __future__ import annotations

from utkface.scoring.report import worst_groups


def test_worst_groups_say_which_grouping_and_metric() -> None:
    worst = {
        "age": {"grouping": "age_bucket", "group": "70+", "age_mae": 6.981},
        "gender": {"grouping": "race", "group": "Black", "gender_accuracy": 0.74},
    }
    assert worst_groups(worst) == (
        "worst age MAE: age 70+ (6.98 years), worst gender accuracy: race Black (0.74)"
    )


def test_worst_groups_without_a_named_group() -> None:
    assert worst_groups({"age": None, "gender": None}) == "no group large enough to name the worst"
