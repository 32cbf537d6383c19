"""Benchmark: how the served model reads four kinds of photo by default (`faces="auto"`), and
the age error of what it answers.

On real UTKFace crops of the test split of a model trained on the real folder (`--model` in
`--tracking-uri`, e.g. the copy `bench/last_mile.py --keep` trained), it builds:
(a) the crops as they are (tight crops: one answer each, on the whole crop, is right);
(b) each crop placed at 25-50 % of the height of a 640 x 480 photo without a face (one answer,
    on a box around the placed crop, is right);
(c) two to four crops side by side, 160-240 px each, in one photo (one answer per face);
(d) photos without a face: scikit-image's sample photos and noise (an error is right).
For each kind it prints how the images were read (one face as a tight crop, faces found, no
face), the share read right, the age MAE of the answers matched to a placed face against the
name's age (a found box matches a face when its centre lies inside it), and the milliseconds
per image; with the CPU beside every time.

    python bench/any_photo.py --model models:/utkface-age-gender@champion \\
        --tracking-uri sqlite:////path/to/copy/mlflow.db --root /path/to/copy [--faces 300]
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from last_mile import test_ids, truth
from PIL import Image
from pipeline_real import DEFAULT_DATA, cpu_description
from skimage import data as samples

BACKGROUNDS = ("coffee", "rocket", "hubble_deep_field", "moon", "page", "text", "retina")
NO_FACE_PHOTOS = (*BACKGROUNDS, "immunohistochemistry", "horse", "chelsea")  # a cat: no person


@dataclass(frozen=True)
class Photo:
    """An image and its faces: (box x, y, w, h, age) each; an empty list when it has none."""

    data: bytes
    faces: list[tuple[int, int, int, int, int]]


def jpeg(image: np.ndarray | Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture = image if isinstance(image, Image.Image) else Image.fromarray(image)
    picture.convert("RGB").save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def background(index: int) -> Image.Image:
    name = BACKGROUNDS[index % len(BACKGROUNDS)]
    return Image.fromarray(getattr(samples, name)()).convert("RGB").resize((640, 480))


def photo_sets(crops: list[Path], rng: np.random.Generator) -> dict[str, list[Photo]]:
    ages = [truth(str(path))[0] for path in crops]
    pairs = list(zip(crops, ages, strict=True))
    tight = [Photo(path.read_bytes(), [(0, 0, 200, 200, age)]) for path, age in pairs]
    scenes = []
    for index, (path, age) in enumerate(pairs):
        scene = background(index)
        side = int(480 * rng.uniform(0.25, 0.5))
        x, y = int(rng.integers(0, 640 - side)), int(rng.integers(0, 480 - side))
        scene.paste(Image.open(path).convert("RGB").resize((side, side)), (x, y))
        scenes.append(Photo(jpeg(scene), [(x, y, side, side, age)]))
    groups, start = [], 0
    while start + 4 <= len(crops):
        count = int(rng.integers(2, 5))
        sides = [int(rng.integers(160, 241)) for _ in range(count)]
        canvas = Image.new("RGB", (sum(sides) + 40 * (count + 1), max(sides) + 80), (228,) * 3)
        faces, x = [], 40
        for path, age, side in zip(crops[start:], ages[start:], sides, strict=False):
            canvas.paste(Image.open(path).convert("RGB").resize((side, side)), (x, 40))
            faces.append((x, 40, side, side, age))
            x += side + 40
        groups.append(Photo(jpeg(canvas), faces))
        start += count
    noise = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(5)]
    empty = [
        Photo(jpeg(Image.fromarray(getattr(samples, name)()).convert("RGB")), [])
        for name in NO_FACE_PHOTOS
    ]
    empty += [Photo(jpeg(image), []) for image in noise]
    empty += [Photo(jpeg(np.full((480, 640, 3), 128, np.uint8)), [])]
    return {
        "(a) tight crops": tight,
        "(b) a crop in a larger scene": scenes,
        "(c) 2-4 faces in a row": groups,
        "(d) no face": empty,
    }


def matched(answer: pd.Series, faces: list[tuple[int, int, int, int, int]]) -> int | None:
    """The index of the placed face whose box holds the answer's box centre, else None."""
    cx = answer["box_x"] + answer["box_w"] / 2
    cy = answer["box_y"] + answer["box_h"] / 2
    for index, (x, y, w, h, _) in enumerate(faces):
        if x <= cx <= x + w and y <= cy <= y + h:
            return index
    return None


def measure(model, photos: list[Photo]) -> dict:
    frame = pd.DataFrame({"image": [base64.b64encode(p.data).decode() for p in photos]})
    started = time.perf_counter()
    answers = model.predict(frame, params={"on_error": "report"})
    seconds = time.perf_counter() - started
    right, errors, read = 0, [], {"tight crop": 0, "faces found": 0, "no face": 0, "other": 0}
    for row, photo in enumerate(photos):
        rows = answers[answers["row"] == row]
        if rows["error"].notna().any():
            read["no face" if (rows["faces"] == 0).any() else "other"] += 1
            right += not photo.faces
            continue
        whole = len(rows) == 1 and rows.iloc[0]["box_x"] == 0 and rows.iloc[0]["box_y"] == 0
        read["tight crop" if whole else "faces found"] += 1
        hits = [matched(answer, photo.faces) for _, answer in rows.iterrows()]
        for hit, (_, answer) in zip(hits, rows.iterrows(), strict=True):
            if hit is not None:
                errors.append(abs(float(answer["age"]) - photo.faces[hit][4]))
        exact = len(rows) == len(photo.faces) and sorted(h for h in hits if h is not None) == list(
            range(len(photo.faces))
        )
        right += bool(photo.faces) and exact
    return {
        "images": len(photos),
        "read": read,
        "right": right / len(photos),
        "mae": float(np.mean(errors)) if errors else float("nan"),
        "answers": len(errors),
        "ms": 1000 * seconds / len(photos),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--model", required=True)
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--root", type=Path, required=True, help="the copy that trained it")
    parser.add_argument("--faces", type=int, default=300)
    args = parser.parse_args()
    mlflow.set_tracking_uri(args.tracking_uri)
    keep = test_ids(args.root)
    files = sorted(p for p in args.data.glob("*.jpg") if truth(str(p)))
    crops = [p for p in files if keep is None or p.name.split(".jpg")[0] in keep]
    crops = crops[:: max(1, len(crops) // args.faces)][: args.faces]
    model = mlflow.pyfunc.load_model(args.model)
    sets = photo_sets(crops, np.random.default_rng(0))
    print(f"CPU: {cpu_description()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    print(f"{len(crops)} test-split faces of {args.data}; model {args.model}")
    header = (
        f"{'photos':30s} {'n':>4s}  {'read as':44s} {'right':>6s} {'age MAE':>8s} {'ms/img':>7s}"
    )
    print(header)
    for name, photos in sets.items():
        figures = measure(model, photos)
        read = ", ".join(f"{k} {v}" for k, v in figures["read"].items() if v)
        print(
            f"{name:30s} {figures['images']:4d}  {read:44s} {figures['right']:6.3f} "
            f"{figures['mae']:8.2f} {figures['ms']:7.1f}"
        )


if __name__ == "__main__":
    main()
