"""The age network ported to Keras (`utkface.model.age_network`): the same probabilities and
feature layers as ONNX Runtime on chips aligned by the backbone, from generated faces and
(when present) real UTKFace faces; the prefix/suffix split; the padding rules on a tiny graph."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from tiny import MAX_PIXELS

from utkface.data.imaging import load_image
from utkface.data.synthetic import synthetic_files
from utkface.model.age_network import LAST_STAGE, age_network, from_onnx, split, submodel
from utkface.model.face_backbone import EXPOSED, FaceBackbone, expose_outputs, package_files

REAL = Path(__file__).resolve().parents[3] / "shared" / "utkface" / "crop_part1_dev"
SIZE = 200  # features.image_size
FACES = 8
COMPARED = (*EXPOSED["age"], LAST_STAGE, "logits", "probabilities")
ATOL = 1e-4


@pytest.fixture(scope="module")
def network() -> keras.Model:
    return age_network()


@pytest.fixture(scope="module")
def backbone() -> FaceBackbone:
    return FaceBackbone(package_files())


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    """The wheel's age network with the compared inner tensors exposed."""
    data = package_files().network("age").read_bytes()
    return ort.InferenceSession(expose_outputs(data, COMPARED), providers=["CPUExecutionProvider"])


def _faces(source: str) -> list[np.ndarray]:
    """Face crops decoded as the features stage decodes them."""
    if source == "synthetic":
        return [load_image(data, SIZE, MAX_PIXELS) for _, data in synthetic_files(FACES, seed=5)]
    if not REAL.is_dir():
        pytest.skip(f"no real faces at {REAL}")
    files = sorted(REAL.glob("*.jpg"))[:: max(1, 6883 // FACES)][:FACES]
    return [load_image(path.read_bytes(), SIZE, MAX_PIXELS) for path in files]


@pytest.mark.parametrize("source", ["synthetic", "real"])
def test_probabilities_and_feature_layers_match_onnx_runtime(
    source: str, network: keras.Model, backbone: FaceBackbone, session: ort.InferenceSession
) -> None:
    chips = np.stack([backbone.align(face)[0]["age"] for face in _faces(source)])
    inputs = backbone.inputs("age", chips)  # the normalisation the features use, NCHW
    expected = session.run(list(COMPARED), {"images": inputs})
    actual = submodel(network, COMPARED).predict_on_batch(inputs.transpose(0, 2, 3, 1))
    for name, want, got in zip(COMPARED, expected, actual, strict=True):
        got = got.transpose(0, 3, 1, 2) if got.ndim == 4 else got
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL, err_msg=name)
    assert (expected[-1].argmax(axis=1) == actual[-1].argmax(axis=1)).all()


def test_prefix_then_suffix_is_the_whole_network_sharing_its_layers(network: keras.Model) -> None:
    prefix, suffix = split(network)
    inputs = np.random.default_rng(0).normal(0, 0.3, (4, 64, 64, 3)).astype(np.float32)
    np.testing.assert_array_equal(
        suffix.predict_on_batch(prefix.predict_on_batch(inputs)),
        network.predict_on_batch(inputs),
    )
    assert prefix.output_shape == (None, 7, 7, 128)
    assert prefix.count_params() + suffix.count_params() == network.count_params()
    convs = [layer.name for layer in suffix.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs == ["layer_20_conv", "layer_17_conv", "layer_9_conv", "layer_6_conv"]
    assert suffix.get_layer("layer_6_conv") is network.get_layer("layer_6_conv")
    with pytest.raises(ValueError, match="shortcut crosses"):
        split(network, "layer_19_affine")  # inside the last stage's first block


def _tiny_graph(rng: np.random.Generator) -> onnx.ModelProto:
    """Every padding rule the port has: asymmetric Conv pads (stride 2 and 1), AveragePool
    with and without count_include_pad, MaxPool over negative values, a Pad of channels, a
    Flatten of a map larger than 1x1, a transposed Gemm."""

    def const(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.normal(0, 0.5, shape).astype(np.float32), name)

    def pool(op: str, source: str, target: str, **extra: int) -> onnx.NodeProto:
        return helper.make_node(
            op, [source], [target], kernel_shape=[3, 3], pads=[1, 1, 1, 1], **extra
        )

    nodes = [
        helper.make_node(
            "Conv",
            ["x", "w1", "b1"],
            ["c1"],
            kernel_shape=[3, 3],
            strides=[2, 2],
            pads=[0, 0, 1, 1],
        ),
        helper.make_node("Mul", ["c1", "scale"], ["c1_scale"]),
        helper.make_node("Add", ["c1_scale", "offset"], ["affine"]),
        helper.make_node("Relu", ["affine"], ["relu"]),
        pool("AveragePool", "relu", "avg_with_pads", count_include_pad=1),
        pool("AveragePool", "relu", "avg_without_pads", count_include_pad=0),
        pool("MaxPool", "affine", "max"),
        helper.make_node("Add", ["avg_with_pads", "avg_without_pads"], ["avgs"]),
        helper.make_node("Add", ["avgs", "max"], ["pools"]),
        helper.make_node(
            "Conv", ["pools", "w2", "b2"], ["c2"], kernel_shape=[2, 2], pads=[1, 0, 0, 1]
        ),
        helper.make_node("Pad", ["relu", "pads"], ["padded"], mode="constant"),
        helper.make_node("Add", ["c2", "padded"], ["sum"]),
        helper.make_node("GlobalAveragePool", ["sum"], ["pooled"]),
        helper.make_node("Flatten", ["sum"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "w3", "b3"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    constants = [
        const("w1", 4, 3, 3, 3),
        const("b1", 4),
        const("scale", 1, 4, 1, 1),
        const("offset", 1, 4, 1, 1),
        const("w2", 6, 4, 2, 2),
        const("b2", 6),
        numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 2, 0, 0], np.int64), "pads"),
        const("w3", 5, 96),
        const("b3", 5),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 9, 9])],
        [
            helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["N", 6, 1, 1]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 5]),
        ],
        constants,
    )
    # The wheel's IR and opset: onnx writes an IR newer than onnxruntime reads.
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model, full_check=True)
    return model


def test_padding_rules_match_onnx_runtime_on_a_tiny_graph() -> None:
    rng = np.random.default_rng(1)
    model = _tiny_graph(rng)
    inputs = rng.normal(0, 1, (3, 3, 9, 9)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    pooled, probabilities = session.run(None, {"x": inputs})
    ported = from_onnx(model, name="tiny")
    explicit = {
        layer.name for layer in ported.layers if isinstance(layer, keras.layers.ZeroPadding2D)
    }
    assert explicit == {"c1_pads", "avg_with_pads_pads", "c2_pads"}
    got_pooled, got_probabilities = (np.asarray(o) for o in ported(inputs.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(got_pooled.transpose(0, 3, 1, 2), pooled, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got_probabilities, probabilities, rtol=0, atol=1e-5)
