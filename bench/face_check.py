"""Benchmark: the face check (`utkface.model.face_backbone.Landmarks`) on real faces (also
turned sideways), the synthetic demo set's cartoon faces and images without a face.

Prints, per set, the share whose landmarks hold, the share that passes the check (held, else
the HOG detector), the share that would be read as a tight crop (passes, and the face fills the
crop) and the milliseconds per image. Real faces should pass and images without a face should
not; the cost is paid once per answer.

    python bench/face_check.py [--data ../shared/utkface/crop_part1_dev] [--faces 500]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image
from pipeline_real import DEFAULT_DATA, cpu_description
from skimage import data

from utkface.data.imaging import load_image
from utkface.data.synthetic import synthetic_files
from utkface.model import face_backbone
from utkface.model.face_backbone import Landmarks, fills_crop, package_files

SIZE = 200  # features.image_size
PHOTOS = (
    *("coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina"),
    *("cat", "horse", "page", "text", "moon", "camera"),
)  # scikit-image's sample images without a frontal human face


def square(image: np.ndarray) -> np.ndarray:
    rgb = Image.fromarray(image).convert("RGB")
    return np.asarray(rgb.resize((SIZE, SIZE), Image.Resampling.BILINEAR))


def image_sets(folder: Path, count: int) -> dict[str, list[np.ndarray]]:
    files = sorted(folder.glob("*.jpg")) if folder.is_dir() else []
    picked = files[:: max(1, len(files) // count)][:count]
    rng = np.random.default_rng(0)
    return {
        "real faces": [load_image(p.read_bytes(), SIZE, 25_000_000) for p in picked],
        "synthetic faces": [load_image(b, SIZE, 25_000_000) for _, b in synthetic_files(100, 3)],
        "no face (photos)": [square(getattr(data, name)()) for name in PHOTOS],
        "noise and flat": [
            *(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(10)),
            *(np.full((SIZE, SIZE, 3), v, np.uint8) for v in (0, 128, 255)),
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--faces", type=int, default=500)
    args = parser.parse_args()
    sets = image_sets(args.data, args.faces)
    sets["real faces turned 90 degrees"] = [np.rot90(face).copy() for face in sets["real faces"]]
    check = Landmarks(package_files())
    print(f"CPU: {cpu_description()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    print(f"{'images':30s} {'n':>4s} {'held':>6s} {'pass':>6s} {'fill':>6s} {'ms/image':>9s}")
    for name, images in sets.items():
        started = time.perf_counter()
        located = [check.locate(image) for image in images]
        passed = check.check(images, located)
        seconds = time.perf_counter() - started
        held = np.mean([where.held for where in located])
        fill = np.mean([fills_crop(where.points, SIZE) for where in located] & passed)
        print(
            f"{name:30s} {len(images):4d} {held:6.3f} {passed.mean():6.3f} {fill:6.3f} "
            f"{1000 * seconds / len(images):9.2f}"
        )
    print(
        f"held: landmarks moved < {face_backbone.HOLD_LIMIT} of a {face_backbone.HOLD_SHIFT} box "
        f"shift; pass: the face check (held, else the HOG detector at {face_backbone.CHECK_SIDE} "
        f"px); fill: passes with the eyes >= {face_backbone.FILL} of the side apart"
    )


if __name__ == "__main__":
    main()
