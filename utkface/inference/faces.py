"""Face detection for photos that are not UTKFace-style crops: OpenCV's bundled Haar cascade.

The model was trained on UTKFace's aligned crops, so each detected face is cropped like those.
They are tight: on 400 random `crop_part1` images (the 195 with exactly one detection) the
200 px crop is a median 1.20 times as wide as the Haar frontal-face box (which spans about
brows to mouth, cheek to cheek) and centred 0.07 box heights below the box's centre, with the
chin in and the top of the head out. `crop_box` reproduces that: `MARGIN` of the box on each
side, moved down by `SHIFT_DOWN`. The cascade ships inside `opencv-python-headless`; nothing
is downloaded.
"""

from __future__ import annotations

from functools import cache

import cv2
import numpy as np

Box = tuple[int, int, int, int]  # x, y, width, height in pixels

CASCADE = "haarcascade_frontalface_default.xml"
MARGIN = 0.10  # of the box's side, added on each side
SHIFT_DOWN = 0.07  # of the box's side
MAX_SIDE = 1024  # larger photos are searched at this size: Haar's cost grows with the pixels
MIN_FACE = 24  # pixels, at the searched size


@cache
def _cascade() -> cv2.CascadeClassifier:
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + CASCADE)
    if cascade.empty():
        raise RuntimeError(f"cannot load OpenCV's {CASCADE} from {cv2.data.haarcascades}")
    return cascade


def detect_faces(image: np.ndarray) -> list[Box]:
    """Boxes of the frontal faces in an RGB uint8 (H, W, 3) image, left to right."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    scale = min(1.0, MAX_SIDE / max(height, width))
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    found = _cascade().detectMultiScale(
        gray, scaleFactor=1.1, minNeighbors=5, minSize=(MIN_FACE, MIN_FACE)
    )
    boxes = [
        (round(x / scale), round(y / scale), round(w / scale), round(h / scale))
        for x, y, w, h in np.asarray(found, dtype=float).reshape(-1, 4)
    ]
    return sorted(boxes)


def crop_box(box: Box, width: int, height: int) -> Box:
    """The square UTKFace-style crop around a detected `box`, inside a `width` x `height` image.

    The square keeps its size and is moved inside the image where it would stick out; it only
    shrinks (to the image's shorter side) when the image is too small for it.
    """
    x, y, w, h = box
    side = min(round(max(w, h) * (1 + 2 * MARGIN)), width, height)
    centre_x, centre_y = x + w / 2, y + h / 2 + SHIFT_DOWN * h
    left = min(max(round(centre_x - side / 2), 0), width - side)
    top = min(max(round(centre_y - side / 2), 0), height - side)
    return left, top, side, side
