"""Benchmark: the face check (`utkface.model.face_backbone.Landmarks.plausible`) on real faces,
the synthetic demo set's cartoon faces and images without a face, at a few check sizes.

Prints, per check size, the share of each set that passes and the milliseconds per image.
Real faces should pass and images without a face should not; the cost is paid once per answer.

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
from utkface.model.face_backbone import Landmarks, package_files

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
    parser.add_argument("--sides", type=int, nargs="+", default=[100, 120, 140])
    args = parser.parse_args()
    sets = image_sets(args.data, args.faces)
    check = Landmarks(package_files())
    print(f"CPU: {cpu_description()}, {os.cpu_count()} cores")
    print(f"{'side':>4s} " + " ".join(f"{f'{name} ({len(s)})':>22s}" for name, s in sets.items()))
    for side in args.sides:
        face_backbone.CHECK_SIDE = side  # read by `Landmarks.detected` on every call
        cells, seconds, images = [], 0.0, 0
        for images_of_set in sets.values():
            started = time.perf_counter()
            passed = check.plausible(images_of_set)
            seconds += time.perf_counter() - started
            images += len(images_of_set)
            cells.append(f"{passed.mean():22.3f}")
        print(f"{side:4d} " + " ".join(cells) + f"   {1000 * seconds / images:.2f} ms/image")
    print(f"threshold {face_backbone.CHECK_THRESHOLD}, padding {face_backbone.CHECK_PAD}")


if __name__ == "__main__":
    main()
