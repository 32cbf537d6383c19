"""The finetuned family's frozen part: the CC0 age network up to `age_network.LAST_STAGE`, run
once on ONNX Runtime for every face and view, so that a training epoch runs only the last
stage and the head.

Augmentation has to happen before the prefix, on the aligned 64 px chip: each face gets view
0 (the chip itself) and `views` jittered copies (shifted, scaled, brightness and contrast
changed), each with its mirror image, as the served model pairs every chip with its mirror.
"""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import onnxruntime as ort
from onnx import utils as onnx_utils

from utkface.model.age_network import LAST_STAGE
from utkface.model.face_backbone import (
    FaceBackbone,
    flush_subnormals,
    package_files,
    session_options,
)
from utkface.params import FinetuneParams

BATCH = 256


def prefix_graph(network: onnx.ModelProto) -> onnx.ModelProto:
    """The age network cut at `LAST_STAGE`: its input in, that activation out."""
    extractor = onnx_utils.Extractor(network)
    return extractor.extract_model([network.graph.input[0].name], [LAST_STAGE])


def jittered(chip: np.ndarray, cfg: FinetuneParams, rng: np.random.Generator) -> np.ndarray:
    """One augmented copy of a uint8 (S, S, 3) chip: scaled about its centre and shifted
    (edges reflected), then brightness and contrast changed."""
    side = chip.shape[0]
    scale = rng.uniform(1 - cfg.scale, 1 + cfg.scale)
    shift = rng.uniform(-cfg.shift, cfg.shift, size=2) * side
    matrix = cv2.getRotationMatrix2D((side / 2, side / 2), 0.0, scale)
    matrix[:, 2] += shift
    moved = cv2.warpAffine(chip, matrix, (side, side), borderMode=cv2.BORDER_REFLECT_101)
    values = moved.astype(np.float32)
    contrast = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)
    brightness = rng.uniform(-cfg.brightness, cfg.brightness) * 255
    values = (values - values.mean()) * contrast + values.mean() + brightness
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def view_chips(chips: np.ndarray, cfg: FinetuneParams, rng: np.random.Generator) -> np.ndarray:
    """uint8 (n, views + 1, 2, S, S, 3): each chip's views (the chip first), each with its
    mirror."""
    views = [chips, *(np.stack([jittered(c, cfg, rng) for c in chips]) for _ in range(cfg.views))]
    stacked = np.stack(views, axis=1)
    return np.stack([stacked, stacked[:, :, :, ::-1]], axis=2)


class Prefix:
    """The frozen prefix on ONNX Runtime: uint8 age chips in, float16 NHWC activations out
    (the Keras port's layout)."""

    def __init__(self, backbone: FaceBackbone, threads: int = 0) -> None:
        self.backbone = backbone
        network = flush_subnormals(onnx.load(str(package_files().network("age"))))
        self.session = ort.InferenceSession(
            prefix_graph(network).SerializeToString(),
            sess_options=session_options(threads),
            providers=["CPUExecutionProvider"],
        )
        self.input = self.session.get_inputs()[0].name
        channels, height, width = self.session.get_outputs()[0].shape[1:]
        self.shape = (height, width, channels)  # of one activation, NHWC

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        (out,) = self.session.run([LAST_STAGE], {self.input: self.backbone.inputs("age", chips)})
        return out.transpose(0, 2, 3, 1).astype(np.float16)


def activations(chips: np.ndarray, cfg: FinetuneParams, seed: int, prefix: Prefix) -> np.ndarray:
    """float16 (n, views + 1, 2, H, W, C) prefix activations of every face's views and
    mirrors (`view_chips`), `BATCH` faces at a time; one seed draws every jitter."""
    rng = np.random.default_rng(seed)
    parts = []
    for start in range(0, len(chips), BATCH):
        views = view_chips(chips[start : start + BATCH], cfg, rng)
        flat = prefix(views.reshape(-1, *views.shape[3:]))
        parts.append(flat.reshape(*views.shape[:3], *flat.shape[1:]))
    if not parts:
        return np.zeros((0, cfg.views + 1, 2, *prefix.shape), np.float16)
    return np.concatenate(parts)
