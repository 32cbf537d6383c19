"""Decoding (`utkface.data.imaging`): photos come out upright whatever EXIF orientation they
were stored with, as phones store them, and a corrupt EXIF block never costs the photo."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from raw_files import STORED, stored
from tiny import MAX_PIXELS

from utkface.data.imaging import decode_image, load_image


def portrait() -> Image.Image:
    """A 60 x 40 picture no flip or turn maps onto itself."""
    pixels = np.random.default_rng(0).integers(0, 256, (60, 40, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.mark.parametrize("orientation", list(STORED))
def test_each_orientation_decodes_upright(orientation: int) -> None:
    decoded = decode_image(stored(portrait(), orientation), MAX_PIXELS)
    assert decoded.size == (40, 60)
    np.testing.assert_array_equal(np.asarray(decoded.convert("RGB")), np.asarray(portrait()))


def test_a_phone_jpeg_stored_sideways_is_read_upright() -> None:
    gradient = np.linspace(0, 255, 200, dtype=np.uint8)  # smooth: JPEG keeps it close
    upright = Image.fromarray(np.stack([np.tile(gradient[:, None], (1, 120))] * 3, axis=-1))
    sideways = load_image(stored(upright, 6, "JPEG"), 64, MAX_PIXELS)
    plain = io.BytesIO()
    upright.save(plain, format="JPEG", quality=95)
    expected = load_image(plain.getvalue(), 64, MAX_PIXELS)
    assert np.abs(sideways.astype(int) - expected).mean() < 2  # top dark, bottom light
    assert sideways[:8].mean() < 60 and sideways[-8:].mean() > 190


def test_a_corrupt_exif_block_decodes_without_turning(recwarn: pytest.WarningsRecorder) -> None:
    buffer = io.BytesIO()
    portrait().save(buffer, format="JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff\x01")
    decoded = decode_image(buffer.getvalue(), MAX_PIXELS)
    assert decoded.size == (40, 60)
    assert not [w for w in recwarn if "EXIF" in str(w.message)]  # and says nothing of it
