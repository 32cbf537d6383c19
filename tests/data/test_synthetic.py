"""The synthetic demo set: UTKFace-style names, determinism, label skew, learnable faces."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import Ridge, RidgeClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tiny import AGE_MAX, MAX_PIXELS

from utkface.data.imaging import load_image
from utkface.data.labels import parse_file_name
from utkface.data.synthetic import draw_face, sample_labels, synthetic_files, write_synthetic

SEED = 42
ProbeData = tuple[np.ndarray, np.ndarray, np.ndarray]


def test_names_carry_the_drawn_labels_and_unique_timestamps() -> None:
    stamps = set()
    for index, (name, _) in enumerate(synthetic_files(20, SEED)):
        assert name.endswith(".jpg.chip.jpg")
        label = parse_file_name(name, AGE_MAX)
        drawn = sample_labels(np.random.default_rng([SEED, index]), 1)[0]
        assert (label.age, label.gender, label.race) == drawn
        assert len(label.timestamp) == 17 and label.timestamp.startswith("2017")
        stamps.add(label.timestamp)
    assert len(stamps) == 20


def test_files_are_200px_rgb_jpegs() -> None:
    for _, data in synthetic_files(5, SEED):
        image = Image.open(io.BytesIO(data))
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (200, 200))


def test_draw_face_honours_size() -> None:
    image = draw_face(30, 1, 2, np.random.default_rng(0), size=64)
    assert (image.mode, image.size) == ("RGB", (64, 64))


def test_same_seed_gives_identical_bytes() -> None:
    assert list(synthetic_files(8, SEED)) == list(synthetic_files(8, SEED))


def test_image_i_does_not_depend_on_count() -> None:
    assert list(synthetic_files(5, SEED)) == list(synthetic_files(20, SEED))[:5]


def test_another_seed_gives_other_images() -> None:
    ours = [data for _, data in synthetic_files(5, SEED)]
    theirs = [data for _, data in synthetic_files(5, SEED + 1)]
    assert all(a != b for a, b in zip(ours, theirs, strict=True))


def test_write_synthetic_writes_named_files(tmp_path: Path) -> None:
    written = write_synthetic(tmp_path / "faces", 3, SEED)
    assert [p.name for p in written] == [name for name, _ in synthetic_files(3, SEED)]
    assert all(p.read_bytes()[:2] == b"\xff\xd8" for p in written)  # JPEG magic


def test_label_proportions_look_like_utkface() -> None:
    labels = np.array(sample_labels(np.random.default_rng(SEED), 3000))
    ages, genders, races = labels.T
    assert ages.min() >= 1 and ages.max() <= 100

    def share(lo: int, hi: int) -> float:
        return float(np.mean((ages >= lo) & (ages <= hi)))

    young_adults = share(20, 35)
    assert young_adults > 0.3
    assert all(young_adults > share(lo, lo + 15) for lo in (4, 36, 52, 68, 84))
    assert 0.07 < share(1, 3) < 0.13
    assert 0 < share(86, 100) < 0.03
    assert 0.45 < genders.mean() < 0.55
    assert np.allclose(
        np.bincount(races, minlength=5) / len(races), [0.45, 0.2, 0.15, 0.15, 0.05], atol=0.03
    )


@pytest.fixture(scope="module")
def probe_data() -> ProbeData:
    """600 faces as 24x24 RGB pixel vectors (through the pipeline's decoder), ages, genders."""
    pixels, ages, genders = [], [], []
    for name, data in synthetic_files(600, SEED):
        label = parse_file_name(name, AGE_MAX)
        pixels.append(load_image(data, 24, MAX_PIXELS).ravel() / 255.0)
        ages.append(label.age)
        genders.append(label.gender)
    return np.array(pixels), np.array(ages, dtype=float), np.array(genders)


def _probe(pixels: np.ndarray, ages: np.ndarray, genders: np.ndarray) -> tuple[float, float]:
    """Linear models fit on 450 faces, scored on 150: gender accuracy and age MAE / median MAE."""
    train, test = slice(0, 450), slice(450, None)
    gender = make_pipeline(StandardScaler(), RidgeClassifier(alpha=100.0))
    accuracy = gender.fit(pixels[train], genders[train]).score(pixels[test], genders[test])
    age = make_pipeline(StandardScaler(), Ridge(alpha=30.0)).fit(pixels[train], ages[train])
    mae = np.abs(age.predict(pixels[test]) - ages[test]).mean()
    baseline = np.abs(np.median(ages[train]) - ages[test]).mean()
    return accuracy, mae / baseline


def test_age_and_gender_are_learnable_from_pixels(probe_data: ProbeData) -> None:
    """Even a linear model on tiny images beats chance; a CNN at 64 px does far better."""
    accuracy, mae_ratio = _probe(*probe_data)
    assert accuracy > 0.75
    assert mae_ratio < 0.8


def test_probe_fails_on_shuffled_labels(probe_data: ProbeData) -> None:
    """Control: the probe's thresholds are not reachable without the drawn cues."""
    pixels, ages, genders = probe_data
    rng = np.random.default_rng(0)
    accuracy, mae_ratio = _probe(pixels, rng.permutation(ages), rng.permutation(genders))
    assert accuracy < 0.65
    assert mae_ratio > 0.95
