"""The pretrained head as an ONNX graph (`utkface.model.head_export`): the same outputs as
Keras, run on ONNX Runtime as the served model runs it."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from utkface.inference.families import OnnxHead
from utkface.model.head import build_head
from utkface.model.head_export import head_to_onnx, save_head_onnx
from utkface.params import HeadParams


@pytest.fixture(scope="module")
def head_and_features() -> tuple[keras.Model, np.ndarray]:
    """A head with random weights (so every output depends on the input) on features far from
    standardised, as the backbone's are."""
    rng = np.random.default_rng(0)
    features = rng.normal(3.0, 5.0, (400, 50)).astype("float32")
    ages = rng.integers(1, 90, 400).astype("float32")
    head = build_head(HeadParams(units=32, age_bins=8), features, ages, seed=0)
    for layer in head.layers:
        if isinstance(layer, keras.layers.Dense) and layer.name != "age":
            layer.set_weights(
                [rng.normal(0, 0.3, w.shape).astype("float32") for w in layer.get_weights()]
            )
    return head, features


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


def test_a_layer_without_a_mapping_is_refused() -> None:
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.LayerNormalization()(inputs))
    with pytest.raises(ValueError, match="no ONNX mapping for LayerNormalization"):
        head_to_onnx(model)
