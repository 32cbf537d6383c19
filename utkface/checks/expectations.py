"""Great Expectations suites of the data checks, the frames they check, and how to run them.

Each check tests what the step before it could not guarantee. Ingest already refuses bad names,
out-of-range labels, unreadable images and byte-identical copies, so `validate` checks what
ingest cannot know: enough rows per gender and per age bucket, the share of files it rejected,
images with the same content under different bytes (a re-encoded or resized copy), and how far
the labels moved from the committed run's (a warning). `features` checks the share of faces whose
landmarks are implausible, which only the face networks can tell.

GX validates tables, so each fact is first turned into a small derived frame (one row per class,
per image, or per kind of label). Every expectation carries a stable short name in
``meta["name"]``; ``validate.warn_only`` lists names whose failures only warn (GX severity
"warning"), all others are critical but `label_drift`, which always warns.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import great_expectations as gx
import numpy as np
import pandas as pd
from great_expectations.core import ExpectationValidationResult
from great_expectations.core.run_identifier import RunIdentifier
from great_expectations.data_context import EphemeralDataContext
from great_expectations.data_context.types.base import (
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)
from great_expectations.expectations import Expectation
from great_expectations.expectations.metadata_types import FailureSeverity
from great_expectations.expectations.row_conditions import Column

from utkface.checks.near_duplicates import NEAR_BITS, difference_hash, nearest
from utkface.data.labels import GENDERS, RACES, age_buckets, bucket_names
from utkface.params import Params

CHECK_NAMES = (
    "row_count",
    "rejected_share",
    "duplicate_content",
    "gender_counts",
    "age_bucket_counts",
    "label_drift",
    "implausible_faces",
)
ALWAYS_WARNS = ("label_drift",)  # a new data set moves the labels on purpose
EXAMPLES = 5  # offending values reported per failed expectation
DOCS_SITE = "validation_docs"
# Column naming the offending rows of each frame in the results (the summary has a single row).
ID_COLUMNS = {"content": "image_id", "class_counts": "class", "label_drift": "kind"}


@dataclass(frozen=True)
class Outcome:
    """One evaluated expectation, reduced to plain JSON-ready values."""

    name: str
    expectation_type: str
    frame: str
    columns: tuple[str, ...]
    success: bool
    severity: str  # "critical" or "warning"
    expected: dict[str, Any]  # the expectation's arguments besides its columns
    observed_value: Any = None
    unexpected_count: int | None = None
    examples: tuple[Any, ...] = ()
    id_column: str | None = None
    example_rows: tuple[Any, ...] = ()  # `id_column` of the rows holding the examples
    error: str | None = None  # GX could not evaluate it, e.g. a missing column

    @property
    def critical(self) -> bool:
        return self.severity == FailureSeverity.CRITICAL.value


def check_warn_only(warn_only: Sequence[str]) -> None:
    """Refuse names in `validate.warn_only` that match no expectation (a typo would be silent)."""
    unknown = sorted(set(warn_only) - set(CHECK_NAMES))
    if unknown:
        raise ValueError(
            f"validate.warn_only: unknown expectation name(s) {unknown}; "
            f"valid names: {list(CHECK_NAMES)}"
        )


def class_counts(
    labels: pd.DataFrame, age_edges: Sequence[int], min_per_gender: int, min_per_age_bucket: int
) -> pd.DataFrame:
    """Rows per gender and per age bucket, one row for every expected class, zeros included."""
    genders = labels.get("gender", pd.Series(dtype=float))
    ages = labels.get("age", pd.Series(dtype=float)).dropna()
    per_bucket = Counter(age_buckets(ages, age_edges))
    rows = [
        ("gender", name, int((genders == code).sum()), min_per_gender)
        for code, name in enumerate(GENDERS)
    ] + [
        ("age_bucket", name, per_bucket[name], min_per_age_bucket)
        for name in bucket_names(age_edges)
    ]
    return pd.DataFrame(rows, columns=["kind", "class", "count", "minimum"])


def rejected_share(ingest_summary: Mapping[str, Any]) -> pd.DataFrame:
    """One row: the files ingest saw and the share of them it rejected."""
    seen, rejected = ingest_summary["files_seen"], ingest_summary["rejected"]
    return pd.DataFrame(
        {"files_seen": [seen], "rejected": [rejected], "share": [rejected / max(seen, 1)]}
    )


def content(labels: pd.DataFrame, images: np.ndarray) -> pd.DataFrame:
    """Each image's id, with the Hamming distance to its nearest other image's difference hash
    and that image's id (`checks.near_duplicates`), by the labels' `cache_index`."""
    hashes = np.stack([difference_hash(images[i]) for i in labels["cache_index"]])
    distance, index = nearest(hashes)
    ids = labels["image_id"].to_numpy()
    return pd.DataFrame(
        {"image_id": ids, "nearest_bits": distance, "nearest_id": ids[index] if len(ids) else ids}
    )


def label_distribution(labels: pd.DataFrame, age_edges: Sequence[int]) -> dict[str, dict]:
    """The share of each gender, age bucket and race: what `label_drift` compares."""
    kinds = {
        "gender": [GENDERS[g] for g in labels["gender"]],
        "age_bucket": list(age_buckets(labels["age"], age_edges)),
        "race": [RACES[r] for r in labels["race"]],
    }
    return {
        kind: {name: round(n / len(values), 6) for name, n in sorted(Counter(values).items())}
        for kind, values in kinds.items()
    }


def label_drift(
    current: Mapping[str, Mapping[str, float]], reference: Mapping[str, Mapping[str, float]] | None
) -> pd.DataFrame:
    """Per kind of label, the total variation distance between the shares of `current` and of
    `reference` (half their summed absolute differences: 0 equal, 1 disjoint); no rows without
    a reference."""
    rows = []
    for kind, shares in current.items():
        if reference is None or kind not in reference:
            continue
        before = reference[kind]
        gaps = [abs(shares.get(c, 0.0) - before.get(c, 0.0)) for c in set(shares) | set(before)]
        rows.append((kind, round(0.5 * sum(gaps), 6)))
    return pd.DataFrame(rows, columns=["kind", "distance"])


def implausible_share(plausible: np.ndarray) -> pd.DataFrame:
    """One row: the faces checked and the share whose landmarks are implausible."""
    faces = len(plausible)
    share = float((~plausible).sum()) / max(faces, 1)
    return pd.DataFrame({"faces": [faces], "share": [share]})


@dataclass(frozen=True)
class Check:
    """One named expectation: its GX type and arguments."""

    name: str
    kind: type[Expectation]
    arguments: dict[str, Any]


def data_checks(params: Params) -> dict[str, list[Check]]:
    """The checks of the `validate` stage, by the frame they run on."""
    cfg = params.validate_
    x = gx.expectations
    return {
        "labels": [
            Check(
                "row_count",
                x.ExpectTableRowCountToBeBetween,
                {"min_value": cfg.min_rows, "max_value": cfg.max_rows},
            )
        ],
        "ingest": [
            Check(
                "rejected_share",
                x.ExpectColumnValuesToBeBetween,
                {"column": "share", "max_value": cfg.max_rejected_share},
            )
        ],
        "content": [
            Check(
                "duplicate_content",
                x.ExpectColumnValuesToBeBetween,
                {
                    "column": "nearest_bits",
                    "min_value": NEAR_BITS + 1,
                    "mostly": 1.0 - cfg.max_duplicate_share,
                },
            )
        ],
        "class_counts": [
            Check(
                name,
                x.ExpectColumnPairValuesAToBeGreaterThanB,
                {
                    "column_A": "count",
                    "column_B": "minimum",
                    "or_equal": True,
                    "row_condition": Column("kind") == kind,
                },
            )
            for name, kind in (("gender_counts", "gender"), ("age_bucket_counts", "age_bucket"))
        ],
        "label_drift": [
            Check(
                "label_drift",
                x.ExpectColumnValuesToBeBetween,
                {"column": "distance", "max_value": cfg.max_label_drift},
            )
        ],
    }


def face_checks(params: Params) -> dict[str, list[Check]]:
    """The check of the `features` stage: the share of implausible faces."""
    return {
        "faces": [
            Check(
                "implausible_faces",
                gx.expectations.ExpectColumnValuesToBeBetween,
                {"column": "share", "max_value": params.validate_.max_implausible_share},
            )
        ]
    }


def build_suites(
    checks: Mapping[str, Sequence[Check]], warn_only: Sequence[str]
) -> dict[str, gx.ExpectationSuite]:
    """One suite per frame; raises ValueError on unknown `warn_only` names."""
    check_warn_only(warn_only)

    def expectation(check: Check) -> Expectation:
        warns = check.name in warn_only or check.name in ALWAYS_WARNS
        severity = FailureSeverity.WARNING if warns else FailureSeverity.CRITICAL
        notes = f"{check.name} ({severity.value})"  # shown on the suite's Data Docs page
        return check.kind(
            meta={"name": check.name}, notes=notes, severity=severity, **check.arguments
        )

    return {
        frame: gx.ExpectationSuite(name=frame, expectations=[expectation(c) for c in frame_checks])
        for frame, frame_checks in checks.items()
    }


def new_context(docs_dir: Path | None = None) -> EphemeralDataContext:
    """An in-memory GX context without progress bars; with a Data Docs site in `docs_dir`."""
    sites = {}
    if docs_dir is not None:
        sites[DOCS_SITE] = {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(docs_dir.resolve()),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
        analytics_enabled=False,
        data_docs_sites=sites,
    )
    return gx.get_context(project_config=config, mode="ephemeral")


def _plain(value: Any) -> Any:
    """A JSON-ready copy of a GX result value: numpy scalars unwrapped, NaN / NA as None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if pd.api.types.is_scalar(value) and pd.isna(value):
        return None
    if isinstance(value, np.generic):
        value = value.item()
    return value if isinstance(value, bool | int | float | str) else str(value)


