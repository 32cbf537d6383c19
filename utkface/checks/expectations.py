"""Great Expectations suites of the `validate` stage, the frames they check, and how to run them.

GX validates tables, so facts about the image cache and about class sizes are first turned into
small derived frames: a one-row image array summary, and a class-count table with one row per
expected class (empty classes included, so a missing class fails instead of disappearing).
Every expectation carries a stable short name in ``meta["name"]``; ``validate.warn_only`` lists
names whose failures only warn (GX severity "warning"), all others are critical.
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

from utkface.data.labels import AGE_MIN, GENDERS, LABEL_COLUMNS, RACES, age_buckets, bucket_names
from utkface.params import Params

CHECK_NAMES = (
    "age_range",
    "gender_values",
    "race_values",
    "unique_ids",
    "no_nulls",
    "row_count",
    "image_shape",
    "gender_counts",
    "age_bucket_counts",
)
EXAMPLES = 5  # offending values reported per failed expectation
DOCS_SITE = "validation_docs"
# Column naming the offending rows of each frame in the results (the summary has a single row).
ID_COLUMNS = {"labels": "image_id", "class_counts": "class"}


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


def array_summary(labels: pd.DataFrame, image_shape: tuple[int, ...]) -> pd.DataFrame:
    """One row describing the image cache next to the labels table that indexes it.

    ``cache_indices_covered`` counts the indices 0..N-1 some row points at; it equals N (and
    ``rows``) exactly when the rows' ``cache_index`` values are a permutation of 0..N-1.
    """
    images = image_shape[0] if image_shape else 0
    index = labels.get("cache_index", pd.Series(dtype=float)).dropna()
    covered = index[(index >= 0) & (index < images)].nunique()
    return pd.DataFrame(
        {
            "rows": [len(labels)],
            "images": [images],
            "image_dims": ["x".join(str(d) for d in image_shape[1:])],
            "cache_indices_covered": [int(covered)],
        }
    )


def frames(
    labels: pd.DataFrame, image_shape: tuple[int, ...], params: Params
) -> dict[str, pd.DataFrame]:
    """The tables `build_suites` expects, by name: the labels and the two derived frames."""
    cfg = params.validate_
    return {
        "labels": labels,
        "image_array": array_summary(labels, image_shape),
        "class_counts": class_counts(
            labels, params.age_buckets, cfg.min_per_gender, cfg.min_per_age_bucket
        ),
    }


def build_suites(params: Params) -> dict[str, gx.ExpectationSuite]:
    """One suite per frame of `frames`; raises ValueError on unknown `warn_only` names."""
    cfg = params.validate_
    check_warn_only(cfg.warn_only)
    size = params.ingest.image_size
    x = gx.expectations

    def expect(name: str, kind: type[Expectation], **kwargs: Any) -> Expectation:
        severity = FailureSeverity.WARNING if name in cfg.warn_only else FailureSeverity.CRITICAL
        notes = f"{name} ({severity.value})"  # shown on the suite's Data Docs page
        return kind(meta={"name": name}, notes=notes, severity=severity, **kwargs)

    checks = {
        "labels": [
            expect(
                "row_count",
                x.ExpectTableRowCountToBeBetween,
                min_value=cfg.min_rows,
                max_value=cfg.max_rows,
            ),
            *(expect("no_nulls", x.ExpectColumnValuesToNotBeNull, column=c) for c in LABEL_COLUMNS),
            expect("unique_ids", x.ExpectColumnValuesToBeUnique, column="image_id"),
            expect(
                "age_range",
                x.ExpectColumnValuesToBeBetween,
                column="age",
                min_value=AGE_MIN,
                max_value=cfg.age_max,
            ),
            expect(
                "gender_values",
                x.ExpectColumnValuesToBeInSet,
                column="gender",
                value_set=list(range(len(GENDERS))),
            ),
            expect(
                "race_values",
                x.ExpectColumnValuesToBeInSet,
                column="race",
                value_set=list(range(len(RACES))),
            ),
        ],
        "image_array": [
            expect(
                "image_shape", x.ExpectColumnPairValuesToBeEqual, column_A="images", column_B="rows"
            ),
            expect(
                "image_shape",
                x.ExpectColumnValuesToBeInSet,
                column="image_dims",
                value_set=[f"{size}x{size}x3"],
            ),
            expect(
                "image_shape",
                x.ExpectColumnPairValuesToBeEqual,
                column_A="cache_indices_covered",
                column_B="images",
            ),
        ],
        "class_counts": [
            expect(
                name,
                x.ExpectColumnPairValuesAToBeGreaterThanB,
                column_A="count",
                column_B="minimum",
                or_equal=True,
                row_condition=Column("kind") == kind,
            )
            for name, kind in (("gender_counts", "gender"), ("age_bucket_counts", "age_bucket"))
        ],
    }
    return {
        frame: gx.ExpectationSuite(name=frame, expectations=expectations)
        for frame, expectations in checks.items()
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
