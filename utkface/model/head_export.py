"""A trained head as an ONNX graph (the pretrained family's; `heads_to_onnx`: the finetuned
family's members' heads averaged), so a served model runs it on ONNX Runtime without
TensorFlow or Keras.

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


def _dense(layer: keras.layers.Dense, source: str, target: str, name: str) -> tuple[list, list]:
    weights = layer.get_weights()
    kernel = weights[0].astype(np.float32)
    nodes, constants = [], [numpy_helper.from_array(kernel, f"{name}/kernel")]
    activation = layer.get_config()["activation"]
    if activation not in ("linear", *ACTIVATIONS):
        raise ValueError(f"layer {name}: no ONNX mapping for activation {activation!r}")
    product = target if len(weights) == 1 and activation == "linear" else f"{name}/matmul"
    nodes.append(helper.make_node("MatMul", [source, f"{name}/kernel"], [product]))
    if len(weights) == 2:
        constants.append(numpy_helper.from_array(weights[1].astype(np.float32), f"{name}/bias"))
        biased = target if activation == "linear" else f"{name}/biased"
        nodes.append(helper.make_node("Add", [product, f"{name}/bias"], [biased]))
        product = biased
    if activation != "linear":
        attributes = {"axis": -1} if activation == "softmax" else {}
        nodes.append(helper.make_node(ACTIVATIONS[activation], [product], [target], **attributes))
    return nodes, constants


def _standardise(
    layer: keras.layers.Normalization, source: str, target: str, name: str
) -> tuple[list, list]:
    """(x - mean) / max(sqrt(variance), epsilon), as Keras computes it: folding it into one
    scale and shift cancels large features against large means and loses float32 digits."""
    mean = np.asarray(layer.mean, dtype=np.float32).reshape(-1)
    variance = np.asarray(layer.variance, dtype=np.float32).reshape(-1)
    std = np.maximum(np.sqrt(variance), np.float32(keras.config.epsilon())).astype(np.float32)
    constants = [
        numpy_helper.from_array(mean, f"{name}/mean"),
        numpy_helper.from_array(std, f"{name}/std"),
    ]
    nodes = [
        helper.make_node("Sub", [source, f"{name}/mean"], [f"{name}/centred"]),
        helper.make_node("Div", [f"{name}/centred", f"{name}/std"], [target]),
    ]
    return nodes, constants


def _head_nodes(model: keras.Model, source: str, prefix: str = "") -> tuple[list, list]:
    """The nodes and constants of a trained head reading the tensor `source`, every name
    prefixed by `prefix`: its outputs are `prefix` + each of `OUTPUTS`."""
    names = {_tensor_name(model.inputs[0]): source}
    nodes, constants = [], []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        given = names[_tensor_name(layer.input)]
        name = prefix + layer.name
        target = name if layer.name in OUTPUTS else f"{name}/out"
        names[_tensor_name(layer.output)] = target
        if isinstance(layer, keras.layers.Dropout):
            names[_tensor_name(layer.output)] = given  # inactive at inference
            continue
        if isinstance(layer, keras.layers.Normalization):
            added = _standardise(layer, given, target, name)
        elif isinstance(layer, keras.layers.Dense):
            added = _dense(layer, given, target, name)
        else:
            raise ValueError(f"layer {layer.name}: no ONNX mapping for {type(layer).__name__}")
        nodes += added[0]
        constants += added[1]
    return nodes, constants


def _bin_centres(model: keras.Model) -> np.ndarray:
    return model.get_layer(AGE).get_weights()[0][:, 0]


def _model(
    nodes: list, constants: list, features: int, heads: list[keras.Model]
) -> onnx.ModelProto:
    """The graph of `nodes` from `INPUT` (`features` wide) to `OUTPUTS`, with the heads' bin
    centres, checked."""
    outputs = [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", size])
        for name, size in ((AGE, 1), (GENDER, 1), (AGE_BINS, heads[0].get_layer(AGE_BINS).units))
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
    centres = _bin_centres(heads[0])
    if any(not np.array_equal(_bin_centres(head), centres) for head in heads):
        raise ValueError("the heads' age bins differ: their probabilities cannot be averaged")
    helper.set_model_props(onnx_model, {BIN_CENTRES: json.dumps([float(c) for c in centres])})
    onnx.checker.check_model(onnx_model, full_check=True)
    return onnx_model


def head_to_onnx(model: keras.Model) -> onnx.ModelProto:
    """The ONNX graph of a trained head (`utkface.model.head.build_head`, with its `age_bins`
    output), float32 in and out, any batch size."""
    nodes, constants = _head_nodes(model, INPUT)
    return _model(nodes, constants, model.inputs[0].shape[-1], [model])


def heads_to_onnx(heads: list[keras.Model], age_size: int) -> onnx.ModelProto:
    """The ONNX graph of an ensemble's heads, each `head_to_onnx`'s reading its member's part
    of the features, their outputs averaged. The features: each member's age part (`age_size`
    wide), member after member, then the gender network's part, which every head reads after
    its member's."""
    members = len(heads)
    features = heads[0].inputs[0].shape[-1] + (members - 1) * age_size
    nodes, constants = [], [numpy_helper.from_array(np.array([1], np.int64), "features/axis")]

    def columns(name: str, start: int, end: int) -> None:
        """Node `name`: the features' columns from `start` to `end`."""
        for bound, value in (("start", start), ("end", end)):
            constants.append(
                numpy_helper.from_array(np.array([value], np.int64), f"{name}/{bound}")
            )
        bounds = [f"{name}/start", f"{name}/end", "features/axis"]
        nodes.append(helper.make_node("Slice", [INPUT, *bounds], [name]))

    columns("gender_part", members * age_size, features)
    for member, head in enumerate(heads):
        prefix = f"member{member}/"
        columns(f"{prefix}age_part", member * age_size, (member + 1) * age_size)
        nodes.append(
            helper.make_node(
                "Concat", [f"{prefix}age_part", "gender_part"], [f"{prefix}features"], axis=1
            )
        )
        added = _head_nodes(head, f"{prefix}features", prefix)
        nodes += added[0]
        constants += added[1]
    for output in OUTPUTS:
        averaged = [f"member{member}/{output}" for member in range(members)]
        nodes.append(helper.make_node("Mean", averaged, [output]))
    return _model(nodes, constants, features, heads)


def save_head_onnx(model: keras.Model, path: Path) -> Path:
    """`head_to_onnx(model)` written to `path`."""
    return _save(head_to_onnx(model), path)


def save_heads_onnx(heads: list[keras.Model], age_size: int, path: Path) -> Path:
    """`heads_to_onnx(heads, age_size)` written to `path`."""
    return _save(heads_to_onnx(heads, age_size), path)


def _save(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path
