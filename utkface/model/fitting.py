"""Fitting a model of either family: the tf.data input pipeline and the fit loop shared by
tune and train.

The scratch CNN trains on images, the pretrained family's head (`utkface.model.head`) on the
cached face features, the finetuned family (`utkface.model.finetuned`) on the age network's
cached prefix activations; all are `SplitData` (`load_inputs`) and go through `fit_model`."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import random
import sys
from collections.abc import Callable, Iterator

import keras
import numpy as np
import tensorflow as tf

from utkface import paths
from utkface.data.dataset import SplitData, load_split, sample_rows
from utkface.data.labels import AGE, AGE_BINS, GENDER
from utkface.model.batchnorm import CleanStatisticsForValidation, has_batchnorm
from utkface.model.finetuned import build_finetuned, finetune_dataset, load_finetune_inputs
from utkface.model.head import build_head, compile_head
from utkface.model.network import build_model, compile_model
from utkface.params import Family, ModelParams, TrainParams

Compile = Callable[[keras.Model, float | keras.optimizers.schedules.LearningRateSchedule], object]
TARGETS = {AGE: "age", GENDER: "gender", AGE_BINS: "age"}  # each output's target in SplitData


def seed_everything(seed: int) -> None:
    """One seed for Python, NumPy, TensorFlow and Keras; deterministic TF kernels."""
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def load_inputs(member: Family, split: str) -> SplitData:
    """What `member` trains on for one split: images for the scratch CNN, the cached face
    features for the pretrained head, the cached prefix activations and gender features for
    the finetuned family (for both heads, an augmented copy repeats its original's)."""
    if member == "pretrained":
        return load_split(split, images_path=paths.FEATURE_TABLE, augment=False)
    if member == "finetuned":
        return load_finetune_inputs(split)
    return load_split(split)


def make_dataset(
    data: SplitData,
    batch_size: int,
    shuffle: bool,
    seed: int,
    outputs: tuple[str, ...] = (AGE, GENDER),
) -> tf.data.Dataset:
    """Batches of (inputs, {output: target}) straight from the in-memory arrays (for the
    finetuned family, `finetune_dataset`)."""
    targets = {name: getattr(data, TARGETS[name]).astype("float32") for name in outputs}
    if isinstance(data.images, dict):
        return finetune_dataset(data, batch_size, shuffle, seed, targets)
    ds = tf.data.Dataset.from_tensor_slices((data.images, targets))
    if shuffle:
        ds = ds.shuffle(len(data.age), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def progress_verbosity() -> int:
    """Keras' progress bar in a terminal; elsewhere (logs, CI) Keras prints nothing and
    `EpochLine` one short line per epoch."""
    return 1 if sys.stdout.isatty() else 0


class EpochLine(keras.callbacks.Callback):
    """One short line per epoch where no progress bar is drawn, e.g. `epoch 3/30: val_loss
    7.710, val_age_mae 6.189, val_gender_accuracy 0.911`; every metric of every epoch goes to
    MLflow (`EpochLogger`), where Keras' own 400-character lines only buried the useful ones."""

    SHOWN = ("val_loss", "val_age_mae", "val_gender_accuracy")

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        shown = ", ".join(f"{k} {logs[k]:.3f}" for k in self.SHOWN if k in (logs or {}))
        print(f"epoch {epoch + 1}/{self.params['epochs']}: {shown}", flush=True)


class LearningRateInLogs(keras.callbacks.Callback):
    """Adds the optimizer's current learning rate to each epoch's logs, so the history, the
    DVC plots and MLflow show it whatever the schedule. Place it before loggers."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if logs is not None:
            rate = keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
            logs["learning_rate"] = float(rate)


def clean_batchnorm_callbacks(
    cfg: TrainParams, train: SplitData, seed: int
) -> list[keras.callbacks.Callback]:
    """With `train.precise_batchnorm`, BatchNorm statistics recomputed before every validation
    (`CleanStatisticsForValidation`) over `train.precise_batchnorm_sample` seeded training
    images."""
    if not cfg.precise_batchnorm:
        return []
    sample = sample_rows(train, cfg.precise_batchnorm_sample, seed)
    return [CleanStatisticsForValidation(sample.images, cfg.batch_size, seed)]


def learning_rate(
    cfg: TrainParams, lr: float, epochs: int, steps_per_epoch: int
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """`lr` itself for the `plateau` schedule (ReduceLROnPlateau lowers it); for `cosine`, a
    linear warm-up from lr/10 to `lr` over `cfg.warmup_epochs`, then a cosine decay to 0 at
    the last epoch. On a few thousand images validation metrics are noisy, and plateau
    reductions triggered by that noise starve training of learning rate within a few epochs;
    a fixed-horizon decay cannot."""
    if cfg.lr_schedule == "plateau":
        return lr
    warmup_steps = min(cfg.warmup_epochs, epochs - 1) * steps_per_epoch
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=lr / 10 if warmup_steps else lr,
        decay_steps=max(1, epochs * steps_per_epoch - warmup_steps),
        warmup_target=lr if warmup_steps else None,
        warmup_steps=warmup_steps,
    )


def fit_callbacks(
    cfg: TrainParams,
    train: SplitData,
    seed: int,
    early_stopping: bool = True,
    batchnorm: bool = True,
) -> list[keras.callbacks.Callback]:
    """The callbacks of every fit, tune's trials included: the learning rate in the logs,
    clean BatchNorm statistics before each validation (for a model with `batchnorm` layers),
    and (with `early_stopping`) EarlyStopping and, for the `plateau` schedule,
    ReduceLROnPlateau."""
    callbacks: list[keras.callbacks.Callback] = [
        LearningRateInLogs(),
        *(clean_batchnorm_callbacks(cfg, train, seed) if batchnorm else []),
    ]
    if not early_stopping:
        return callbacks
    es, rl = cfg.early_stopping, cfg.reduce_lr
    callbacks.append(
        keras.callbacks.EarlyStopping(
            monitor=es.monitor,
            patience=es.patience,
            start_from_epoch=es.start_from_epoch,
            restore_best_weights=True,
            verbose=1,
        )
    )
    if cfg.lr_schedule == "plateau":
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=rl.monitor,
                factor=rl.factor,
                patience=rl.patience,
                min_lr=rl.min_lr,
                verbose=1,
            )
        )
    return callbacks


def fit_model(
    model: keras.Model,
    cfg: TrainParams,
    lr: float,
    train: SplitData,
    val: SplitData,
    seed: int,
    epochs: int,
    callbacks: list[keras.callbacks.Callback] | None = None,
    early_stopping: bool = True,
    initial_epoch: int = 0,
    compile_fn: Compile | None = None,
    epoch_lines: bool = True,
) -> keras.callbacks.History:
    """Compile a built `model` (`compile_fn`, by default the CNN's `compile_model`) with the
    learning-rate schedule over `epochs`, and fit it with `fit_callbacks` followed by
    `callbacks`. The one fit loop: `fit` (train) and every tune trial
    (`utkface.model.search`) of both families run through it. Without a terminal, each epoch
    prints one `EpochLine` (`epoch_lines`)."""
    steps_per_epoch = math.ceil(len(train.age) / cfg.batch_size)
    compile_fn = compile_fn or functools.partial(compile_model, train=cfg)
    compile_fn(model, lr=learning_rate(cfg, lr, epochs, steps_per_epoch))
    outputs = tuple(model.output) if isinstance(model.output, dict) else (AGE, GENDER)
    return model.fit(
        make_dataset(train, cfg.batch_size, shuffle=True, seed=seed, outputs=outputs),
        validation_data=make_dataset(
            val, cfg.batch_size, shuffle=False, seed=seed, outputs=outputs
        ),
        epochs=epochs,
        initial_epoch=initial_epoch,
        shuffle=False,  # make_dataset shuffles; Keras cannot shuffle a tf.data.Dataset
        callbacks=[
            *fit_callbacks(cfg, train, seed, early_stopping, batchnorm=has_batchnorm(model)),
            *(callbacks or []),
            *([EpochLine()] if epoch_lines and not progress_verbosity() else []),
        ],
        verbose=progress_verbosity(),
    )


def stops_early(member: Family) -> bool:
    """Whether `member` fits with early stopping. The heads do not: their cross-entropy on the
    age bins (and so `val_loss`) rises within a few epochs while their validation MAE and
    accuracy still improve, so they fit `model.head.epochs` (`model.finetune.epochs`) of cosine
    decay and keep the last."""
    return member == "scratch"


MIXED_PRECISION = "mixed_float16"  # Keras wraps the optimizer in loss scaling when compiling


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Keras' global dtype policy set to `name` while layers are built (each layer keeps the
    policy it was built with), then restored: the wrappers built later stay float32."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def build_member(
    member: Family, cfg: ModelParams, train_cfg: TrainParams, train: SplitData, seed: int
) -> tuple[keras.Model, Compile]:
    """A fresh uncompiled model of `member` for `train` and the function that compiles it."""
    if member == "pretrained":
        head = build_head(cfg.head, train.images, train.age, seed)
        return head, functools.partial(compile_head, cfg=cfg.head, train=train_cfg)
    if member == "finetuned":
        return build_finetuned(cfg, train_cfg, train, seed)
    image_size = train.images.shape[1]
    with dtype_policy(MIXED_PRECISION if train_cfg.mixed_precision else "float32"):
        model = build_model(cfg, image_size, seed, age_prior=float(np.median(train.age)))
    return model, functools.partial(compile_model, train=train_cfg)


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
    member: Family = "scratch",
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Build a fresh model of `member` and `fit_model` it; return it with its per-epoch
    history."""
    seed_everything(seed)
    model, compile_fn = build_member(member, model_cfg, train_cfg, train, seed)
    history = fit_model(
        model,
        train_cfg,
        lr,
        train,
        val,
        seed,
        epochs,
        callbacks,
        early_stopping=early_stopping and stops_early(member),
        compile_fn=compile_fn,
    )
    return model, {k: [float(v) for v in vals] for k, vals in history.history.items()}
