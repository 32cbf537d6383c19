"""Stage `balance`: the training plan that evens out UTKFace's skewed age distribution
(`utkface.data.balancing`), its per-age counts and its report."""

from __future__ import annotations

import pandas as pd

from utkface import paths
from utkface.data.balancing import balance_plan
from utkface.outputs import write_json
from utkface.params import BalanceParams, load_params, run_main


def age_counts(labels: pd.DataFrame, plan: pd.DataFrame, age_cap: int) -> pd.DataFrame:
    """Per capped age, every age from youngest to oldest: images before balancing (`before`),
    originals `kept` and `removed`, augmented copies `added`, and plan rows `after`."""
    before = labels["age"].clip(upper=age_cap).value_counts()
    ages = pd.RangeIndex(int(before.index.min()), int(before.index.max()) + 1, name="age")
    counts = pd.DataFrame(
        {
            "before": before,
            "kept": plan.loc[~plan["augmented"], "age"].value_counts(),
            "added": plan.loc[plan["augmented"], "age"].value_counts(),
        }
    )
    counts = counts.reindex(ages).fillna(0).astype("int64")
    counts["removed"] = counts["before"] - counts["kept"]
    counts["after"] = counts["kept"] + counts["added"]
    return counts.reset_index()[["age", "before", "kept", "removed", "added", "after"]]


def balance_report(
    labels: pd.DataFrame, plan: pd.DataFrame, counts: pd.DataFrame, cfg: BalanceParams
) -> dict:
    """metrics/balance.json. Per-age counts are a list, which `dvc metrics show` leaves out."""
    present = counts[counts["before"] > 0]
    return {
        "enabled": cfg.enabled,
        "rows_before": len(labels),
        "rows_after": len(plan),
        "kept": int(counts["kept"].sum()),
        "removed": int(counts["removed"].sum()),
        "added": int(counts["added"].sum()),
        "images_capped": int((labels["age"] > cfg.age_cap).sum()),
        "ages": len(present),
        "ages_downsampled": int((present["removed"] > 0).sum()),
        "ages_upsampled": int((present["added"] > 0).sum()),
        "per_age": present.to_dict("records"),
    }


def main() -> None:
    params = load_params()
    cfg = params.balance
    labels = pd.read_parquet(paths.LABELS)
    plan = balance_plan(labels, cfg, params.seed)
    counts = age_counts(labels, plan, cfg.age_cap)
    report = balance_report(labels, plan, counts, cfg)
    paths.PLAN.parent.mkdir(parents=True, exist_ok=True)
    plan.to_parquet(paths.PLAN, index=False)
    write_json(paths.BALANCE_METRICS, report)
    counts[["age", "before", "after"]].to_csv(paths.BALANCE_HISTOGRAM, index=False)
    print(
        f"balance: {report['rows_before']} images -> {report['rows_after']} plan rows "
        f"(kept {report['kept']}, removed {report['removed']} at {report['ages_downsampled']} "
        f"ages, added {report['added']} augmented at {report['ages_upsampled']} ages) -> "
        f"{paths.PLAN}"
    )


if __name__ == "__main__":
    run_main("balance", main)
