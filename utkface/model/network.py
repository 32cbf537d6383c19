"""The dual-head CNN: one function builds it from its config, for both tune and train.

Input: uint8-valued RGB images (batch, S, S, 3). Outputs: `age` (years, linear) and `gender`
(probability of female). Augmentation layers are part of the model but, as Keras preprocessing
layers, only act in training; inference sees the image as it is.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from utkface.data.labels import AGE, GENDER
from utkface.params import ModelParams, TrainParams

PIXELS = "pixels"  # the rescaling layer: its input is the image after augmentation


def _augmentation(cfg: ModelParams, seed: int) -> list[layers.Layer]:
    aug = cfg.augment
    stack: list[layers.Layer] = []
    if aug.horizontal_flip:
        stack.append(layers.RandomFlip("horizontal", seed=seed))
    if aug.rotation:
        stack.append(layers.RandomRotation(aug.rotation, fill_mode="reflect", seed=seed + 1))
    if aug.zoom:
        stack.append(layers.RandomZoom(aug.zoom, fill_mode="reflect", seed=seed + 2))
    if aug.translation:
        stack.append(
            layers.RandomTranslation(
                aug.translation, aug.translation, fill_mode="reflect", seed=seed + 3
            )
        )
    if aug.contrast:
        stack.append(layers.RandomContrast(aug.contrast, seed=seed + 4))
    return stack


def _conv(
    x: keras.KerasTensor, filters: int, cfg: ModelParams, separable: bool, strides: int = 1
) -> keras.KerasTensor:
    reg = keras.regularizers.L2(cfg.l2) if cfg.l2 else None
    if separable:
        x = layers.SeparableConv2D(
            filters,
            3,
            strides=strides,
            padding="same",
            use_bias=False,
            depthwise_regularizer=reg,
            pointwise_regularizer=reg,
        )(x)
    else:
        x = layers.Conv2D(
            filters, 3, strides=strides, padding="same", use_bias=False, kernel_regularizer=reg
        )(x)
    x = layers.BatchNormalization(momentum=cfg.batchnorm_momentum)(x)
    return layers.Activation("relu")(x)


def build_model(
    cfg: ModelParams, image_size: int, seed: int, age_prior: float = 30.0
) -> keras.Model:
    """The uncompiled dual-head model.

    Designed for accuracy per CPU-minute: a plain-convolution stem (cheap at 3 input channels)
    with stride `cfg.stem_stride` so no block runs at full resolution, then blocks of
    depthwise-separable convolutions when `cfg.separable` (~8x fewer multiply-adds than plain
    ones at these widths), max-pooling between blocks and global average pooling before a small
    dense head. BatchNorm momentum is `cfg.batchnorm_momentum` (0.9 by default): with a few
    thousand images an epoch has few steps, and Keras' 0.99 leaves the inference statistics far
    behind the training ones.
    `age_prior` initialises the age bias (e.g. the training median) so the regression starts
    near the data instead of at 0.
    """
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = inputs
    for layer in _augmentation(cfg, seed):  # on 0..255 values, the range RandomContrast clips to
        x = layer(x)
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name=PIXELS)(x)  # first layer after augmentation
    x = _conv(x, cfg.stem_filters, cfg, separable=False, strides=cfg.stem_stride)
    for block, filters in enumerate(cfg.filters):
        for _ in range(cfg.convs_per_block):
            x = _conv(x, filters, cfg, cfg.separable)
        x = layers.MaxPooling2D()(x) if block < len(cfg.filters) - 1 else x
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(cfg.dropout, seed=seed)(x)
    x = layers.Dense(cfg.dense_units, activation="relu")(x)
    x = layers.Dropout(cfg.dropout, seed=seed + 1)(x)
    # The heads stay float32 under mixed precision (`train.mixed_precision`): a float16
    # sigmoid and loss lose the small differences the gradients are made of.
    prior = keras.initializers.Constant(age_prior)
    age = layers.Dense(1, name=AGE, bias_initializer=prior, dtype="float32")(x)
    gender = layers.Dense(1, activation="sigmoid", name=GENDER, dtype="float32")(x)
    return keras.Model(inputs, {AGE: age, GENDER: gender}, name="utkface_age_gender")


def with_test_time_flip(model: keras.Model) -> keras.Model:
    """The inference model: `model`'s outputs averaged over each image and its mirror image.

    A horizontal flip keeps a face's age and gender, so averaging both views cancels part of
    the model's error for twice the inference cost. The flip is a fixed anti-diagonal matrix
    applied along the width axis by stock layers, so the saved model loads anywhere (MLflow's
    Keras flavor included) without custom objects.
    """
    _, height, width, channels = model.input_shape
    inputs = keras.Input((height, width, channels), name="image")
    mirror = layers.Dense(width, use_bias=False, trainable=False, name="mirror")
    mirrored = layers.Permute((1, 3, 2))(mirror(layers.Permute((1, 3, 2))(inputs)))
    mirror.set_weights([np.eye(width, dtype="float32")[::-1]])
    plain, flipped = model(inputs), model(mirrored)
    outputs = {name: layers.Average(name=name)([plain[name], flipped[name]]) for name in plain}
    return keras.Model(inputs, outputs, name=f"{model.name}_flip_averaged")


def compile_model(
    model: keras.Model,
    train: TrainParams,
    lr: float | keras.optimizers.schedules.LearningRateSchedule,
) -> keras.Model:
    """Attach optimizer, the configured losses and weights, and the `age_mae` /
    `gender_accuracy` metrics (Keras names them after the outputs)."""
    age_loss: keras.losses.Loss = (
        keras.losses.Huber(delta=train.huber_delta)
        if train.age_loss == "huber"
        else keras.losses.MeanAbsoluteError()
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        loss={AGE: age_loss, GENDER: keras.losses.BinaryCrossentropy()},
        loss_weights={AGE: train.loss_weights.age, GENDER: train.loss_weights.gender},
        metrics={
            AGE: [keras.metrics.MeanAbsoluteError(name="mae")],
            GENDER: [keras.metrics.BinaryAccuracy(name="accuracy")],
        },
    )
    return model
