"""One split in memory for tune, train and evaluate: its table, its images and its targets.

Pixels come from the ingested image cache (memory-mapped, gathered by `cache_index`). Augmented
rows of the training split are rendered here, once per load, from the concrete spec `balance`
drew for them (a few seconds for thousands of 64x64 images); the random augmentation that differs
every epoch is the model's own preprocessing layers (`model.augment`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from utkface import paths
from utkface.data.augment import SPEC_COLUMNS, apply_spec


@dataclass
class SplitData:
    # uint8 (n, S, S, 3) images, float32 (n, F) face features, or the finetuned family's
    # arrays by input name (`utkface.model.finetuned`)
    images: np.ndarray | dict[str, np.ndarray]
    age: np.ndarray  # float32 (n,), years (capped in train, true in val / test)
    gender: np.ndarray  # float32 (n,), 1.0 = female
    table: pd.DataFrame  # the split's rows, in the order of the arrays


def take_rows(data: SplitData, keep: np.ndarray) -> SplitData:
    """The rows `keep` (indices, in that order) of `data`."""
    images = (
        {name: array[keep] for name, array in data.images.items()}
        if isinstance(data.images, dict)
        else data.images[keep]
    )
    return SplitData(images, data.age[keep], data.gender[keep], data.table.iloc[keep])


def sample_rows(data: SplitData, size: int, seed: int) -> SplitData:
    """`size` seeded random rows of `data` (all of it when it has no more), in split order."""
    if size >= len(data.age):
        return data
    keep = np.sort(np.random.default_rng(seed).choice(len(data.age), size=size, replace=False))
    return take_rows(data, keep)


def load_split(
    name: str,
    table_path: Path | None = None,
    images_path: Path = paths.IMAGES,
    augment: bool = True,
) -> SplitData:
    """Split `name` ('train', 'val' or 'test'), by default from data/split and the image cache.
    `images_path` may be any table indexed by `cache_index` (the face features); with
    `augment=False` augmented rows repeat their original's row."""
    table = pd.read_parquet(table_path or paths.split_table(name))
    cache = np.load(images_path, mmap_mode="r")
    images = np.asarray(cache[table["cache_index"].to_numpy()])
    augmented = np.flatnonzero(table["augmented"].to_numpy()) if augment else []
    specs = table.iloc[augmented][list(SPEC_COLUMNS)].to_dict("records")
    for position, spec in zip(augmented, specs, strict=True):
        images[position] = apply_spec(images[position], spec)
    return SplitData(
        images=images,
        age=table["age"].to_numpy(dtype=np.float32),
        gender=table["gender"].to_numpy(dtype=np.float32),
        table=table,
    )
