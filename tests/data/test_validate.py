"""Stage `validate` and the features check: GX suites on tiny in-memory tables, one shared GX
context per module."""

import io
import json
import subprocess

import numpy as np
import pandas as pd
import pytest
import yaml
from model_fixtures import astronaut_face
from PIL import Image
from skimage import data

from stages.features import check_faces
from stages.validate import VALIDATED, main, validate
from utkface import paths
from utkface.checks.expectations import (
    CHECK_NAMES,
    Outcome,
    build_suites,
    class_counts,
    data_checks,
    label_distribution,
    label_drift,
    new_context,
)
from utkface.checks.near_duplicates import NEAR_BITS, difference_hash, nearest
from utkface.checks.report import summarize
from utkface.params import Params, parse_params

SIZE = 32
RAW_PARAMS = {
    "ingest": {"image_size": SIZE},
    "validate": {"min_rows": 20, "max_rows": 1000, "min_per_gender": 5, "min_per_age_bucket": 2},
}
PARAMS = parse_params(RAW_PARAMS)
AGES = [1, 5, 15, 25, 35, 45, 55, 65, 75, 100]  # every default age bucket, 70+ twice
INGESTED = {"files_seen": 40, "rejected": 0}


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


def make_images(rows: int = 40) -> np.ndarray:
    """Random images: no two are near copies."""
    return np.random.default_rng(0).integers(0, 256, (rows, SIZE, SIZE, 3), np.uint8)


def with_params(**validate_params: object) -> Params:
    return parse_params({**RAW_PARAMS, "validate": {**RAW_PARAMS["validate"], **validate_params}})


@pytest.fixture(scope="module")
def context():
    return new_context()


def run(
    context,
    labels: pd.DataFrame,
    images: np.ndarray | None = None,
    ingested: dict | None = None,
    reference: dict | None = None,
    params: Params = PARAMS,
) -> list[Outcome]:
    images = make_images(len(labels)) if images is None else images
    return validate(labels, images, ingested or INGESTED, reference, params, context)


def failed(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if not o.success]


def only_failure(outcomes: list[Outcome]) -> Outcome:
    failures = failed(outcomes)
    assert len(failures) == 1, [(o.name, o.columns) for o in failures]
    return failures[0]


def test_valid_table_passes_every_data_check(context):
    outcomes = run(context, make_labels())
    assert failed(outcomes) == []
    assert [o.name for o in outcomes] == [n for n in CHECK_NAMES if n != "implausible_faces"]
    assert [o.critical for o in outcomes] == [True] * 5 + [False]  # label_drift warns
    report = summarize(outcomes)
    assert (report["success"], report["failed_critical"], report["warnings"]) == (True, 0, 0)
    assert report["evaluated"] == len(outcomes) == 6  # gender and age-bucket counts: 2 each
    json.dumps(report)


def test_too_few_rows_fail(context):
    outcome = only_failure(run(context, make_labels(), params=with_params(min_rows=50)))
    assert (outcome.name, outcome.observed_value) == ("row_count", 40)
    assert outcome.expected == {"min_value": 50, "max_value": 1000}


def test_too_many_rejected_files_fail(context):
    ingested = {"files_seen": 50, "rejected": 10}
    outcome = only_failure(run(context, make_labels(), ingested=ingested))
    assert (outcome.name, outcome.examples, outcome.critical) == ("rejected_share", (0.2,), True)
    assert outcome.expected == {"max_value": 0.05}
    assert failed(run(context, make_labels(), ingested={"files_seen": 50, "rejected": 2})) == []


def jpeg_copy(image: np.ndarray, quality: int, side: int) -> np.ndarray:
    """`image` saved as a JPEG at `side` px and decoded back at its own size: other bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image).resize((side, side)).save(buffer, "JPEG", quality=quality)
    decoded = Image.open(buffer).convert("RGB").resize(image.shape[:2][::-1])
    return np.asarray(decoded)


def photo_and_its_copy() -> tuple[np.ndarray, np.ndarray]:
    """A real face at the cache's 64 px, and the same face saved again as a 200 px JPEG."""
    face = astronaut_face(64)
    return face, jpeg_copy(face, quality=70, side=200)


def test_a_re_encoded_copy_is_near_and_other_faces_are_not():
    face, copy = photo_and_its_copy()
    assert not np.array_equal(face, copy)
    images = [make_images(1)[0], face, np.asarray(data.coffee()), copy]
    distance, index = nearest(np.stack([difference_hash(i) for i in images]))
    assert (index[1], index[3]) == (3, 1)
    assert distance[1] == distance[3] <= NEAR_BITS
    assert min(distance[0], distance[2]) > NEAR_BITS


def test_a_re_encoded_copy_under_another_name_fails(context):
    labels, images = make_labels(), make_images(40).repeat(2, axis=1).repeat(2, axis=2)
    images[3], images[7] = photo_and_its_copy()
    strict = with_params(max_duplicate_share=0.0)
    outcome = only_failure(run(context, labels, images=images, params=strict))
    assert (outcome.name, outcome.critical, outcome.unexpected_count) == (
        "duplicate_content",
        True,
        2,
    )
    assert sorted(outcome.example_rows) == sorted(labels.loc[[3, 7], "image_id"])
    assert failed(run(context, labels, images=images)) == []  # 2 of 40 within the default 0.05


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


