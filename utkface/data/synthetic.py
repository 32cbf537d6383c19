"""Deterministic synthetic face set in UTKFace's file format: a demo and test fixture only.

A fresh clone has no UTKFace download, so ``ingest.source: synthetic`` feeds the pipeline these
cartoon faces instead. Each file is named ``age_gender_race_timestamp.jpg.chip.jpg`` like
UTKFace's and shows cues a small CNN can learn at 64x64 px:

- age, continuously: face length, eye size and eye height change until 18; the face fills out,
  lips thin, lids droop and nose-to-mouth folds deepen from 18 to 70; wrinkles come from ~32,
  grey hair from ~42 (and receding or bald heads on many men), age spots from 65;
- gender: long hair on most women and few men, beards on many adult men, lipstick, eyeliner,
  bows on girls, thicker brows and squarer jaws on men;
- race: skin tone (and hair and eye colour).

Pose, background, clothing, glasses, lighting and noise vary at random so the task is not
trivial. Numbers learnt on this set say nothing about real faces.

Image ``i`` and its labels come from ``np.random.default_rng([seed, i])`` alone, so they do not
depend on how many images are generated.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from utkface.data.labels import RACES

Color = tuple[int, int, int]

AGES = np.arange(1, 101)
RACE_SHARES = (0.45, 0.20, 0.15, 0.15, 0.05)  # White, Black, Asian, Indian, Others
JPEG_QUALITY = 90
_CANVAS = 280  # faces are drawn larger than the output so rotated crops have no empty corners
_EPOCH = datetime(2017, 1, 9)  # UTKFace's timestamps fall in early 2017

_SKIN: dict[int, Color] = {
    0: (236, 200, 178),
    1: (112, 72, 52),
    2: (232, 196, 158),
    3: (176, 124, 92),
    4: (204, 158, 122),
}
_HAIR_BASES: tuple[Color, ...] = ((28, 22, 20), (70, 45, 28), (120, 80, 45), (196, 160, 96))
_GREY: Color = (222, 222, 218)


@cache
def _age_shares() -> np.ndarray:
    """P(age) for ages 1..100 shaped like UTKFace's: many toddlers and young adults, few old."""
    ages = AGES.astype(float)
    toddlers = np.interp(ages, [1, 3, 4], [0.5, 0.2, 0.0])
    children = ((ages >= 4) & (ages <= 17)).astype(float)
    young = np.exp(-0.5 * ((ages - 27.0) / 6.5) ** 2)
    adults = (ages >= 18) * np.exp(-0.5 * ((ages - 45.0) / 18.0) ** 2)
    elderly = (ages >= 60) * np.exp(-(ages - 60.0) / 12.0)
    parts = (toddlers, children, young, adults, elderly)
    weights = (0.10, 0.09, 0.40, 0.33, 0.08)
    shares = sum(w * p / p.sum() for w, p in zip(weights, parts, strict=True))
    return shares / shares.sum()


def sample_labels(rng: np.random.Generator, n: int) -> list[tuple[int, int, int]]:
    """`n` (age, gender, race) triples with UTKFace-like proportions."""
    ages = rng.choice(AGES, size=n, p=_age_shares())
    genders = rng.integers(0, 2, size=n)
    races = rng.choice(len(RACES), size=n, p=RACE_SHARES)
    return [(int(a), int(g), int(r)) for a, g, r in zip(ages, genders, races, strict=True)]


def _unit(x: float) -> float:
    """`x` clamped to [0, 1]."""
    return min(1.0, max(0.0, x))


def _color(values: Iterable[float]) -> Color:
    red, green, blue = (round(min(255.0, max(0.0, float(v)))) for v in values)
    return red, green, blue


def _mix(a: Color, b: Color, t: float) -> Color:
    """Linear blend from colour `a` (t=0) to `b` (t=1)."""
    return _color(x + (y - x) * t for x, y in zip(a, b, strict=True))


def _jitter(color: Color, rng: np.random.Generator, spread: float) -> Color:
    """`color` a little lighter or darker, with a slight random tint."""
    return _color(np.asarray(color) * (1 + rng.uniform(-spread, spread)) + rng.normal(0, 4, 3))


def _random_color(rng: np.random.Generator) -> Color:
    return _color(rng.integers(20, 236, size=3))


