"""Stage `validate`: GX suites on tiny in-memory tables, one shared GX context per module."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from stages.validate import main, summarize, validate
from utkface import paths
from utkface.checks.expectations import (
    CHECK_NAMES,
    Outcome,
    array_summary,
    build_suites,
    class_counts,
    new_context,
)
from utkface.params import Params, parse_params

SIZE = 32
RAW_PARAMS = {
    "ingest": {"image_size": SIZE},
    "validate": {"min_rows": 20, "max_rows": 1000, "min_per_gender": 5, "min_per_age_bucket": 2},
}
PARAMS = parse_params(RAW_PARAMS)
AGES = [1, 5, 15, 25, 35, 45, 55, 65, 75, 100]  # every default age bucket, 70+ twice


def make_labels(rows: int = 40) -> pd.DataFrame:
    """A valid table: blocks of ten rows cover every age, blocks alternate male / female."""
    ages = [AGES[i % 10] for i in range(rows)]
    genders = [(i // 10) % 2 for i in range(rows)]
    ids = [f"{a}_{g}_{i % 5}_{i:04d}" for i, (a, g) in enumerate(zip(ages, genders, strict=True))]
    return pd.DataFrame(
        {
            "image_id": ids,
            "file": [f"{i}.jpg.chip.jpg" for i in ids],
            "age": ages,
            "gender": genders,
            "race": [i % 5 for i in range(rows)],
            "timestamp": [f"2017{i:04d}" for i in range(rows)],
            "cache_index": range(rows),
        }
    )


def with_params(**validate_params: object) -> Params:
    return parse_params({**RAW_PARAMS, "validate": {**RAW_PARAMS["validate"], **validate_params}})


@pytest.fixture(scope="module")
def context():
    return new_context()


def run(
    context, labels: pd.DataFrame, shape: tuple[int, ...] | None = None, params: Params = PARAMS
) -> list[Outcome]:
    return validate(labels, shape or (len(labels), SIZE, SIZE, 3), params, context)


def failed(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if not o.success]


def only_failure(outcomes: list[Outcome]) -> Outcome:
    failures = failed(outcomes)
    assert len(failures) == 1, [(o.name, o.columns) for o in failures]
    return failures[0]


def test_valid_table_passes_every_named_expectation(context):
    outcomes = run(context, make_labels())
    assert failed(outcomes) == []
    assert {o.name for o in outcomes} == set(CHECK_NAMES)
    assert all(o.critical for o in outcomes)
    report = summarize(outcomes)
    assert (report["success"], report["failed_critical"], report["warnings"]) == (True, 0, 0)
    assert report["evaluated"] == len(outcomes)
    json.dumps(report)


def test_out_of_range_labels_fail_with_their_values(context):
    labels = make_labels()
    bad = {"age": {1: 0, 2: 130, 3: 150}, "gender": {4: 2}, "race": {5: 7, 6: -1}}
    for column, values in bad.items():
        labels.loc[list(values), column] = list(values.values())
    failures = {o.name: o for o in failed(run(context, labels))}
    names = {"age": "age_range", "gender": "gender_values", "race": "race_values"}
    assert set(failures) == set(names.values())
    for column, name in names.items():
        outcome = failures[name]
        assert (outcome.columns, outcome.critical) == ((column,), True)
        assert outcome.unexpected_count == len(bad[column])
        assert sorted(outcome.examples) == sorted(bad[column].values())
        assert outcome.example_rows == tuple(labels.loc[list(bad[column]), "image_id"])


def test_duplicate_ids_fail(context):
    labels = make_labels()
    labels.loc[5, "image_id"] = labels.loc[6, "image_id"]
    outcome = only_failure(run(context, labels))
    assert outcome.name == "unique_ids"
    assert outcome.examples == (labels.loc[6, "image_id"],) * 2


def test_nulls_fail_per_column(context):
    labels = make_labels()
    labels.loc[3, "age"] = None
    labels.loc[8, "file"] = None
    failures = failed(run(context, labels))
    assert {(o.name, *o.columns) for o in failures} == {("no_nulls", "age"), ("no_nulls", "file")}
    by_column = {o.columns[0]: o for o in failures}
    assert by_column["age"].example_rows == (labels.loc[3, "image_id"],)
    assert by_column["file"].example_rows == (labels.loc[8, "image_id"],)


def test_too_few_rows_fail(context):
    outcome = only_failure(run(context, make_labels(), params=with_params(min_rows=50)))
    assert (outcome.name, outcome.observed_value) == ("row_count", 40)
    assert outcome.expected == {"min_value": 50, "max_value": 1000}


def test_image_array_not_matching_the_table_fails(context):
    failures = failed(run(context, make_labels(), shape=(39, 64, 64, 3)))
    assert {(o.name, o.frame) for o in failures} == {("image_shape", "image_array")}
    assert {o.columns: o.examples for o in failures} == {
        ("images", "rows"): ([39, 40],),
        ("image_dims",): ("64x64x3",),
    }


def test_array_summary_describes_any_image_layout():
    summary = array_summary(make_labels(), (40, SIZE, SIZE))  # grayscale: no channel axis
    assert summary.to_dict("records") == [
        {"rows": 40, "images": 40, "image_dims": f"{SIZE}x{SIZE}", "cache_indices_covered": 40}
    ]


def test_cache_index_not_covering_every_image_fails(context):
    labels = make_labels()
    labels.loc[5, "cache_index"] = 4  # image 5 is no longer referenced
    outcome = only_failure(run(context, labels))
    assert (outcome.name, outcome.columns) == ("image_shape", ("cache_indices_covered", "images"))
    assert outcome.examples == ([39, 40],)


def test_missing_age_bucket_fails_with_zero_count(context):
    labels = make_labels()
    labels = labels[labels["age"] != 5].assign(cache_index=range(36))
    outcome = only_failure(run(context, labels))
    assert (outcome.name, outcome.example_rows, outcome.examples) == (
        "age_bucket_counts",
        ("3-9",),
        ([0, 2],),
    )


def test_small_gender_class_fails(context):
    labels = make_labels()
    labels.loc[labels.index[labels["gender"] == 1][3:], "gender"] = 0
    outcome = only_failure(run(context, labels))
    assert (outcome.name, outcome.example_rows, outcome.examples) == (
        "gender_counts",
        ("female",),
        ([3, 5],),
    )


def test_missing_column_is_reported_not_raised(context):
    failures = failed(run(context, make_labels().drop(columns=["race"])))
    assert {(o.name, o.columns) for o in failures} == {
        ("race_values", ("race",)),
        ("no_nulls", ("race",)),
    }
    assert all('column "race"' in o.error for o in failures)


def test_class_counts_list_every_class_even_when_empty():
    one_row = make_labels(1)
    counts = class_counts(one_row, [0, 3, 10], min_per_gender=5, min_per_age_bucket=2)
    assert counts.to_dict("records") == [
        {"kind": "gender", "class": "male", "count": 1, "minimum": 5},
        {"kind": "gender", "class": "female", "count": 0, "minimum": 5},
        {"kind": "age_bucket", "class": "0-2", "count": 1, "minimum": 2},
        {"kind": "age_bucket", "class": "3-9", "count": 0, "minimum": 2},
        {"kind": "age_bucket", "class": "10+", "count": 0, "minimum": 2},
    ]


def test_warn_only_turns_a_failure_into_a_warning(context):
    labels = make_labels()
    labels.loc[0, "age"] = 0
    outcomes = run(context, labels, params=with_params(warn_only=["age_range"]))
    outcome = only_failure(outcomes)
    assert (outcome.name, outcome.severity) == ("age_range", "warning")
    report = summarize(outcomes)
    assert (report["success"], report["failed_critical"], report["warnings"]) == (True, 0, 1)


def test_unknown_warn_only_names_are_rejected_listing_valid_ones():
    with pytest.raises(ValueError, match=r"\['agerange'\]; valid names: \['age_range'"):
        build_suites(with_params(warn_only=["agerange"]))


def write_inputs(root, labels: pd.DataFrame, warn_only: list[str]) -> None:
    raw = {**RAW_PARAMS, "validate": {**RAW_PARAMS["validate"], "warn_only": warn_only}}
    (root / paths.PARAMS).write_text(yaml.safe_dump(raw))
    (root / paths.INGESTED).mkdir(parents=True)
    labels.to_parquet(root / paths.LABELS, index=False)
    np.save(root / paths.IMAGES, np.zeros((len(labels), SIZE, SIZE, 3), np.uint8))


def test_main_reports_critical_failure_and_still_writes_report_and_docs(tmp_path, monkeypatch):
    labels = make_labels()
    labels.loc[[1, 2, 3], "age"] = [0, 130, 150]
    write_inputs(tmp_path, labels, warn_only=[])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main()
    message = str(exit_info.value.code)  # a message: exit status 1
    assert "critical expectation 'age_range'" in message
    assert "expect_column_values_to_be_between on column 'age'" in message
    assert "e.g. [0, 130, 150]" in message
    report = json.loads(paths.VALIDATION.read_text())
    assert (report["success"], report["failed_critical"]) == (False, 1)
    index = paths.VALIDATION_DOCS / "index.html"
    assert index.exists()
    results = paths.VALIDATION_DOCS / "validations"  # <suite>/<run name>/<run time>/<page>.html
    pages = sorted(p.relative_to(results).parts[0] for p in results.rglob("*.html"))
    assert pages == ["class_counts", "image_array", "labels"]
    assert "Failed" in index.read_text()


def test_main_prints_warnings_and_exits_zero(tmp_path, monkeypatch, capsys):
    labels = make_labels()
    labels.loc[0, "age"] = 0
    write_inputs(tmp_path, labels, warn_only=["age_range"])
    monkeypatch.chdir(tmp_path)
    main()
    assert "warning: expectation 'age_range'" in capsys.readouterr().out
    assert json.loads(paths.VALIDATION.read_text())["warnings"] == 1