def test_label_distribution_and_its_drift():
    labels = make_labels(40)
    shares = label_distribution(labels, [0, 20])
    assert shares == {
        "gender": {"female": 0.5, "male": 0.5},
        "age_bucket": {"0-19": 0.3, "20+": 0.7},
        "race": {r: 0.2 for r in ("Asian", "Black", "Indian", "Others", "White")},
    }
    reference = {"gender": {"male": 0.8, "female": 0.2}, "age_bucket": {"0-19": 0.3, "20+": 0.7}}
    drift = label_drift(shares, reference)
    assert drift.to_dict("records") == [
        {"kind": "gender", "distance": 0.3},
        {"kind": "age_bucket", "distance": 0.0},
    ]  # race: not in the reference
    assert label_drift(shares, None).empty


def test_label_drift_only_warns(context):
    labels = make_labels()
    reference = label_distribution(labels, PARAMS.age_buckets)
    assert failed(run(context, labels, reference=reference)) == []
    reference["gender"] = {"male": 0.9, "female": 0.1}
    outcomes = run(context, labels, reference=reference)
    outcome = only_failure(outcomes)
    assert (outcome.name, outcome.severity) == ("label_drift", "warning")
    assert (outcome.example_rows, outcome.examples) == (("gender",), (0.4,))
    assert summarize(outcomes)["success"] is True


def test_implausible_faces_fail_the_features_check():
    plausible = np.ones(100, bool)
    plausible[:6] = False
    (outcome,) = check_faces(plausible, PARAMS)
    assert (outcome.name, outcome.success, outcome.critical) == ("implausible_faces", False, True)
    assert outcome.examples == (0.06,)
    plausible[5] = True
    assert check_faces(plausible, PARAMS)[0].success
    (warned,) = check_faces(~plausible, with_params(warn_only=["implausible_faces"]))
    assert (warned.success, warned.severity) == (False, "warning")


def test_warn_only_turns_a_failure_into_a_warning(context):
    outcomes = run(context, make_labels(), params=with_params(min_rows=50, warn_only=["row_count"]))
    outcome = only_failure(outcomes)
    assert (outcome.name, outcome.severity) == ("row_count", "warning")
    report = summarize(outcomes)
    assert (report["success"], report["failed_critical"], report["warnings"]) == (True, 0, 1)


def test_unknown_warn_only_names_are_rejected_listing_valid_ones():
    with pytest.raises(ValueError, match=r"\['rowcount'\]; valid names: \['row_count'"):
        build_suites(data_checks(PARAMS), ["rowcount"])


def write_inputs(root, labels: pd.DataFrame, **validate_params: object) -> None:
    raw = {**RAW_PARAMS, "validate": {**RAW_PARAMS["validate"], **validate_params}}
    (root / paths.PARAMS).write_text(yaml.safe_dump(raw))
    (root / paths.INGESTED).mkdir(parents=True)
    labels.to_parquet(root / paths.LABELS, index=False)
    np.save(root / paths.IMAGES, make_images(len(labels)))
    (root / paths.METRICS).mkdir()
    paths_ingest = root / paths.INGEST_METRICS
    paths_ingest.write_text(json.dumps(INGESTED))


def test_main_reports_critical_failure_and_still_writes_report_and_docs(tmp_path, monkeypatch):
    write_inputs(tmp_path, make_labels(), min_rows=50)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main()
    message = str(exit_info.value.code)  # a message: exit status 1
    assert "critical expectation 'row_count'" in message
    assert "expect_table_row_count_to_be_between of labels" in message
    report = json.loads(paths.VALIDATION.read_text())
    assert (report["success"], report["failed_critical"]) == (False, 1)
    assert not paths.VALIDATED.exists()  # what every later stage depends on
    assert report["label_distribution"]["gender"] == {"female": 0.5, "male": 0.5}
    index = paths.VALIDATION_DOCS / "index.html"
    results = paths.VALIDATION_DOCS / "validations"  # <suite>/<run name>/<run time>/<page>.html
    pages = sorted(p.relative_to(results).parts[0] for p in results.rglob("*.html"))
    assert pages == ["class_counts", "content", "ingest", "label_drift", "labels"]
    assert "Failed" in index.read_text()


def git(root, *args: str) -> None:
    identity = ["-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", *identity, *args], cwd=root, check=True, capture_output=True)


def test_main_warns_of_drift_from_the_committed_run(tmp_path, monkeypatch, capsys):
    labels = make_labels()
    write_inputs(tmp_path, labels)
    monkeypatch.chdir(tmp_path)
    main()  # outside git: no reference, no drift measured
    assert "(labels compared with no committed run)" in capsys.readouterr().out
    first = paths.VALIDATION.read_text()
    assert paths.VALIDATED.read_text() == VALIDATED
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", str(paths.VALIDATION))
    git(tmp_path, "commit", "-q", "-m", "run")
    main()  # compared with the committed run, the same labels: the same report
    assert "(labels compared with the committed run)" in capsys.readouterr().out
    assert paths.VALIDATION.read_text() == first
    labels.loc[labels.index[labels["gender"] == 1][:12], "gender"] = 0  # 0.5 -> 0.2 female
    labels.to_parquet(paths.LABELS, index=False)
    main()
    out = capsys.readouterr().out
    assert "validate: warning: expectation 'label_drift'" in out
    assert "e.g. [0.3] at kind ['gender']" in out
    report = json.loads(paths.VALIDATION.read_text())
    assert (report["success"], report["warnings"]) == (True, 1)
