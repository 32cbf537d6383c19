"""The pretrained family's trained head as an ONNX graph, so a served model runs it on ONNX
Runtime without TensorFlow or Keras.

The graph is built from the trained weights with `onnx.helper` rather than through `tf2onnx`
(Keras' own `export(format="onnx")`): that route turned the `Normalization` layer's mean and
variance into graph inputs and brings a converter with its own pins on protobuf and NumPy. The
head is a handful of stock layers, each one or two ONNX operators (the standardisation computed
as Keras computes it), and dropout, inactive at inference, is left out. Outputs: `age` (the
bins' expectation, years), `gender` (probability of female) and `age_bins` (the bin
probabilities, for the age interval).
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from utkface.data.labels import AGE, AGE_BINS, BIN_CENTRES, GENDER

OPSET = 17
IR_VERSION = 8  # read by every onnxruntime this project allows (>= 1.23); onnx writes its newest
INPUT = "features"
OUTPUTS = (AGE, GENDER, AGE_BINS)
ACTIVATIONS = {"relu": "Relu", "sigmoid": "Sigmoid", "softmax": "Softmax"}


def _tensor_name(tensor: keras.KerasTensor) -> str:
    return tensor.name


def _dense(layer: keras.layers.Dense, source: str, target: str) -> tuple[list, list]:
    weights = layer.get_weights()
    kernel = weights[0].astype(np.float32)
    nodes, constants = [], [numpy_helper.from_array(kernel, f"{layer.name}/kernel")]
    activation = layer.get_config()["activation"]
    if activation not in ("linear", *ACTIVATIONS):
        raise ValueError(f"layer {layer.name}: no ONNX mapping for activation {activation!r}")
    product = target if len(weights) == 1 and activation == "linear" else f"{layer.name}/matmul"
    nodes.append(helper.make_node("MatMul", [source, f"{layer.name}/kernel"], [product]))
    if len(weights) == 2:
        constants.append(
            numpy_helper.from_array(weights[1].astype(np.float32), f"{layer.name}/bias")
        )
        biased = target if activation == "linear" else f"{layer.name}/biased"
        nodes.append(helper.make_node("Add", [product, f"{layer.name}/bias"], [biased]))
        product = biased
    if activation != "linear":
        attributes = {"axis": -1} if activation == "softmax" else {}
        nodes.append(helper.make_node(ACTIVATIONS[activation], [product], [target], **attributes))
    return nodes, constants


def _standardise(layer: keras.layers.Normalization, source: str, target: str) -> tuple[list, list]:
    """(x - mean) / max(sqrt(variance), epsilon), as Keras computes it: folding it into one
    scale and shift cancels large features against large means and loses float32 digits."""
    mean = np.asarray(layer.mean, dtype=np.float32).reshape(-1)
    variance = np.asarray(layer.variance, dtype=np.float32).reshape(-1)
    std = np.maximum(np.sqrt(variance), np.float32(keras.config.epsilon())).astype(np.float32)
    constants = [
        numpy_helper.from_array(mean, f"{layer.name}/mean"),
        numpy_helper.from_array(std, f"{layer.name}/std"),
    ]
    nodes = [
        helper.make_node("Sub", [source, f"{layer.name}/mean"], [f"{layer.name}/centred"]),
        helper.make_node("Div", [f"{layer.name}/centred", f"{layer.name}/std"], [target]),
    ]
    return nodes, constants


def head_to_onnx(model: keras.Model) -> onnx.ModelProto:
    """The ONNX graph of a trained head (`utkface.model.head.build_head`, with its `age_bins`
    output), float32 in and out, any batch size."""
    names = {_tensor_name(model.inputs[0]): INPUT}
    nodes, constants = [], []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        source = names[_tensor_name(layer.input)]
        target = layer.name if layer.name in OUTPUTS else f"{layer.name}/out"
        names[_tensor_name(layer.output)] = target
        if isinstance(layer, keras.layers.Dropout):
            names[_tensor_name(layer.output)] = source  # inactive at inference
            continue
        if isinstance(layer, keras.layers.Normalization):
            added = _standardise(layer, source, target)
        elif isinstance(layer, keras.layers.Dense):
            added = _dense(layer, source, target)
        else:
            raise ValueError(f"layer {layer.name}: no ONNX mapping for {type(layer).__name__}")
        nodes += added[0]
        constants += added[1]
    features = model.inputs[0].shape[-1]
    outputs = [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", size])
        for name, size in ((AGE, 1), (GENDER, 1), (AGE_BINS, model.get_layer(AGE_BINS).units))
    ]
    graph = helper.make_graph(
        nodes,
        "face_head",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", features])],
        outputs,
        initializer=constants,
    )
    onnx_model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="utkface-pipeline"
    )
    onnx_model.ir_version = IR_VERSION
    centres = model.get_layer(AGE).get_weights()[0][:, 0]
    helper.set_model_props(onnx_model, {BIN_CENTRES: json.dumps([float(c) for c in centres])})
    onnx.checker.check_model(onnx_model, full_check=True)
    return onnx_model


def save_head_onnx(model: keras.Model, path: Path) -> Path:
    """`head_to_onnx(model)` written to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(head_to_onnx(model), str(path))
    return path
