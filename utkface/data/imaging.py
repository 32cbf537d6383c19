"""Decoding and preprocessing of one image, shared by ingest, predict and the served model.

Training, evaluation and serving all see images through `prepare_image`, so a served model gets
exactly the pixels it was trained on.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from utkface.data.rejections import Category


class ImageError(ValueError):
    """Bytes that are not a usable image; the message says why, `category` in a word."""

    def __init__(self, message: str, category: Category) -> None:
        super().__init__(message)
        self.category = category


def decode_image(data: bytes, max_pixels: int, target_size: int | None = None) -> Image.Image:
    """Decode image bytes fully, refusing empty, corrupt, truncated and oversized images.

    Every path that decodes an image (ingest, features, predict, the served model, the app)
    comes here. `max_pixels` is checked from the header, before any pixel is decoded; Pillow's
    process-wide guard (`Image.MAX_IMAGE_PIXELS`) is left as it is, and params keep
    `ingest.max_image_pixels` below it, so this limit is the one that refuses.

    With `target_size`, JPEGs are decoded by libjpeg at the smallest scale that is still at
    least that size (much faster than a full decode followed by a resize). The image comes back
    upright (`upright`).
    """
    if not data:
        raise ImageError("empty file (0 bytes)", Category.EMPTY)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            warnings.filterwarnings("ignore", "Corrupt EXIF data", UserWarning)  # see `upright`
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(
                    f"decompression bomb refused: {width}x{height} pixels exceeds {max_pixels}",
                    Category.DECOMPRESSION_BOMB,
                )
            if target_size and image.format == "JPEG" and image.mode in ("RGB", "L"):
                image.draft(image.mode, (target_size, target_size))
            image.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(
            f"decompression bomb refused: {error}", Category.DECOMPRESSION_BOMB
        ) from None
    except UnidentifiedImageError:
        raise ImageError("not an image (unrecognised format)", Category.NOT_AN_IMAGE) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"corrupt or truncated image: {error}", Category.CORRUPT) from None
    return upright(image)


def upright_size(data: bytes) -> tuple[int, int]:
    """The full width and height of image bytes that `decode_image` accepted, turned upright as
    it turns them, from the header alone: what its pixel coordinates scale to where the decode
    was reduced (`target_size`)."""
    orientation = None
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        with warnings.catch_warnings(), contextlib.suppress(Exception):  # as `upright`
            warnings.simplefilter("ignore")
            orientation = image.getexif().get(ExifTags.Base.Orientation)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says (phones store photos sideways with such a
    tag), with Pillow's `ImageOps.exif_transpose`; without the tag, as it is. A corrupt EXIF
    block leaves the image as it is: the pixels decoded, so the photo is still usable, and
    Pillow's EXIF parser raises many kinds of errors on malformed blocks."""
    with warnings.catch_warnings(), contextlib.suppress(Exception):
        warnings.simplefilter("ignore")  # Pillow's "Corrupt EXIF data" for such a block
        ImageOps.exif_transpose(image, in_place=True)
    return image


def prepare_image(image: Image.Image, size: int) -> np.ndarray:
    """RGB uint8 array of shape (size, size, 3): centre-cropped to a square, then resized.

    UTKFace crops are already square; other photos are centre-cropped rather than squashed.
    Grayscale, palette, CMYK and alpha images are converted to RGB (alpha dropped).
    """
    rgb = image.convert("RGB")
    width, height = rgb.size
    side = min(width, height)
    if width != height:
        left, top = (width - side) // 2, (height - side) // 2
        rgb = rgb.crop((left, top, left + side, top + side))
    if side != size:
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(rgb, dtype=np.uint8)


def load_image(data: bytes, size: int, max_pixels: int) -> np.ndarray:
    """Bytes of a JPEG/PNG/... to the model's input array; raises `ImageError`."""
    return prepare_image(decode_image(data, max_pixels, target_size=size), size)
