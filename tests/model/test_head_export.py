"""A head as an ONNX graph (`utkface.model.head_export`): the same outputs as Keras, run on
ONNX Runtime as the served model runs it; an ensemble's heads in one graph, each reading its
member's features, averaged."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from utkface.inference.families import OnnxHead
from utkface.model.head import build_head
from utkface.model.head_export import head_to_onnx, heads_to_onnx, save_head_onnx, save_heads_onnx
from utkface.params import HeadParams

AGES = np.random.default_rng(1).integers(1, 90, 400).astype("float32")


def random_head(features: np.ndarray, seed: int) -> keras.Model:
    """A head with random weights (so every output depends on the input)."""
    rng = np.random.default_rng(seed)
    head = build_head(HeadParams(units=32, age_bins=8), features, AGES, seed=seed)
    for layer in head.layers:
        if isinstance(layer, keras.layers.Dense) and layer.name != "age":
            layer.set_weights(
                [rng.normal(0, 0.3, w.shape).astype("float32") for w in layer.get_weights()]
            )
    return head


@pytest.fixture(scope="module")
def head_and_features() -> tuple[keras.Model, np.ndarray]:
    """A random head on features far from standardised, as the backbone's are."""
    features = np.random.default_rng(0).normal(3.0, 5.0, (400, 50)).astype("float32")
    return random_head(features, 0), features


def test_the_onnx_head_equals_the_keras_head(
    head_and_features: tuple[keras.Model, np.ndarray], tmp_path: Path
) -> None:
    head, features = head_and_features
    onnx_head = OnnxHead(save_head_onnx(head, tmp_path / "head.onnx"))
    ours = onnx_head(features)
    keras_outputs = head.predict(features, verbose=0)
    np.testing.assert_allclose(ours.age, keras_outputs["age"].ravel(), atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(ours.p_female, keras_outputs["gender"].ravel(), atol=1e-4)
    np.testing.assert_allclose(ours.age_bins, keras_outputs["age_bins"], atol=1e-4)
    assert ours.age.std() > 1 and ours.p_female.std() > 0.01  # the inputs matter
    centres = head.get_layer("age").get_weights()[0][:, 0]
    np.testing.assert_allclose(ours.bin_centres, centres, rtol=1e-6)
    assert onnx_head(features[:0]).age.shape == (0,)


def test_the_graph_has_no_inputs_but_the_features(
    head_and_features: tuple[keras.Model, np.ndarray],
) -> None:
    graph = head_to_onnx(head_and_features[0]).graph
    assert [i.name for i in graph.input] == ["features"]  # mean and variance are constants
    assert [o.name for o in graph.output] == ["age", "gender", "age_bins"]
    assert not {n.op_type for n in graph.node} & {"Dropout", "RandomNormal"}


def test_an_ensembles_graph_averages_each_heads_answer_on_its_members_features(
    tmp_path: Path,
) -> None:
    # 3 members, each with 20 age features of its own, then 30 gender features they share
    rng = np.random.default_rng(2)
    ages, gender = rng.normal(3.0, 5.0, (400, 3, 20)), rng.normal(-2.0, 4.0, (400, 30))
    own = [np.concatenate([ages[:, m], gender], axis=1).astype("float32") for m in range(3)]
    heads = [random_head(features, seed) for seed, features in enumerate(own)]
    served = OnnxHead(save_heads_onnx(heads, 20, tmp_path / "heads.onnx"))(
        np.concatenate([ages.reshape(400, 60), gender], axis=1)
    )
    each = [head.predict(features, verbose=0) for head, features in zip(heads, own, strict=True)]
    for ours, name in ((served.age, "age"), (served.p_female, "gender")):
        want = np.mean([out[name].ravel() for out in each], axis=0)
        np.testing.assert_allclose(ours, want, atol=1e-4, rtol=1e-5)
        assert np.abs(ours - each[0][name].ravel()).max() > 0.01  # not one member's
    want = np.mean([out["age_bins"] for out in each], axis=0)
    np.testing.assert_allclose(served.age_bins, want, atol=1e-4)
    one = OnnxHead(save_heads_onnx(heads[:1], 20, tmp_path / "one.onnx"))(own[0])
    np.testing.assert_allclose(one.age, each[0]["age"].ravel(), atol=1e-4, rtol=1e-5)


def test_heads_with_different_age_bins_are_refused() -> None:
    features = np.random.default_rng(3).normal(0, 1, (400, 50)).astype("float32")
    other = build_head(HeadParams(units=32, age_bins=6), features, AGES, seed=0)
    with pytest.raises(ValueError, match="age bins differ"):
        heads_to_onnx([random_head(features, 0), other], 20)


def test_a_layer_without_a_mapping_is_refused() -> None:
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.LayerNormalization()(inputs))
    with pytest.raises(ValueError, match="no ONNX mapping for LayerNormalization"):
        head_to_onnx(model)
