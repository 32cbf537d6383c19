"""Test helper over `utkface.data.sources.RawFile` streams."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from utkface.data.sources import RawFile


def spy(files: Iterator[RawFile], read: list[str]) -> Iterator[RawFile]:
    """The same files, recording the name of each one whose bytes are read."""
    for raw in files:

        def recorded(raw: RawFile = raw) -> bytes:
            read.append(raw.name)
            return raw.read()

        yield dataclasses.replace(raw, read=recorded)
