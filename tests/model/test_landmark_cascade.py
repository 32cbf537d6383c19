"""dlib's landmark model cut to its first cascade levels: what dlib loads, where its points go,
and files it refuses."""

from __future__ import annotations

import dlib
import numpy as np
import pytest
from model_fixtures import astronaut_face

from utkface.model.face_backbone import LANDMARK_LEVELS, Landmarks, package_files
from utkface.model.landmark_cascade import cascade_prefix

LEVELS = 15  # the wheel's 5-point model


@pytest.fixture(scope="module")
def whole() -> bytes:
    return package_files().landmarks.read_bytes()


def _points(model: bytes, face: np.ndarray, shift: int = 0) -> np.ndarray:
    predictor = dlib.shape_predictor.__new__(dlib.shape_predictor)
    predictor.__setstate__((model,))
    side = face.shape[0]
    shape = predictor(face, dlib.rectangle(shift, -shift, side - 1 + shift, side - 1 - shift))
    return Landmarks.points(shape).astype(float)


def test_the_whole_cascade_is_the_file_itself_and_a_cut_can_be_cut_again(whole: bytes) -> None:
    assert cascade_prefix(whole, LEVELS) is whole
    cut = cascade_prefix(whole, LANDMARK_LEVELS)
    assert len(cut) < len(whole) * (LANDMARK_LEVELS + 1) / LEVELS
    assert cascade_prefix(cut, LANDMARK_LEVELS) is cut  # a served model's copy loads as it is
    assert cascade_prefix(cut, 3) == cascade_prefix(whole, 3)


def test_the_first_levels_place_the_points_where_the_whole_cascade_does(whole: bytes) -> None:
    face = np.ascontiguousarray(astronaut_face(200))
    exact = _points(whole, face)
    error = {
        levels: np.abs(_points(cascade_prefix(whole, levels), face) - exact).mean()
        for levels in (1, LANDMARK_LEVELS)
    }
    assert error[LANDMARK_LEVELS] < 1.5  # px, on a 200 px crop
    assert error[1] > 2 * error[LANDMARK_LEVELS]  # the later levels still move the points
    # from a box moved by a tenth of the crop, the cut still finds the face (the face check)
    moved = _points(cascade_prefix(whole, LANDMARK_LEVELS), face, shift=20)
    assert np.abs(moved - exact).mean() < 0.2 * 20


@pytest.mark.parametrize("levels", [0, LEVELS + 1])
def test_a_cut_to_no_level_or_past_the_last_is_refused(whole: bytes, levels: int) -> None:
    with pytest.raises(ValueError, match=f"has {LEVELS} levels, not {levels}"):
        cascade_prefix(whole, levels)


def test_a_file_that_is_not_a_shape_predictor_is_refused(whole: bytes) -> None:
    with pytest.raises(ValueError, match="not a version-1"):
        cascade_prefix(b"\x01\x02" + whole[2:], LANDMARK_LEVELS)
    with pytest.raises(ValueError, match="do not add up"):
        cascade_prefix(whole + b"\x00", LANDMARK_LEVELS)
