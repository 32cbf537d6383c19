"""Stage `balance`: a training plan that evens out UTKFace's skewed age distribution.

Ages above `balance.age_cap` are capped to it. Then, per capped age: an age with more than
`max_per_age` images keeps a seeded random `max_per_age` of them; an age with fewer than
`min_per_age` keeps all and gains augmented copies up to `min_per_age`, its images used as
sources in turn (round-robin, so each is copied as evenly as possible). Nothing is copied on disk:
the plan is a table whose rows point into the image cache (`cache_index`), and each augmented row
carries the concrete augmentation drawn for it (`utkface.data.augment`), applied when the training
split is loaded. Each age draws from its own generator seeded with (`seed`, age), so images added or
removed at one age leave every other age's sample and copies unchanged.

The plan feeds training only: `split` assigns every ingested image to one split and takes val and
test from the ingested originals, so test keeps UTKFace's natural age distribution and no copy of
a test face is trained on.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from utkface.data.augment import NEUTRAL_SPEC, SPEC_COLUMNS, draw_specs
from utkface.params import BalanceParams

PLAN_COLUMNS = ("image_id", "cache_index", "age", "gender", "race", "augmented", *SPEC_COLUMNS)


def original_rows(labels: pd.DataFrame, age_cap: int | None = None) -> pd.DataFrame:
    """Plan rows showing `labels`' images as they are (neutral spec), ages capped at `age_cap`."""
    rows = labels[["image_id", "cache_index", "age", "gender", "race"]].astype(
        {"cache_index": "int64", "age": "int64", "gender": "int64", "race": "int64"}
    )
    if age_cap is not None:
        rows["age"] = rows["age"].clip(upper=age_cap)
    rows["augmented"] = False
    for column, value in NEUTRAL_SPEC.items():
        rows[column] = value
    return rows.reset_index(drop=True)


def _age_rows(
    positions: np.ndarray, cfg: BalanceParams, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Positions of one age's kept originals and of the sources of its augmented copies."""
    if len(positions) > cfg.max_per_age:
        return np.sort(rng.choice(positions, cfg.max_per_age, replace=False)), positions[:0]
    missing = max(cfg.min_per_age - len(positions), 0)
    return positions, np.resize(rng.permutation(positions), missing)  # round-robin over images


def balance_plan(labels: pd.DataFrame, cfg: BalanceParams, seed: int) -> pd.DataFrame:
    """The training plan (`PLAN_COLUMNS`): kept originals, then augmented copies, by age.

    Independent of the row order of `labels`; `enabled: false` gives every original, capped.
    """
    if labels["image_id"].duplicated().any():
        raise ValueError("balance: labels hold duplicate image ids")
    originals = original_rows(labels.sort_values("image_id"), cfg.age_cap)
    if not cfg.enabled:
        return originals
    kept, sources, specs = [], [], []
    for age, positions in sorted(originals.groupby("age").indices.items()):
        rng = np.random.default_rng([seed, int(age)])
        keep, copy_from = _age_rows(positions, cfg, rng)
        kept.append(keep)
        sources.append(copy_from)
        specs.append(draw_specs(len(copy_from), cfg.augment, rng))
    copies = originals.iloc[np.concatenate(sources)].reset_index(drop=True)
    copies["augmented"] = True
    copies[list(SPEC_COLUMNS)] = pd.concat(specs, ignore_index=True)
    return pd.concat([originals.iloc[np.concatenate(kept)], copies], ignore_index=True)
