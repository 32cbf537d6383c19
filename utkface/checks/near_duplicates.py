"""Near-duplicate images: the same picture under other bytes (re-encoded, resized, recoloured),
which ingest's byte comparison cannot see.

Each image gets a 256-bit difference hash (is each of 16 x 16 grey cells brighter than its left
neighbour?); two images whose hashes differ in at most `NEAR_BITS` bits are one picture. Measured
on crop_part1_dev's 6,838 cached faces: a JPEG re-encoding moves the hash by 3 bits (median), 6
(90th percentile), 12 at most, while 98.3 % of the faces are more than 8 bits from every other
(median nearest: 51 bits); the 118 within 8 bits are true near copies, often labelled with
other ages (12 and 13, 16 and 17).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

HASH_SIDE = 16
NEAR_BITS = 8
_CHUNK = 2048  # rows compared at once: 2048 x N float32 distances


def difference_hash(image: np.ndarray) -> np.ndarray:
    """The 256 bits of one RGB image's difference hash, as booleans."""
    grey = Image.fromarray(image).convert("L").resize((HASH_SIDE + 1, HASH_SIDE), Image.BILINEAR)
    cells = np.asarray(grey, np.int16)
    return (cells[:, 1:] > cells[:, :-1]).ravel()


def nearest(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row of `hashes` (N x bits, booleans), the Hamming distance to the nearest other
    row and that row's index (distance `bits + 1` and index -1 when there is no other row)."""
    bits = hashes.astype(np.float32)
    ones = bits.sum(axis=1)
    count = len(bits)
    distance = np.full(count, hashes.shape[1] + 1, np.int64)
    index = np.full(count, -1, np.int64)
    for start in range(0, count, _CHUNK):
        rows = slice(start, min(start + _CHUNK, count))
        pairwise = ones[rows, None] + ones[None, :] - 2 * bits[rows] @ bits.T  # exact: ints < 2^24
        local = np.arange(pairwise.shape[0])
        pairwise[local, local + start] = np.inf  # not itself
        if count > 1:
            index[rows] = pairwise.argmin(axis=1)
            distance[rows] = pairwise[local, index[rows]].round().astype(np.int64)
    return distance, index
