"""Fitting the model: the tf.data input pipeline and the fit loop shared by tune and train."""

from __future__ import annotations

import os
import random
import sys

import keras
import numpy as np
import tensorflow as tf

from stages.dataset import SplitData
from stages.model import AGE, GENDER, build_model, compile_model
from stages.params import ModelParams, TrainParams


def seed_everything(seed: int) -> None:
    """One seed for Python, NumPy, TensorFlow and Keras; deterministic TF kernels."""
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def make_dataset(data: SplitData, batch_size: int, shuffle: bool, seed: int) -> tf.data.Dataset:
    """Batches of (uint8 images, {age, gender}) straight from the in-memory cache."""
    targets = {AGE: data.age.astype("float32"), GENDER: data.gender.astype("float32")}
    ds = tf.data.Dataset.from_tensor_slices((data.images, targets))
    if shuffle:
        ds = ds.shuffle(len(data.age), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def progress_verbosity() -> int:
    """Keras progress bar in a terminal, one line per epoch in logs and CI."""
    return 1 if sys.stdout.isatty() else 2


def fit(
    model_cfg: ModelParams,
    train_cfg: TrainParams,
    lr: float,
    train: SplitData,
    val: SplitData,
    seed: int,
    epochs: int,
    callbacks: list[keras.callbacks.Callback] | None = None,
    early_stopping: bool = True,
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Build, compile and fit a fresh model; return it with its per-epoch history."""
    seed_everything(seed)
    image_size = train.images.shape[1]
    model = build_model(model_cfg, image_size, seed, age_prior=float(np.median(train.age)))
    compile_model(model, train_cfg, lr)
    schedule: list[keras.callbacks.Callback] = []
    if early_stopping:
        es, rl = train_cfg.early_stopping, train_cfg.reduce_lr
        schedule = [
            keras.callbacks.EarlyStopping(
                monitor=es.monitor, patience=es.patience, restore_best_weights=True, verbose=1
            ),
            keras.callbacks.ReduceLROnPlateau(
                monitor=rl.monitor,
                factor=rl.factor,
                patience=rl.patience,
                min_lr=rl.min_lr,
                verbose=1,
            ),
        ]
    history = model.fit(
        make_dataset(train, train_cfg.batch_size, shuffle=True, seed=seed),
        validation_data=make_dataset(val, train_cfg.batch_size, shuffle=False, seed=seed),
        epochs=epochs,
        callbacks=[*schedule, *(callbacks or [])],
        verbose=progress_verbosity(),
    )
    return model, {k: [float(v) for v in vals] for k, vals in history.history.items()}
