"""Why a raw file is not admitted: a `Category` carried with each rejection, beside a message.

Every place that rejects says both: admission, a source's `Refusal`, an `ImageError`. The
categories are what `metrics/ingest.json` counts and the rejections CSV lists, so their values
stay as they are; the message is free text and may be reworded.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple


class Category(StrEnum):
    MALFORMED_NAME = "malformed_name"
    NAME_NOT_UTF8 = "name_not_utf8"
    LABEL_OUT_OF_RANGE = "label_out_of_range"
    DUPLICATE = "duplicate"
    UNSAFE_PATH = "unsafe_path"
    TOO_LARGE = "too_large"
    DECOMPRESSION_BOMB = "decompression_bomb"
    EMPTY = "empty"
    NOT_AN_IMAGE = "not_an_image"
    CORRUPT = "corrupt"


class Rejection(NamedTuple):
    """One rejected file, as a row of the rejections CSV."""

    file: str
    reason: str
    category: Category