def _hair_color(age: int, race: int, rng: np.random.Generator) -> Color:
    """Dark for most, lighter for some White people and toddlers, greying from about 42."""
    weights = (0.3, 0.35, 0.2, 0.15) if race == 0 else (0.8, 0.2, 0.0, 0.0)
    base = _HAIR_BASES[rng.choice(len(_HAIR_BASES), p=weights)]
    if age < 6:
        base = _mix(base, (150, 110, 70), 0.3)
    grey = _unit((age - 42 + rng.normal(0, 4)) / 33)
    return _mix(_jitter(base, rng, 0.1), _GREY, grey)


@dataclass(frozen=True)
class _Face:
    """How one face is drawn: age factors, colours, traits and geometry in canvas pixels."""

    age: int
    female: bool
    race: int
    growth: float  # 0 at birth .. 1 from 18: head proportions, eye size
    mature: float  # 0 at 18 .. 1 at 70: fuller face, thinner lips, heavier lids, folds
    lines: float  # 0 until 32 .. 1 at 77: wrinkles
    skin: Color
    shade: Color  # outlines, nose
    crease: Color  # wrinkles, deeper with age
    hair: Color
    long_hair: bool
    bald: bool
    recede: float  # 0 .. 1: how far the hairline has moved back
    squareness: float
    width: float
    height: float
    cx: float = _CANVAS / 2
    cy: float = _CANVAS / 2 + 4

    @property
    def top(self) -> float:
        return self.cy - self.height / 2

    @property
    def bottom(self) -> float:
        return self.cy + self.height / 2

    @property
    def adult_male(self) -> bool:
        return not self.female and self.age >= 16

    @property
    def eye_y(self) -> float:
        """Eyes sit mid-head on a child and higher on an adult, whose lower face is longer."""
        return self.top + self.height * (0.56 - 0.13 * self.growth)

    @property
    def eye_r(self) -> float:
        return 10.5 - 4.5 * self.growth

    @property
    def ear_y(self) -> float:
        return self.cy - self.height * 0.05

    @property
    def nose(self) -> tuple[float, float]:
        """Top and tip of the nose."""
        return self.eye_y + 6, self.eye_y + 14 + 16 * self.growth

    @property
    def mouth(self) -> tuple[float, float]:
        """Height and half-width of the mouth."""
        return self.nose[1] + 8 + 8 * self.growth, 12 + 10 * self.growth


def _face(age: int, gender: int, race: int, rng: np.random.Generator) -> _Face:
    """The traits of one face: set by its labels, varied by chance."""
    growth = min(1.0, (age - 1) / 17) ** 0.8
    mature = _unit((age - 18) / 52)
    lines = _unit((age - 32) / 45)
    skin = _jitter(_SKIN[race], rng, 0.08)
    male = gender == 0 and age >= 16
    width = rng.normal(92, 4) + 6 * mature
    return _Face(
        age=age,
        female=bool(gender),
        race=race,
        growth=growth,
        mature=mature,
        lines=lines,
        skin=skin,
        shade=_mix(skin, (40, 20, 15), 0.4),
        crease=_mix(skin, (40, 20, 15), 0.25 + 0.45 * lines),
        hair=_hair_color(age, race, rng),
        long_hair=age >= 4 and rng.random() < (0.85 if gender else 0.1),
        bald=male and rng.random() < min(0.8, _unit((age - 30) / 45)),
        recede=0.0 if gender else _unit((age - 25) / 50) * rng.uniform(0, 1),
        squareness=2.0 + (rng.uniform(0.6, 1.4) if male else rng.uniform(0, 0.3)) * growth,
        width=width,
        height=width * (1.0 + 0.34 * growth + rng.normal(0, 0.025)) + 6 * lines,
    )


def _head_outline(face: _Face) -> list[tuple[float, float]]:
    """Head polygon: an oval crown on a jaw that is rounder (2) or squarer (> 2)."""
    t = np.linspace(0, 2 * np.pi, 56, endpoint=False)
    cos, sin = np.cos(t), np.sin(t)
    power = np.where(sin > 0, 2.0 / face.squareness, 1.0)  # sin > 0: the jaw (y grows down)
    x = face.cx + face.width / 2 * np.sign(cos) * np.abs(cos) ** power
    y = face.cy + face.height / 2 * np.sign(sin) * np.abs(sin) ** power
    return list(zip(x.tolist(), y.tolist(), strict=True))


