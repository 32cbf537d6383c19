"""The age network written back into its ONNX graph (`utkface.model.age_network_export`): the
unchanged port gives back the wheel's constants; with its last stage perturbed, the exported
graph, run as the served model runs it, computes what Keras computes, and its prefix still
computes what the wheel's does; a model and a graph that do not match are refused. An ensemble
of such networks is one graph that runs the prefix once and gives each member's features."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from tiny import MAX_PIXELS

from utkface.data.imaging import load_image
from utkface.data.synthetic import synthetic_files
from utkface.model import face_backbone
from utkface.model.age_network import LAST_STAGE, ChannelAffine, age_network, split, submodel
from utkface.model.age_network_export import (
    age_ensemble_to_onnx,
    age_network_to_onnx,
    export_age_ensemble,
)
from utkface.model.face_backbone import (
    ENSEMBLE_OUTPUT,
    EXPOSED,
    FaceBackbone,
    expose_outputs,
    package_files,
)

SIZE = 200  # features.image_size
FACES = 8
NOISE = 0.1  # of each weight's mean magnitude
ATOL = 1e-4


@pytest.fixture(scope="module")
def original() -> onnx.ModelProto:
    return onnx.load(str(package_files().network("age")))


def perturbed_network(seed: int) -> keras.Model:
    """The port with every trainable weight after `LAST_STAGE` moved by seeded noise."""
    network = age_network()
    rng = np.random.default_rng(seed)
    for weight in split(network)[1].trainable_weights:
        value = weight.numpy()
        noise = rng.normal(0, NOISE * np.abs(value).mean(), value.shape)
        weight.assign((value + noise).astype(np.float32))
    return network


@pytest.fixture(scope="module")
def perturbed() -> keras.Model:
    return perturbed_network(26)


@pytest.fixture(scope="module")
def exported(
    perturbed: keras.Model, original: onnx.ModelProto, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    path = tmp_path_factory.mktemp("exported") / "age.onnx"
    onnx.save_model(age_network_to_onnx(perturbed, original), str(path))
    return path


@pytest.fixture(scope="module")
def backbone() -> FaceBackbone:
    return FaceBackbone(package_files())


@pytest.fixture(scope="module")
def chips(backbone: FaceBackbone) -> np.ndarray:
    """Aligned uint8 (n, 64, 64, 3) age chips of synthetic faces, decoded as features does."""
    faces = [load_image(data, SIZE, MAX_PIXELS) for _, data in synthetic_files(FACES, seed=5)]
    return np.stack([backbone.align(face)[0]["age"] for face in faces])


def test_the_unchanged_port_gives_back_the_wheels_graph(original: onnx.ModelProto) -> None:
    model = age_network_to_onnx(age_network(), original)
    assert [init.name for init in model.graph.initializer] == [
        init.name for init in original.graph.initializer
    ]
    for got, want in zip(model.graph.initializer, original.graph.initializer, strict=True):
        np.testing.assert_array_equal(
            numpy_helper.to_array(got), numpy_helper.to_array(want), err_msg=want.name
        )
    assert model.graph.node == original.graph.node
    assert (model.ir_version, model.opset_import) == (original.ir_version, original.opset_import)


def test_perturbed_last_stage_served_matches_keras(
    perturbed: keras.Model,
    exported: Path,
    backbone: FaceBackbone,
    chips: np.ndarray,
    tmp_path: Path,
) -> None:
    perturbed_layers = {type(layer) for layer in split(perturbed)[1].layers if layer.weights}
    assert perturbed_layers == {keras.layers.Conv2D, ChannelAffine, keras.layers.Dense}
    files = face_backbone.export(package_files(), tmp_path, replaced={"age": exported})
    served = FaceBackbone(files).run("age", chips)  # flattened per chip, NCHW order
    names = [*EXPOSED["age"], "probabilities"]
    inputs = backbone.inputs("age", chips).transpose(0, 2, 3, 1)
    expected = submodel(perturbed, names).predict_on_batch(inputs)
    for name, want, got in zip(names, expected, served, strict=True):
        want = want.transpose(0, 3, 1, 2) if want.ndim == 4 else want
        np.testing.assert_allclose(got, want.reshape(len(chips), -1), 0, ATOL, err_msg=name)
    wheel = backbone.run("age", chips)[-1]
    assert np.abs(served[-1] - wheel).max() > 0.01  # the perturbation shows in the answer


def test_prefix_computes_what_the_wheels_does(
    original: onnx.ModelProto, exported: Path, backbone: FaceBackbone, chips: np.ndarray
) -> None:
    inputs = {"images": backbone.inputs("age", chips)}
    prefixes = [
        ort.InferenceSession(
            expose_outputs(data, [LAST_STAGE]), providers=["CPUExecutionProvider"]
        ).run([LAST_STAGE], inputs)[0]
        for data in (original.SerializeToString(), exported.read_bytes())
    ]
    np.testing.assert_array_equal(*prefixes)


def test_a_model_and_a_graph_that_do_not_match_are_refused(
    perturbed: keras.Model, original: onnx.ModelProto
) -> None:
    with pytest.raises(ValueError, match=r"no layer of .* holds the graph's constants"):
        age_network_to_onnx(split(perturbed)[0], original)  # the suffix's constants unwritten
    renamed = onnx.ModelProto()
    renamed.CopyFrom(original)
    for node in renamed.graph.node:
        node.output[:] = ["scores" if name == "logits" else name for name in node.output]
    with pytest.raises(ValueError, match=r"layer 'logits' .* matches no node"):
        age_network_to_onnx(perturbed, renamed)


def test_an_ensemble_runs_the_prefix_once_and_gives_each_members_features_of_the_chip(
    perturbed: keras.Model,
    exported: Path,
    original: onnx.ModelProto,
    backbone: FaceBackbone,
    chips: np.ndarray,
    tmp_path: Path,
) -> None:
    members = [perturbed, perturbed_network(27)]
    export_age_ensemble(members, tmp_path / "ensemble.onnx")
    files = face_backbone.export(
        package_files(), tmp_path / "served", replaced={"age": tmp_path / "ensemble.onnx"}
    )
    served = FaceBackbone(files)
    features = served.network_features("age", chips)
    alone = FaceBackbone(face_backbone.export(package_files(), tmp_path / "one", replaced={
        "age": exported})).run("age", chips)  # fmt: skip
    size = sum(part.shape[1] for part in alone)
    assert features.shape == (FACES, 2 * size) and served.network_size("age") == 2 * size
    np.testing.assert_allclose(features[:, :size], np.concatenate(alone, axis=1), 0, ATOL)
    inputs = backbone.inputs("age", chips).transpose(0, 2, 3, 1)
    names = [*EXPOSED["age"], "probabilities"]
    second = submodel(members[1], names).predict_on_batch(inputs)
    second = [(x.transpose(0, 3, 1, 2) if x.ndim == 4 else x).reshape(FACES, -1) for x in second]
    np.testing.assert_allclose(features[:, size:], np.concatenate(second, axis=1), 0, ATOL)
    assert np.abs(features[:, :size] - features[:, size:]).max() > 0.01  # two members
    convs = [
        n for n in onnx.load(str(tmp_path / "ensemble.onnx")).graph.node if n.op_type == "Conv"
    ]
    wheel = [n for n in original.graph.node if n.op_type == "Conv"]
    last = [n for n in convs if n.name.startswith("member1/")]
    assert len(convs) == len(wheel) + len(last) and 0 < len(last) < len(wheel) / 2
    assert served.sessions["age"].get_outputs()[0].name == ENSEMBLE_OUTPUT


def test_members_that_differ_before_the_last_stage_are_refused(
    perturbed: keras.Model, original: onnx.ModelProto
) -> None:
    other = age_network()
    layer = split(other)[0].layers[2]  # an affine layer of the prefix
    layer.set_weights([w * 1.01 for w in layer.get_weights()])
    with pytest.raises(ValueError, match=f"member 1 differs from member 0 before {LAST_STAGE}"):
        age_ensemble_to_onnx([perturbed, other], original)
