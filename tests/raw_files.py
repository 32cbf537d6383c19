"""Test helpers for raw files: a spy over `utkface.data.sources.RawFile` streams, and
pictures stored as cameras store them (EXIF orientation)."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator

from PIL import Image

from utkface.data.sources import RawFile


def spy(files: Iterator[RawFile], read: list[str]) -> Iterator[RawFile]:
    """The same files, recording the name of each one whose bytes are read."""
    for raw in files:

        def recorded(raw: RawFile = raw) -> bytes:
            read.append(raw.name)
            return raw.read()

        yield dataclasses.replace(raw, read=recorded)


ORIENTATION = 0x0112
# How a camera stores an upright picture under each EXIF orientation: the inverse of what
# the tag tells a viewer to do (2, 3, 4, 5 and 7 undo themselves; 6 and 8 undo each other).
STORED = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def stored(upright: Image.Image, orientation: int, fmt: str = "PNG") -> bytes:
    """`upright` as a camera stores it with EXIF `orientation`."""
    transpose = STORED[orientation]
    pixels = upright if transpose is None else upright.transpose(transpose)
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    buffer = io.BytesIO()
    pixels.save(
        buffer, format=fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {})
    )
    return buffer.getvalue()