def _outcome(frame: str, result: ExpectationValidationResult) -> Outcome:
    config = result.expectation_config
    column_keys = ("column", "column_A", "column_B")
    columns = tuple(config.kwargs[k] for k in column_keys if k in config.kwargs)
    expected = {
        k: _plain(v) for k, v in config.kwargs.items() if k not in (*column_keys, "batch_id")
    }
    details = result.result or {}
    id_column = ID_COLUMNS.get(frame)
    rows: list[Any] = []
    if id_column in details.get("unexpected_index_column_names", ()):
        rows = [r[id_column] for r in details.get("partial_unexpected_index_list") or []]
    # GX reports one exception, or one per metric it could not compute (a missing column).
    info = result.exception_info or {}
    infos = [info] if "raised_exception" in info else list(info.values())
    errors = dict.fromkeys(i["exception_message"] for i in infos if i.get("raised_exception"))
    return Outcome(
        name=config.meta["name"],
        expectation_type=config.type,
        frame=frame,
        columns=columns,
        success=bool(result.success),
        severity=FailureSeverity(config.severity).value,
        expected=expected,
        observed_value=_plain(details.get("observed_value")),
        unexpected_count=details.get("unexpected_count"),
        examples=tuple(_plain(details.get("partial_unexpected_list", []))),
        id_column=id_column if rows else None,
        example_rows=tuple(_plain(rows)),
        error="; ".join(errors) or None,
    )