def _draw_body(draw: ImageDraw.ImageDraw, face: _Face, rng: np.random.Generator) -> None:
    """Clothes, neck and the hair behind the head."""
    cx, bottom, half_neck = face.cx, face.bottom, 22 - 4 * face.growth + 3 * face.mature
    draw.ellipse((cx - 95, bottom + 10, cx + 95, bottom + 140), fill=_random_color(rng))
    draw.rectangle((cx - half_neck, bottom - 20, cx + half_neck, bottom + 30), fill=face.shade)
    draw.rectangle((cx - half_neck + 2, bottom - 20, cx + half_neck - 2, bottom + 26), face.skin)
    volume = rng.uniform(6, 14)
    if face.long_hair:
        side = face.width / 2 + volume + rng.uniform(-2, 6)
        length = bottom + rng.uniform(5, 60)
        box = (cx - side, face.cy - face.height * 0.25, cx + side, length)
        draw.rounded_rectangle(box, 16, face.hair)
    if not face.bald and face.age >= 3:
        box = (
            cx - face.width / 2 - volume,
            face.top - volume,
            cx + face.width / 2 + volume,
            face.cy + 10,
        )
        draw.ellipse(box, face.hair)


def _draw_head(draw: ImageDraw.ImageDraw, face: _Face, rng: np.random.Generator) -> None:
    """Ears, the face itself and hair on the crown: a fringe, a receding line or, if bald, sides."""
    cx, top, width, ear_y = face.cx, face.top, face.width, face.ear_y
    for side in (-1, 1):
        ex = cx + side * width / 2
        if face.bald:
            draw.ellipse((ex - 10, ear_y - 36, ex + 10, ear_y + 4), fill=face.hair)
        draw.ellipse((ex - 9, ear_y - 14, ex + 9, ear_y + 14), fill=face.skin, outline=face.shade)
    draw.polygon(_head_outline(face), fill=face.skin)
    if face.age < 2:  # a baby's wisp
        draw.chord((cx - width * 0.3, top - 3, cx + width * 0.3, top + 20), 180, 360, face.hair)
    elif not face.bald:
        line = top + face.height * (0.14 + 0.12 * face.recede) + rng.uniform(-3, 5)
        box = (cx - width / 2 - 2, top - 6, cx + width / 2 + 2, 2 * line - top + 6)
        draw.chord(box, 180, 360, face.hair)
    if face.age >= 65:  # age spots
        for _ in range(int(rng.integers(2, 3 + (face.age - 60) // 6))):
            x = cx + rng.uniform(-0.35, 0.35) * width
            y = face.cy + rng.uniform(-0.35, 0.1) * face.height
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=_mix(face.skin, (90, 60, 40), 0.5))


def _draw_eyes(draw: ImageDraw.ImageDraw, face: _Face, rng: np.random.Generator) -> None:
    """Eyes (big on children, hooded with age), eyeliner, brows (thick on men)."""
    eye_y, radius = face.eye_y, face.eye_r + rng.normal(0, 0.4)
    opening = radius * (1 - 0.3 * face.mature)
    blue = face.race == 0 and rng.random() < 0.4
    iris = _jitter((70, 110, 140) if blue else (60, 40, 25), rng, 0.1)
    brow = _mix(face.hair, (30, 25, 20), 0.3)
    for side in (-1, 1):
        ex = face.cx + side * face.width * 0.21
        draw.ellipse(
            (ex - radius * 1.3, eye_y - opening, ex + radius * 1.3, eye_y + opening), (245,) * 3
        )
        iris_r = min(radius * 0.7, opening)
        draw.ellipse((ex - iris_r, eye_y - iris_r, ex + iris_r, eye_y + iris_r), iris)
        draw.ellipse((ex - 2.5, eye_y - 2.5, ex + 2.5, eye_y + 2.5), fill=(10, 10, 10))
        if face.female and face.age >= 14:
            box = (ex - radius * 1.4, eye_y - opening * 1.1, ex + radius * 1.4, eye_y + opening)
            draw.arc(box, 200, 340, (15, 10, 10), 4)
        brow_y = eye_y - radius - 8 + 3 * face.mature
        slope = -3 + 4 * face.lines
        draw.line(
            (ex - side * 12, brow_y, ex + side * 14, brow_y + slope),
            brow,
            6 if face.adult_male else 3,
        )


def _draw_wrinkles(draw: ImageDraw.ImageDraw, face: _Face) -> None:
    """Folds from about 23, then forehead lines, crow's feet and eye bags from about 35."""
    cx, eye_y, radius, lines = face.cx, face.eye_y, face.eye_r, face.lines
    nose_tip = face.nose[1]
    mouth_y, mouth_w = face.mouth
    if face.mature > 0.1:
        fold = _mix(face.skin, face.crease, face.mature)
        for side in (-1, 1):
            x0 = cx + side * 12
            end = (x0 + side * (mouth_w - 4), mouth_y + 6)
            draw.line((x0, nose_tip - 4, *end), fold, 1 + round(2 * face.mature))
    for k in range(round(5 * lines)):
        y = eye_y - radius - 20 - 7 * k
        draw.arc(
            (cx - face.width * 0.32, y, cx + face.width * 0.32, y + 14), 200, 340, face.crease, 3
        )
    for side in (-1, 1):
        ex = cx + side * face.width * 0.21
        for k in range(round(4 * lines)):
            ox = ex + side * (radius * 1.3 + 4)
            draw.line((ox, eye_y - 5 + 5 * k, ox + side * 9, eye_y - 8 + 7 * k), face.crease, 2)
        if lines > 0.3:
            box = (ex - radius * 1.3, eye_y, ex + radius * 1.3, eye_y + radius * 2 + 4)
            draw.arc(box, 20, 160, face.crease, 2)


def _draw_mouth(draw: ImageDraw.ImageDraw, face: _Face, rng: np.random.Generator) -> None:
    """Nose, beard or moustache (many adult men), lips (thinner with age, often red on women)."""
    cx, (nose_y, nose_tip), (mouth_y, mouth_w) = face.cx, face.nose, face.mouth
    draw.line((cx, nose_y, cx - 4, nose_tip), face.shade, 2)
    draw.arc((cx - 9, nose_tip - 6, cx + 9, nose_tip + 4), 20, 160, face.shade, 2)
    if face.adult_male and rng.random() < min(0.6, (face.age - 15) / 10):
        beard = _mix(face.skin, face.hair, rng.uniform(0.45, 1.0))
        if rng.random() < 0.6:
            box = (cx - face.width / 2, mouth_y - 40, cx + face.width / 2, face.bottom + 6)
            draw.chord(box, 0, 180, beard)
        draw.rounded_rectangle(
            (cx - mouth_w - 6, mouth_y - 12, cx + mouth_w + 6, mouth_y - 3), 4, beard
        )
    if face.female and face.age >= 14 and rng.random() < 0.8:
        lips = _jitter((190, 30, 50), rng, 0.15)
    else:
        lips = _mix(face.skin, (150, 60, 60), 0.45 - 0.25 * face.mature)
    fullness = 1 - 0.5 * face.mature
    draw.chord((cx - mouth_w, mouth_y - 5, cx + mouth_w, mouth_y + 9 * fullness), 0, 180, lips)
    draw.chord((cx - mouth_w, mouth_y - 6 * fullness, cx + mouth_w, mouth_y + 2), 180, 360, lips)
    draw.line((cx - mouth_w, mouth_y, cx + mouth_w, mouth_y), _mix(lips, (0, 0, 0), 0.5), 1)


def _draw_extras(draw: ImageDraw.ImageDraw, face: _Face, rng: np.random.Generator) -> None:
    """Glasses (a distractor, commoner with age), earrings on some women, bows on many girls."""
    cx, eye_y, eye_dx = face.cx, face.eye_y, face.width * 0.21
    if face.age >= 8 and rng.random() < 0.05 + 0.3 * face.lines:
        frame = _random_color(rng)
        for side in (-1, 1):
            ex = cx + side * eye_dx
            draw.ellipse((ex - 17, eye_y - 13, ex + 17, eye_y + 13), outline=frame, width=3)
        draw.line((cx - eye_dx + 17, eye_y, cx + eye_dx - 17, eye_y), frame, 3)
    if face.female and face.age >= 10 and rng.random() < 0.3:
        for side in (-1, 1):
            ex = cx + side * face.width / 2
            draw.ellipse((ex - 4, face.ear_y + 12, ex + 4, face.ear_y + 20), fill=(230, 200, 60))
    if face.female and face.age < 14 and rng.random() < 0.6:
        x, y, color = cx + rng.choice((-1, 1)) * face.width * 0.3, face.top + 6, _random_color(rng)
        draw.polygon([(x, y), (x - 14, y - 9), (x - 14, y + 9)], fill=color)
        draw.polygon([(x, y), (x + 14, y - 9), (x + 14, y + 9)], fill=color)
        draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=_mix(color, (0, 0, 0), 0.3))


def _draw_portrait(draw: ImageDraw.ImageDraw, face: _Face, rng: np.random.Generator) -> None:
    """Head and shoulders centred on the canvas, back to front."""
    _draw_body(draw, face, rng)
    _draw_head(draw, face, rng)
    _draw_eyes(draw, face, rng)
    _draw_wrinkles(draw, face)
    _draw_mouth(draw, face, rng)
    _draw_extras(draw, face, rng)


@cache
def _ramp(size: int) -> np.ndarray:
    """0..1 in `size` steps, for gradients."""
    return np.linspace(0.0, 1.0, size, dtype=np.float32)


def _background(rng: np.random.Generator) -> Image.Image:
    """A gradient between two random colours, left to right or top to bottom."""
    start = np.array(_random_color(rng), np.float32)
    end = np.array(_random_color(rng), np.float32)
    row = (start + (end - start) * _ramp(_CANVAS)[:, None]).astype(np.uint8).reshape(1, -1)
    image = Image.fromarray(np.tile(row, (_CANVAS, 1)).reshape(_CANVAS, _CANVAS, 3))
    return image.transpose(Image.Transpose.TRANSPOSE) if rng.random() < 0.5 else image


def _pose(image: Image.Image, rng: np.random.Generator, size: int) -> Image.Image:
    """Crop `size` x `size` from the canvas centre, randomly rotated, scaled and shifted."""
    angle = np.deg2rad(rng.uniform(-12, 12))
    scale = rng.uniform(0.9, 1.1) * size / 200  # output pixels per canvas pixel
    shift_x, shift_y = rng.uniform(-8, 8, size=2)
    cos, sin, half = np.cos(angle) / scale, np.sin(angle) / scale, size / 2
    x0 = _CANVAS / 2 + shift_x - (cos + sin) * half
    y0 = _CANVAS / 2 + shift_y + (sin - cos) * half
    matrix = (cos, sin, x0, -sin, cos, y0)  # output pixel -> canvas pixel
    return image.transform((size, size), Image.Transform.AFFINE, matrix, Image.Resampling.BILINEAR)


def _photograph(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Contrast, uneven coloured lighting and sensor noise.

    Works on rows of ``size * 3`` values: numpy is slow to broadcast over a last axis of 3.
    """
    size = image.height
    contrast = rng.uniform(0.75, 1.15)
    light = 1.0 + rng.uniform(-0.25, 0.25) * (_ramp(size) - 0.5)
    tint = rng.uniform(0.9, 1.1, size=3) * rng.uniform(0.75, 1.2)
    color = np.tile(tint, size).astype(np.float32)
    top_down = rng.random() < 0.5
    gain = light[:, None] * color if top_down else (np.repeat(light, 3) * color)[None, :]
    pixels = np.asarray(image, dtype=np.float32).reshape(size, size * 3)
    pixels *= contrast
    pixels += 128 * (1 - contrast)
    pixels *= gain
    noise = np.frombuffer(rng.bytes(pixels.size), np.uint8).reshape(pixels.shape)
    pixels += (noise - np.float32(127.5)) * np.float32(rng.uniform(0.03, 0.12))
    np.clip(pixels, 0, 255, out=pixels)
    return Image.fromarray(pixels.astype(np.uint8).reshape(size, size, 3))


def draw_face(
    age: int, gender: int, race: int, rng: np.random.Generator, size: int = 200
) -> Image.Image:
    """A `size` x `size` RGB face showing the given labels, varied at random by `rng`."""
    canvas = _background(rng)
    _draw_portrait(ImageDraw.Draw(canvas), _face(age, gender, race, rng), rng)
    return _photograph(_pose(canvas, rng, size), rng)


def _timestamp(index: int, rng: np.random.Generator) -> str:
    """17-digit UTKFace-style timestamp (yyyymmddHHMMSSfff), increasing with `index`."""
    moment = _EPOCH + timedelta(milliseconds=index * 1500 + int(rng.integers(0, 1000)))
    return moment.strftime("%Y%m%d%H%M%S") + f"{moment.microsecond // 1000:03d}"


def synthetic_files(count: int, seed: int) -> Iterator[tuple[str, bytes]]:
    """`count` (UTKFace file name, JPEG bytes) pairs; image i depends only on (seed, i)."""
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        ((age, gender, race),) = sample_labels(rng, 1)
        stamp = _timestamp(index, rng)
        buffer = io.BytesIO()
        draw_face(age, gender, race, rng).save(buffer, "JPEG", quality=JPEG_QUALITY)
        yield f"{age}_{gender}_{race}_{stamp}.jpg.chip.jpg", buffer.getvalue()


def write_synthetic(out_dir: Path, count: int, seed: int) -> list[Path]:
    """Write the synthetic set into `out_dir` (created if missing); returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in synthetic_files(count, seed):
        path = out_dir / name
        path.write_bytes(data)
        written.append(path)
    return written
