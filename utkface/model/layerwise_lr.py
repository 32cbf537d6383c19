"""Learning-rate multipliers for chosen variables: fine-tuning a pretrained backbone at a
fraction (e.g. 0.1) of the head's learning rate.

Keras 3 has no per-layer learning rate, and scaling a layer's gradients instead does nothing
to Adam, whose step is invariant to the gradient's scale. `LayerwiseAdam` multiplies the rate
Keras hands `update_step` for each variable, so it follows whatever sets that rate: a schedule
with warm-up, ReduceLROnPlateau writing `optimizer.learning_rate`, or mixed precision's
`LossScaleOptimizer`, which wraps it and calls its `apply`.

The optimizer sees variables, not layers, so it matches variable paths. A path names the layer
that created the variable but, for a nested functional model, not that model (`hidden/kernel`
for a layer `hidden` of a `backbone` model); a nested Sequential's layers are `backbone/hidden/
kernel` when built but `hidden/kernel` once loaded. `layer_multipliers` turns layer names, nested
models' included, into the paths of their variables. On the TensorFlow backend `update_step`
receives the backend's `tf.Variable`, which has no Keras `path`; its index among the variables
the optimizer was built for gives the path back.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import keras
from keras import ops

LearningRate = float | keras.optimizers.schedules.LearningRateSchedule


def covers(key: str, path: str) -> bool:
    """Whether `key` is the variable path `path` or its leading components: `backbone` covers
    `backbone/conv/kernel` but not `backbone_2/kernel`, nor `age` the `age_bins` layer."""
    return path == key or path.startswith(f"{key}/")


def multiplier_for(path: str, multipliers: Mapping[str, float]) -> float:
    """The multiplier of the longest key that `covers` the variable at `path`; 1 if none."""
    keys = [key for key in multipliers if covers(key, path)]
    return multipliers[max(keys, key=len)] if keys else 1.0


def _layers(model: keras.Model) -> Iterator[keras.Layer]:
    """Every layer of `model`, those inside its nested models included."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _layers(layer)


def layer_multipliers(model: keras.Model, multipliers: Mapping[str, float]) -> dict[str, float]:
    """`multipliers` by layer name as the paths of those layers' trainable variables, the
    keys `LayerwiseAdam` takes; a layer inside a named nested model keeps its own multiplier."""
    named = [layer for layer in _layers(model) if layer.name in multipliers]
    missing = set(multipliers) - {layer.name for layer in named}
    if missing:
        raise ValueError(f"no layer named {sorted(missing)} in {model.name}")
    named.sort(key=lambda layer: -len(layer.trainable_variables))  # inner layers last
    return {
        variable.path: multipliers[layer.name]
        for layer in named
        for variable in layer.trainable_variables
    }


@keras.saving.register_keras_serializable(package="utkface")
class LayerwiseAdam(keras.optimizers.Adam):
    """Adam whose learning rate is multiplied by `multipliers[key]` for the variables `key`
    covers (a variable's path or its layer's name; `layer_multipliers` makes the keys for
    nested models); the longest key covering a variable wins.

    A key that matches no variable the optimizer is built for is an error (a typo, or a
    frozen layer), not a silent full-rate backbone. Adam only: AdamW's decoupled weight decay
    is applied outside `update_step`, at the unmultiplied rate."""

    def __init__(
        self,
        learning_rate: LearningRate = 0.001,
        multipliers: Mapping[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(learning_rate=learning_rate, **kwargs)
        negative = {key: m for key, m in (multipliers or {}).items() if not m >= 0}
        if negative:
            raise ValueError(f"learning-rate multipliers must be >= 0: {negative}")
        self.multipliers = dict(multipliers or {})

    def build(self, variables: list[keras.Variable]) -> None:
        super().build(variables)
        paths = [variable.path for variable in self._trainable_variables]
        unmatched = [key for key in self.multipliers if not any(covers(key, p) for p in paths)]
        if unmatched:
            raise ValueError(f"learning-rate multipliers for no trainable variable: {unmatched}")
        self._lr_multipliers = tuple(multiplier_for(p, self.multipliers) for p in paths)

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        multiplier = self._lr_multipliers[self._get_variable_index(variable)]
        if multiplier != 1.0:
            learning_rate = ops.multiply(ops.cast(learning_rate, variable.dtype), multiplier)
        super().update_step(gradient, variable, learning_rate)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "multipliers": dict(self.multipliers)}


def adam(
    learning_rate: LearningRate, multipliers: Mapping[str, float] | None = None
) -> keras.optimizers.Adam:
    """Keras' own Adam without `multipliers` (the model saves as before), `LayerwiseAdam`
    with them."""
    if not multipliers:
        return keras.optimizers.Adam(learning_rate=learning_rate)
    return LayerwiseAdam(learning_rate=learning_rate, multipliers=multipliers)
