"""Augmentation specs (drawing and applying them) and loading a split with its augmented rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from utkface.data.augment import NEUTRAL_SPEC, SPEC_COLUMNS, apply_spec, draw_specs
from utkface.data.balancing import original_rows
from utkface.data.dataset import load_split
from utkface.params import AugmentParams


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)


def spec(**changes: float | bool) -> dict[str, float | bool]:
    return {**NEUTRAL_SPEC, **changes}


def test_neutral_spec_returns_the_image_unchanged(image):
    assert apply_spec(image, spec()) is image


def test_flip_mirrors_left_right(image):
    flipped = apply_spec(image, spec(flip=True))
    np.testing.assert_array_equal(flipped, image[:, ::-1])
    np.testing.assert_array_equal(apply_spec(flipped, spec(flip=True)), image)


@pytest.mark.parametrize(
    ("changes", "region", "expected"),
    [
        ({"rotation_deg": 90.0}, np.s_[:, :], lambda im: np.rot90(im)),  # counter-clockwise
        ({"shift_x": 0.25}, np.s_[:, 2:], lambda im: im[:, :-2]),  # 2 of 8 pixels to the right
        ({"shift_y": 0.25}, np.s_[2:], lambda im: im[:-2]),  # 2 of 8 pixels down
    ],
)
def test_geometry_conventions(image, changes, region, expected):
    np.testing.assert_array_equal(apply_spec(image, spec(**changes))[region], expected(image))


def test_zoom_enlarges_the_centre():
    image = np.zeros((16, 16, 3), dtype=np.uint8)
    image[6:10, 6:10] = 255  # a 4x4 white square in the centre
    zoomed = apply_spec(image, spec(zoom=2.0))
    assert (zoomed[:, :, 0] > 127).sum() == pytest.approx(64, abs=8)


def test_brightness_multiplies_and_clips():
    image = np.array([[[10, 100, 200]]], dtype=np.uint8)
    np.testing.assert_array_equal(apply_spec(image, spec(brightness=1.5)), [[[15, 150, 255]]])


def test_uncovered_border_is_filled_from_the_image_not_black():
    flat = np.full((16, 16, 3), 77, dtype=np.uint8)
    out = apply_spec(flat, spec(rotation_deg=30.0, zoom=0.8, shift_x=0.1, shear_deg=8.0))
    assert out.dtype == np.uint8 and out.shape == flat.shape
    assert (out == 77).all()


def test_draw_specs_is_seeded_and_respects_the_ranges():
    cfg = AugmentParams(rotation_deg=10, shift=0.05, brightness=0.1, shear_deg=5, zoom=0.2)
    specs = draw_specs(500, cfg, np.random.default_rng(1))
    pd.testing.assert_frame_equal(specs, draw_specs(500, cfg, np.random.default_rng(1)))
    assert tuple(specs.columns) == SPEC_COLUMNS
    assert specs["rotation_deg"].abs().max() <= 10 and specs["zoom"].between(0.8, 1.2).all()
    assert specs["flip"].any() and not specs["flip"].all()
    no_flip = draw_specs(
        50, cfg.model_copy(update={"horizontal_flip": False}), np.random.default_rng(1)
    )
    assert not no_flip["flip"].any()


def write_split(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    """A 6-image cache and a table of 4 rows: two originals and two flipped copies."""
    cache = np.random.default_rng(2).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    labels = pd.DataFrame(
        {
            "image_id": [f"img{i}" for i in (4, 1, 4, 5)],
            "cache_index": [4, 1, 4, 5],
            "age": [30, 2, 30, 90],
            "gender": [1, 0, 1, 0],
            "race": [0, 1, 0, 2],
        }
    )
    table = original_rows(labels)
    table.loc[[2, 3], ["augmented", "flip"]] = True
    np.save(tmp_path / "images.npy", cache)
    table.to_parquet(tmp_path / "train.parquet")
    return tmp_path / "train.parquet", tmp_path / "images.npy", cache


def test_load_split_gathers_by_cache_index_and_applies_specs(tmp_path: Path):
    table_path, images_path, cache = write_split(tmp_path)
    data = load_split("train", table_path, images_path)
    assert data.images.shape == (4, 8, 8, 3) and data.images.dtype == np.uint8
    assert data.age.dtype == data.gender.dtype == np.float32
    np.testing.assert_array_equal(data.age, [30, 2, 30, 90])
    np.testing.assert_array_equal(data.gender, [1, 0, 1, 0])
    np.testing.assert_array_equal(data.images[0], cache[4])
    np.testing.assert_array_equal(data.images[1], cache[1])
    np.testing.assert_array_equal(data.images[2], cache[4][:, ::-1])
    np.testing.assert_array_equal(data.images[3], cache[5][:, ::-1])
    assert len(data.table) == 4
    np.testing.assert_array_equal(np.load(images_path), cache)  # the cache is left as it was
