"""The pretrained family's dual head: a small Keras model on the frozen face features.

Input: float32 (batch, F) features of `utkface.model.face_backbone`, standardised by a
`Normalization` layer adapted on the training split. One hidden layer feeds two heads:

- age as a distribution over `age_bins` bins (quantiles of the training ages); the prediction
  is its expectation over the bins' mean ages (a fixed Dense layer). It is trained with
  cross-entropy on the bins (the `age_bins` output) plus a small Huber loss on the expectation:
  on the real data such a classifier beat a direct regression by about half a year.
- gender: a sigmoid, the probability of female, as in the scratch CNN.

`serving_head` keeps only `age` and `gender`, both stock layers, so the saved model loads
anywhere without custom objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import pairwise

import keras
import numpy as np
from keras import layers

from utkface.data.labels import AGE, AGE_BINS, GENDER
from utkface.model.layerwise_lr import adam, layer_multipliers
from utkface.params import HeadParams, TrainParams

HEAD = "face_head"  # the model's name, also where it is nested (the finetuned family)


def age_bin_centres(ages: np.ndarray, bins: int) -> np.ndarray:
    """The mean age of each of (at most) `bins` quantile bins of `ages`, increasing."""
    edges = np.unique(np.quantile(ages, np.linspace(0, 1, bins + 1)[1:-1]))
    index = np.digitize(ages, edges)
    return np.array([ages[index == i].mean() for i in np.unique(index)], dtype=np.float32)


class AgeBinCrossentropy(keras.losses.Loss):
    """Cross-entropy of predicted bin probabilities against the bin of the true age (years):
    the bin whose centre is nearest."""

    def __init__(self, centres: list[float], name: str = "age_bin_crossentropy") -> None:
        super().__init__(name=name)
        self.centres = list(centres)
        self.midpoints = [(a + b) / 2 for a, b in pairwise(self.centres)]

    def call(self, y_true: keras.KerasTensor, y_pred: keras.KerasTensor) -> keras.KerasTensor:
        target = keras.ops.digitize(keras.ops.reshape(y_true, (-1,)), self.midpoints)
        return keras.losses.sparse_categorical_crossentropy(target, y_pred)

    def get_config(self) -> dict:
        return {"centres": self.centres, "name": self.name}


def build_head(cfg: HeadParams, features: np.ndarray, ages: np.ndarray, seed: int) -> keras.Model:
    """The uncompiled training head (outputs `age`, `gender`, `age_bins`), its input
    normalisation adapted on `features` and its age bins the quantiles of `ages`."""
    inputs = keras.Input((features.shape[1],), name="features")
    norm = layers.Normalization(name="standardise")
    norm.adapt(features)
    x = layers.Dropout(cfg.dropout, seed=seed)(norm(inputs))
    x = layers.Dense(cfg.units, activation="relu")(x)
    x = layers.Dropout(cfg.dropout, seed=seed + 1)(x)
    centres = age_bin_centres(np.asarray(ages, dtype=np.float32), cfg.age_bins)
    bins = layers.Dense(len(centres), activation="softmax", name=AGE_BINS)(x)
    expectation = layers.Dense(1, use_bias=False, trainable=False, name=AGE)
    age = expectation(bins)
    expectation.set_weights([centres[:, None]])
    gender = layers.Dense(1, activation="sigmoid", name=GENDER)(x)
    return keras.Model(inputs, {AGE: age, GENDER: gender, AGE_BINS: bins}, name=HEAD)


def _expectation(model: keras.Model) -> keras.layers.Layer:
    """The head's fixed `age` layer, in `model` or in the head nested in it."""
    if AGE in {layer.name for layer in model.layers}:
        return model.get_layer(AGE)
    return model.get_layer(HEAD).get_layer(AGE)


def compile_head(
    model: keras.Model,
    cfg: HeadParams,
    train: TrainParams,
    lr: float | keras.optimizers.schedules.LearningRateSchedule,
    multipliers: Mapping[str, float] | None = None,
) -> keras.Model:
    """Adam, the three losses weighted by `cfg`, and the `age_mae` / `gender_accuracy`
    metrics of the scratch CNN, so tune, train and the plots compare both families. A model
    with the head nested in it (the finetuned family) may give some of its layers a fraction
    of the rate (`multipliers` by layer name)."""
    centres = _expectation(model).get_weights()[0][:, 0].tolist()
    rates = layer_multipliers(model, multipliers) if multipliers else None
    model.compile(
        optimizer=adam(lr, rates),
        loss={
            AGE: keras.losses.Huber(delta=train.huber_delta),
            GENDER: keras.losses.BinaryCrossentropy(),
            AGE_BINS: AgeBinCrossentropy(centres),
        },
        loss_weights={
            AGE: cfg.age_loss_weight,
            GENDER: cfg.gender_loss_weight,
            AGE_BINS: cfg.age_bin_loss_weight,
        },
        metrics={
            AGE: [keras.metrics.MeanAbsoluteError(name="mae")],
            GENDER: [keras.metrics.BinaryAccuracy(name="accuracy")],
        },
    )
    return model


def serving_head(model: keras.Model) -> keras.Model:
    """The head as saved and served: only the `age` and `gender` outputs."""
    outputs = {name: model.get_layer(name).output for name in (AGE, GENDER)}
    return keras.Model(model.input, outputs, name=HEAD)
