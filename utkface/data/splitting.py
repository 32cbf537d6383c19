"""The `split` stage's rule: train / val / test by source image, stratified by age bucket x gender.

Every ingested image is assigned to exactly one split, stratified on its age bucket
(`age_buckets`, true age) and gender, so all rows derived from one photo (the original and each
augmented copy in the balance plan) land in the same split. The training table is the balance
plan restricted to training images (capped ages, augmented copies included); val and test are the
ingested originals assigned to them, all of them (also those the plan dropped) with their true,
uncapped ages and no augmentation, so they keep UTKFace's natural distribution. Balancing shapes
training only.

`balance.min_per_age` / `max_per_age` are targets over the whole dataset, counted before this
split: the training table gets roughly the training share of each age (about 70 % of 200 rows for
a downsampled age, of 20 for an upsampled one), not the targets themselves.

Strata too small to stratify (fewer than ceil(2 / smallest split fraction) images, 14 at 70/15/15,
so each expects at least two images in the smallest split) are pooled: walking each gender's age
buckets from the oldest down, buckets are pooled until the pool is large enough (e.g.
"female 60-69|70+"); a small remainder at the youngest end joins the pool before it. A stratum
still too small (a whole gender below the threshold) joins the largest stratum. Without this,
scikit-learn refuses to stratify a class with a single member.

The stage raises `LeakageError` rather than writing splits where an image feeds two splits, val or
test hold augmented rows, or a row does not point at an ingested image.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import combinations

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from utkface import paths
from utkface.data.balancing import original_rows
from utkface.data.labels import GENDERS, age_buckets, bucket_names


class LeakageError(ValueError):
    """Splits that share an image, or hold rows they must not."""


def strata(
    ages: np.ndarray, genders: np.ndarray, edges: Sequence[int], min_size: int
) -> np.ndarray:
    """Stratum name of each image: gender and age bucket, small buckets pooled (see module doc)."""
    buckets = age_buckets(ages, edges)
    gender_names = np.asarray(GENDERS)[np.asarray(genders, dtype=int)]
    names = np.empty(len(buckets), dtype=object)
    for gender in np.unique(gender_names):
        mine = gender_names == gender
        counts = pd.Series(buckets[mine]).value_counts()
        pools: list[list[str]] = []
        pool: list[str] = []
        for bucket in reversed([b for b in bucket_names(edges) if b in counts.index]):
            pool.append(bucket)
            if counts[pool].sum() >= min_size:
                pools.append(pool)
                pool = []
        if pool:  # the youngest buckets, too few on their own
            if pools:
                pools[-1].extend(pool)
            else:
                pools.append(pool)
        for members in pools:
            name = f"{gender} {'|'.join(reversed(members))}"
            names[mine & np.isin(buckets, members)] = name
    sizes = pd.Series(names).value_counts()
    small = sizes.index[sizes < min_size]
    names[np.isin(names, small)] = sizes.index[0]
    return names


def assign_splits(
    labels: pd.DataFrame, edges: Sequence[int], val: float, test: float, seed: int
) -> pd.DataFrame:
    """`image_id`, `stratum` and `split` ('train', 'val' or 'test') of every ingested image."""
    sources = labels[["image_id", "age", "gender"]].sort_values("image_id").reset_index(drop=True)
    min_size = math.ceil(2 / min(val, test, 1 - val - test))
    sources["stratum"] = strata(
        sources["age"].to_numpy(), sources["gender"].to_numpy(), edges, min_size
    )
    n_val, n_test = round(val * len(sources)), round(test * len(sources))
    rest, test_rows = train_test_split(
        sources.index, test_size=n_test, stratify=sources["stratum"], random_state=seed
    )
    _, val_rows = train_test_split(
        rest, test_size=n_val, stratify=sources.loc[rest, "stratum"], random_state=seed
    )
    sources["split"] = "train"
    sources.loc[val_rows, "split"] = "val"
    sources.loc[test_rows, "split"] = "test"
    return sources[["image_id", "stratum", "split"]]


def build_splits(
    plan: pd.DataFrame, labels: pd.DataFrame, assignment: pd.DataFrame
) -> dict[str, pd.DataFrame]:
    """Train: the plan rows of training images. Val, test: their ingested originals, uncapped."""
    split_of = dict(zip(assignment["image_id"], assignment["split"], strict=True))
    plan_split = plan["image_id"].map(split_of)
    if plan_split.isna().any():
        unknown = sorted(set(plan.loc[plan_split.isna(), "image_id"]))
        raise LeakageError(
            f"split: the plan names {len(unknown)} image(s) that are not ingested, e.g. "
            f"{unknown[:3]}; is {paths.PLAN} stale? (dvc repro balance)"
        )
    ordered = labels.sort_values("image_id")
    label_split = ordered["image_id"].map(split_of)
    return {
        "train": plan[plan_split == "train"].reset_index(drop=True),
        "val": original_rows(ordered[label_split == "val"]),
        "test": original_rows(ordered[label_split == "test"]),
    }


def check_no_leakage(splits: Mapping[str, pd.DataFrame], labels: pd.DataFrame) -> None:
    """Raise `LeakageError` if an image is in two splits, val or test hold augmented rows, or a
    row's (image_id, cache_index) is not an ingested image."""
    problems = []
    ids = {name: set(table["image_id"]) for name, table in splits.items()}
    for first, second in combinations(ids, 2):
        shared = sorted(ids[first] & ids[second])
        if shared:
            problems.append(
                f"{len(shared)} image(s) in both {first} and {second}, e.g. {shared[:3]}"
            )
    for name in ("val", "test"):
        augmented = int(splits[name]["augmented"].sum())
        if augmented:
            problems.append(f"{augmented} augmented row(s) in {name}")
    ingested = set(zip(labels["image_id"], labels["cache_index"], strict=True))
    for name, table in splits.items():
        foreign = sorted(set(zip(table["image_id"], table["cache_index"], strict=True)) - ingested)
        if foreign:
            problems.append(
                f"{len(foreign)} (image_id, cache_index) pair(s) in {name} that are not ingested "
                f"images, e.g. {foreign[:3]}"
            )
    if problems:
        raise LeakageError("split: leakage between splits:\n  " + "\n  ".join(problems))