def run_suites(
    context: EphemeralDataContext,
    suites: Mapping[str, gx.ExpectationSuite],
    tables: Mapping[str, pd.DataFrame],
) -> list[Outcome]:
    """Validate each table with its suite, outcomes in `CHECK_NAMES` order; the results also
    land in the context's store, for `context.build_data_docs()`.

    Safe to call repeatedly on one context (tests share one): everything is added or updated.
    """
    source = context.data_sources.add_or_update_pandas("validate")
    run_id = RunIdentifier(run_name="validate")
    outcomes: list[Outcome] = []
    for frame, suite in suites.items():
        table = tables[frame]
        batch = source.add_dataframe_asset(frame).add_batch_definition_whole_dataframe(frame)
        definition = context.validation_definitions.add_or_update(
            gx.ValidationDefinition(
                name=frame, data=batch, suite=context.suites.add_or_update(suite)
            )
        )
        result_format: dict[str, Any] = {
            "result_format": "SUMMARY",
            "partial_unexpected_count": EXAMPLES,
        }
        if ID_COLUMNS.get(frame) in table.columns:
            result_format["unexpected_index_column_names"] = [ID_COLUMNS[frame]]
        result = definition.run(
            batch_parameters={"dataframe": table}, result_format=result_format, run_id=run_id
        )
        outcomes += [_outcome(frame, r) for r in result.results]
    return sorted(outcomes, key=lambda o: (CHECK_NAMES.index(o.name), o.columns))
