"""Stage `split`: train / val / test by source image, stratified by age bucket x gender, without
leakage (`utkface.data.splitting`), and the split report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from utkface import paths
from utkface.data.labels import age_buckets, bucket_names
from utkface.data.splitting import assign_splits, build_splits, check_no_leakage
from utkface.outputs import write_json
from utkface.params import load_params, run_main


def stratum_deviation(assignment: pd.DataFrame, name: str) -> float:
    """Largest gap between a stratum's share of one split's images and of all images."""
    overall = assignment["stratum"].value_counts(normalize=True)
    chosen = assignment.loc[assignment["split"] == name, "stratum"]
    share = chosen.value_counts(normalize=True).reindex(overall.index, fill_value=0.0)
    return float((share - overall).abs().max())


def split_report(
    splits: Mapping[str, pd.DataFrame], assignment: pd.DataFrame, edges: Sequence[int]
) -> dict:
    """metrics/split.json. `images` and the stratum deviation count the images assigned to each
    split (for train, before balancing); `rows` and the age and gender figures describe its table.
    Per-bucket lists stay out of `dvc metrics show`."""
    report: dict = {"images": len(assignment), "strata": int(assignment["stratum"].nunique())}
    for name, table in splits.items():
        buckets = pd.Series(age_buckets(table["age"], edges)).value_counts()
        report[name] = {
            "images": int((assignment["split"] == name).sum()),
            "image_share": round(float((assignment["split"] == name).mean()), 4),
            "rows": len(table),
            "originals": int((~table["augmented"]).sum()),
            "augmented": int(table["augmented"].sum()),
            "female_share": round(float(table["gender"].mean()), 4),
            "age_mean": round(float(table["age"].mean()), 2),
            "age_median": float(table["age"].median()),
            "max_stratum_deviation": round(stratum_deviation(assignment, name), 4),
            "age_buckets": [
                {"bucket": bucket, "rows": int(buckets.get(bucket, 0))}
                for bucket in bucket_names(edges)
            ],
        }
    report["max_stratum_deviation"] = max(report[name]["max_stratum_deviation"] for name in splits)
    return report


def main() -> None:
    params = load_params()
    labels = pd.read_parquet(paths.LABELS)
    plan = pd.read_parquet(paths.PLAN)
    assignment = assign_splits(
        labels, params.age_buckets, params.split.val, params.split.test, params.seed
    )
    splits = build_splits(plan, labels, assignment)
    check_no_leakage(splits, labels)
    report = split_report(splits, assignment, params.age_buckets)
    paths.SPLIT.mkdir(parents=True, exist_ok=True)
    for name, table in splits.items():
        table.to_parquet(paths.split_table(name), index=False)
    write_json(paths.SPLIT_METRICS, report)
    sizes = ", ".join(
        f"{name} {report[name]['rows']} rows ({report[name]['augmented']} augmented) "
        f"of {report[name]['images']} images"
        for name in paths.SPLIT_NAMES
    )
    print(
        f"split: {sizes}; max stratum deviation {report['max_stratum_deviation']} -> {paths.SPLIT}"
    )


if __name__ == "__main__":
    run_main("split", main)
