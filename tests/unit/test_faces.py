"""Face detection and UTKFace-style crops: margin geometry, clipping, detection on a face pasted
at a known place, and the app's drawing and sample images."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data

from utkface.app import logic
from utkface.data.synthetic import draw_face
from utkface.inference import faces
from utkface.inference.client import Prediction

FACE_AT = (230, 120)  # where the 200 px synthetic face is pasted (x, y)


@pytest.fixture(scope="module")
def pasted() -> np.ndarray:
    """A 640x480 grey photo with one synthetic face (its head ~140 px wide) at `FACE_AT`."""
    photo = np.full((480, 640, 3), 128, dtype=np.uint8)
    x, y = FACE_AT
    photo[y : y + 200, x : x + 200] = np.asarray(draw_face(34, 1, 0, np.random.default_rng(3)))
    return photo


def test_crop_box_adds_the_margin_and_moves_down() -> None:
    side = round(100 * (1 + 2 * faces.MARGIN))
    left, top, width, height = faces.crop_box((200, 150, 100, 100), 640, 480)
    assert (width, height) == (side, side)
    assert left + width / 2 == pytest.approx(250, abs=1)  # same centre across
    assert top + height / 2 == pytest.approx(200 + faces.SHIFT_DOWN * 100, abs=1)


@pytest.mark.parametrize(
    ("box", "size", "expected"),
    [
        ((0, 0, 100, 100), (640, 480), (0, 0, 120, 120)),  # top-left corner: moved in
        ((560, 400, 80, 80), (640, 480), (544, 384, 96, 96)),  # bottom-right corner
        ((10, 10, 300, 300), (320, 240), (40, 0, 240, 240)),  # too large: the shorter side
    ],
)
def test_crop_box_stays_square_inside_the_image(
    box: faces.Box, size: tuple[int, int], expected: faces.Box
) -> None:
    assert faces.crop_box(box, *size) == expected


def test_detects_the_pasted_face_and_crops_it_with_the_margin(pasted: np.ndarray) -> None:
    (box,) = faces.detect_faces(pasted)
    x, y, w, h = box
    face_x, face_y = FACE_AT
    assert face_x <= x and x + w <= face_x + 200
    assert face_y <= y and y + h <= face_y + 200
    assert 100 <= w <= 180  # the head, not the whole 200 px tile nor a feature
    left, top, side, _ = faces.crop_box(box, pasted.shape[1], pasted.shape[0])
    crop = pasted[top : top + side, left : left + side]
    assert crop.shape == (round(w * (1 + 2 * faces.MARGIN)),) * 2 + (3,)
    grey = np.all(crop == 128, axis=-1)
    assert grey.mean() < 0.05  # the crop stays on the pasted face, not the background


def test_detects_the_astronaut_and_no_face_in_plain_images() -> None:
    (box,) = faces.detect_faces(data.astronaut())
    assert box == pytest.approx((177, 66, 95, 95), abs=4)
    assert faces.detect_faces(np.full((300, 400, 3), 200, dtype=np.uint8)) == []
    noise = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    assert faces.detect_faces(noise) == []


def test_large_photos_are_searched_downscaled_with_boxes_in_full_size(pasted: np.ndarray) -> None:
    large = np.repeat(np.repeat(pasted, 3, axis=0), 3, axis=1)  # 1920x1440
    (small,) = faces.detect_faces(pasted)
    (box,) = faces.detect_faces(large)
    assert box == pytest.approx(tuple(3 * v for v in small), abs=0.05 * 3 * small[2])


def test_rejects_non_rgb_arrays() -> None:
    with pytest.raises(ValueError, match="RGB uint8"):
        faces.detect_faces(np.zeros((50, 50), dtype=np.uint8))


def test_every_sample_image_shows_a_detectable_face() -> None:
    counts = {name: len(faces.detect_faces(image)) for name, image in logic.sample_images().items()}
    assert list(counts.values()) == [1, 1, 3], counts


def test_labels_name_the_probability_of_the_gender_shown() -> None:
    female = Prediction("x", 34.4, 27.2, 41.6, "female", 0.93, "ok", face=1, box=(1, 2, 30, 30))
    male = Prediction("x", 61.6, 50.0, 74.9, "male", 0.12, "implausible", box=(40, 2, 30, 30))
    assert logic.label(female) == "age ≈ 34 (27-42), female p=0.93"
    assert logic.label(male) == "age ≈ 62 (50-75), male p=0.88, not a clear face"
    image = np.zeros((100, 120, 3), dtype=np.uint8)
    drawn = np.asarray(logic.annotate(image, [female, male]))
    assert drawn.shape == (400, 480, 3)  # enlarged 4 times to stay legible
    assert drawn[8, 4].tolist() == list(logic.BOX_COLOR)  # the first box's corner, x4
    assert drawn[240:, :].max() == 0  # nothing drawn below the boxes and their labels
