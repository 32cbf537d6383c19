"""The real UTKFace development folder (`../shared/utkface/crop_part1_dev`): admission, GX
validation, balance and split behave on real data. All of it runs in memory: nothing derived
from the folder is written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tiny import default_params

from stages.validate import validate
from utkface.checks.expectations import new_context
from utkface.data.admission import admit, summarize
from utkface.data.balancing import balance_plan
from utkface.data.sources import iter_source
from utkface.data.splitting import assign_splits, build_splits, check_no_leakage
from utkface.params import Params, parse_params

REPO = Path(__file__).resolve().parents[2]
REAL = REPO.parent / "shared" / "utkface" / "crop_part1_dev"
SIZE = 32
MALFORMED = "61_1_20170109142408075.jpg.chip.jpg"
FILES = 6883
DUPLICATES = 44

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not REAL.is_dir(), reason=f"{REAL} not present"),
]


@pytest.fixture(scope="module")
def ingested() -> dict:
    """Admit the real folder with the default params, as the ingest stage does."""
    raw = default_params()
    raw["ingest"] = {**raw["ingest"], "source": str(REAL), "image_size": SIZE}
    params = parse_params(raw)
    cfg = params.ingest
    files = iter_source(cfg.source, cfg.max_file_bytes, cfg.synthetic_count, params.seed)
    admission = admit(
        files, cfg.image_size, cfg.max_image_pixels, params.validate_.age_max, progress=False
    )
    return {
        "params": params,
        "images": admission.images,
        "labels": admission.labels,
        "rejections": admission.rejections,
        "summary": summarize(admission, cfg.source, cfg.image_size),
    }


@pytest.fixture(scope="module")
def labels(ingested) -> pd.DataFrame:
    return ingested["labels"]


@pytest.fixture(scope="module")
def params(ingested) -> Params:
    return ingested["params"]


def test_every_file_is_seen_and_accounted_for(ingested):
    summary = ingested["summary"]
    assert summary["files_seen"] == FILES
    assert summary["images"] + summary["rejected"] == FILES
    assert summary["images"] == FILES - DUPLICATES - 1
    assert ingested["images"].shape == (summary["images"], SIZE, SIZE, 3)
    assert ingested["images"].dtype == np.uint8
    assert len(ingested["labels"]) == summary["images"]
    assert sorted(ingested["labels"]["cache_index"]) == list(range(summary["images"]))


def test_only_the_known_defects_are_rejected(ingested):
    rejections = ingested["rejections"]
    assert set(rejections["category"]) == {"malformed_name", "duplicate"}
    malformed = rejections[rejections["category"] == "malformed_name"]
    assert list(malformed["file"]) == [MALFORMED]
    assert "found 3 field(s)" in malformed["reason"].iloc[0]
    duplicates = rejections[rejections["category"] == "duplicate"]
    assert len(duplicates) == DUPLICATES
    assert duplicates["reason"].str.startswith("duplicate image: same bytes as ").all()
    # each names an ingested original with exactly the same bytes
    ingested_files = set(ingested["labels"]["file"])
    for row in duplicates.itertuples():
        original = row.reason.removeprefix("duplicate image: same bytes as ")
        assert original in ingested_files
        assert (REAL / original).read_bytes() == (REAL / row.file).read_bytes()


def test_labels_are_plausible(labels):
    assert labels["image_id"].is_unique
    assert labels["age"].between(1, 116).all()
    assert set(labels["gender"]) == {0, 1}
    assert set(labels["race"]) == {0, 1, 2, 3, 4}
    assert 0.08 < (labels["age"] == 1).mean() < 0.14  # the documented skew: ~11 % are age 1


def test_gx_validation_passes_with_default_params(ingested, labels, params):
    summary = ingested["summary"]
    outcomes = validate(labels, ingested["images"], summary, None, params, new_context())
    assert [o.name for o in outcomes if not o.success] == []
    assert (summary["files_seen"], summary["rejected"]) == (6883, 45)  # 44 copies, 1 bad name
    # the folder's near copies (docs/models.md): counted, and within the default share
    (near,) = [o for o in outcomes if o.name == "duplicate_content"]
    assert 0.005 < near.unexpected_count / len(labels) < params.validate_.max_duplicate_share


@pytest.fixture(scope="module")
def splits(labels, params) -> dict:
    plan = balance_plan(labels, params.balance, params.seed)
    assignment = assign_splits(
        labels, params.age_buckets, params.split.val, params.split.test, params.seed
    )
    tables = build_splits(plan, labels, assignment)
    return {"plan": plan, "assignment": assignment, "tables": tables}


def test_balance_and_split_have_no_leakage(labels, splits):
    tables = splits["tables"]
    check_no_leakage(tables, labels)  # raises LeakageError
    assert not tables["val"]["augmented"].any()
    assert not tables["test"]["augmented"].any()
    assert tables["train"]["augmented"].any()  # rare ages were upsampled
    assignment = splits["assignment"]
    assert sorted(assignment["image_id"]) == sorted(labels["image_id"])
    shares = assignment["split"].value_counts(normalize=True)
    assert shares["val"] == pytest.approx(0.15, abs=0.01)
    assert shares["test"] == pytest.approx(0.15, abs=0.01)


def test_each_split_keeps_the_ingested_age_distribution(labels, splits):
    mean_age = labels["age"].mean()
    assignment = splits["assignment"]
    train_ids = assignment.loc[assignment["split"] == "train", "image_id"]
    train_images = labels[labels["image_id"].isin(train_ids)]  # before balancing
    for name, ages in (
        ("train images", train_images["age"]),
        ("val", splits["tables"]["val"]["age"]),
        ("test", splits["tables"]["test"]["age"]),
    ):
        assert abs(ages.mean() - mean_age) < 1.5, name
        assert abs((ages == 1).mean() - (labels["age"] == 1).mean()) < 0.02, name


def test_balancing_reduces_the_age_one_share_in_train(labels, params, splits):
    train = splits["tables"]["train"]
    before = (labels["age"] == 1).mean()
    after = (train["age"] == 1).mean()
    assert after < before / 2
    # max_per_age is a whole-dataset target: train holds about its training share
    assert (train["age"] == 1).sum() <= params.balance.max_per_age
    assert train["age"].max() <= params.balance.age_cap
