"""Concrete image augmentations: drawn once by `balance`, applied when a split is loaded.

A spec is a handful of plan columns: `rotation_deg` (counter-clockwise), `shift_x` / `shift_y`
(fractions of the image width / height, positive moves the face right / down), `brightness`
(pixel multiplier), `shear_deg` (horizontal shear), `zoom` (magnification, > 1 enlarges the face)
and `flip` (mirror left-right). Rotation, shear, zoom and shift are one affine transform about the
image centre; the border it uncovers is filled by mirroring the image, not with a flat colour the
model could learn to recognise augmented copies by.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from utkface.params import AugmentParams

NEUTRAL_SPEC: dict[str, float | bool] = {
    "rotation_deg": 0.0,
    "shift_x": 0.0,
    "shift_y": 0.0,
    "brightness": 1.0,
    "shear_deg": 0.0,
    "zoom": 1.0,
    "flip": False,
}
SPEC_COLUMNS = tuple(NEUTRAL_SPEC)
_GEOMETRY = ("rotation_deg", "shift_x", "shift_y", "shear_deg", "zoom")


def draw_specs(n: int, cfg: AugmentParams, rng: np.random.Generator) -> pd.DataFrame:
    """`n` specs drawn uniformly within `balance.augment`'s ranges (rounded to stay readable)."""

    def around(centre: float, half_width: float) -> np.ndarray:
        return rng.uniform(centre - half_width, centre + half_width, n).round(4)

    return pd.DataFrame(
        {
            "rotation_deg": around(0.0, cfg.rotation_deg),
            "shift_x": around(0.0, cfg.shift),
            "shift_y": around(0.0, cfg.shift),
            "brightness": around(1.0, cfg.brightness),
            "shear_deg": around(0.0, cfg.shear_deg),
            "zoom": around(1.0, cfg.zoom),
            "flip": rng.random(n) < 0.5 if cfg.horizontal_flip else np.zeros(n, dtype=bool),
        }
    )


def _inverse_affine(
    spec: Mapping[str, Any], width: int, height: int, pad: int
) -> tuple[float, ...]:
    """Pillow AFFINE data: the (padded) input position each output pixel samples."""
    theta, shear = np.deg2rad(float(spec["rotation_deg"])), np.deg2rad(float(spec["shear_deg"]))
    rotate = np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]])
    forward = rotate @ np.array([[1.0, np.tan(shear)], [0.0, 1.0]]) * float(spec["zoom"])
    inverse = np.linalg.inv(forward)
    centre = np.array([width / 2, height / 2])
    shift = np.array([float(spec["shift_x"]) * width, float(spec["shift_y"]) * height])
    # output = centre + shift + forward @ (input - centre)  =>  input = inverse @ output + offset
    offset = centre + pad - inverse @ (centre + shift)
    return (*inverse[0], offset[0], *inverse[1], offset[1])


def apply_spec(image: np.ndarray, spec: Mapping[str, Any]) -> np.ndarray:
    """`image` (H, W, 3) uint8 augmented as `spec` says; a neutral spec returns it as it is."""
    out = image
    if any(spec[key] != NEUTRAL_SPEC[key] for key in _GEOMETRY):
        height, width = image.shape[:2]
        pad = max(height, width)
        padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="symmetric")
        # beyond the mirrored border (only for extreme ranges), fill with the mean colour
        fill = tuple(int(v) for v in image.reshape(-1, image.shape[-1]).mean(axis=0))
        transformed = Image.fromarray(padded).transform(
            (width, height),
            Image.Transform.AFFINE,
            _inverse_affine(spec, width, height, pad),
            resample=Image.Resampling.BILINEAR,
            fillcolor=fill,
        )
        out = np.asarray(transformed, dtype=np.uint8)
    if spec["brightness"] != NEUTRAL_SPEC["brightness"]:
        out = np.clip(np.rint(out * float(spec["brightness"])), 0, 255).astype(np.uint8)
    if spec["flip"]:
        out = np.ascontiguousarray(out[:, ::-1])
    return out
