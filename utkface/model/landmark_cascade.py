"""dlib's shape predictor file cut to the first levels of its cascade.

The landmark model is a cascade of forests of regression trees; each level moves the points
from where the levels before left them, the first levels most. dlib's file (its `serialize`)
holds a version, the initial shape, then the forests level by level, then each level's anchor
indices, then each level's pixel deltas. Every number is a variable-length integer: one byte
whose low nibble counts the little-endian bytes that follow and whose top bit is the sign. A
float is two of them (mantissa, exponent), a matrix its rows and columns, then its values, and a
vector its length, then its items.
"""

from __future__ import annotations

from collections.abc import Callable

VERSION = 1  # the shape predictor's serialization version this reads

Skip = Callable[[bytes, int], int]  # the position after one item that starts at the position


def _int(data: bytes, pos: int) -> tuple[int, int]:
    """The integer at `pos` and the position after it."""
    head = data[pos]
    size = head & 0x0F
    value = int.from_bytes(data[pos + 1 : pos + 1 + size], "little")
    return (-value if head & 0x80 else value), pos + 1 + size


def _encoded(value: int) -> bytes:
    """A non-negative integer as dlib writes it."""
    size = (value.bit_length() + 7) // 8
    return bytes([size]) + value.to_bytes(size, "little")


def _skip(data: bytes, pos: int, count: int) -> int:
    """The position after `count` integers from `pos`."""
    for _ in range(count):
        pos += 1 + (data[pos] & 0x0F)
    return pos


def _skip_matrix(data: bytes, pos: int) -> int:
    rows, pos = _int(data, pos)
    cols, pos = _int(data, pos)
    return _skip(data, pos, 2 * abs(rows * cols))  # floats


def _skip_tree(data: bytes, pos: int) -> int:
    """A regression tree: its splits (two pixel indices and a float threshold each), then its
    leaves (a matrix of point offsets each)."""
    splits, pos = _int(data, pos)
    pos = _skip(data, pos, 4 * splits)
    leaves, pos = _int(data, pos)
    for _ in range(leaves):
        pos = _skip_matrix(data, pos)
    return pos


def _skip_anchor(data: bytes, pos: int) -> int:
    return _skip(data, pos, 1)


def _skip_delta(data: bytes, pos: int) -> int:
    return _skip(data, pos, 4)  # a 2-d vector of floats


def _skip_vector(data: bytes, pos: int, item: Skip) -> int:
    length, pos = _int(data, pos)
    for _ in range(length):
        pos = item(data, pos)
    return pos


def _levels(data: bytes, pos: int, item: Skip) -> tuple[list[bytes], int]:
    """Each level's part of a per-level section (a vector of vectors of `item`s) that starts at
    `pos`, and the position after it."""
    count, pos = _int(data, pos)
    parts = []
    for _ in range(count):
        start, pos = pos, _skip_vector(data, pos, item)
        parts.append(data[start:pos])
    return parts, pos


def cascade_prefix(data: bytes, levels: int) -> bytes:
    """The shape predictor file `data` with only its first `levels` cascade levels (`data`
    itself, read no further than its header, when it has no more)."""
    version, pos = _int(data, 0)
    if version != VERSION:
        raise ValueError(f"not a version-{VERSION} dlib shape predictor (version {version})")
    header_end = _skip_matrix(data, pos)
    count, _ = _int(data, header_end)
    if not 1 <= levels <= count:
        raise ValueError(f"the cascade has {count} levels, not {levels}")
    if levels == count:
        return data
    forests, pos = _levels(data, header_end, _skip_tree)
    anchors, pos = _levels(data, pos, _skip_anchor)
    deltas, pos = _levels(data, pos, _skip_delta)
    if pos != len(data) or not len(forests) == len(anchors) == len(deltas):
        raise ValueError("not a dlib shape predictor: its sections do not add up")
    kept = (_encoded(levels) + b"".join(part[:levels]) for part in (forests, anchors, deltas))
    return data[:header_end] + b"".join(kept)
