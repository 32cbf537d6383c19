"""Precise BatchNorm statistics (`utkface.model.batchnorm`) on a tiny untrained model."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from tiny import NO_AUGMENT, SIZE, TINY_MODEL, images, split

from utkface.data.labels import AGE
from utkface.model.batchnorm import recompute_statistics
from utkface.model.fitting import clean_batchnorm_callbacks, fit, make_dataset, seed_everything
from utkface.model.network import build_model
from utkface.params import TrainParams

CFG = TINY_MODEL.model_copy(update={"augment": NO_AUGMENT, "filters": [8, 8]})


def norms(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def scramble(model: keras.Model, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for layer in norms(model):
        layer.moving_mean.assign(rng.normal(0, 5, layer.moving_mean.shape))
        layer.moving_variance.assign(rng.uniform(0.1, 9, layer.moving_variance.shape))


def test_first_layer_gets_the_average_of_its_batch_statistics() -> None:
    seed_everything(0)
    model = build_model(CFG, SIZE, seed=0)
    x = images(12)
    scramble(model, 0)
    assert recompute_statistics(model, x, batch_size=4, seed=0) == len(norms(model)) == 3
    first = norms(model)[0]
    features = keras.ops.convert_to_numpy(keras.Model(model.inputs, first.input)(x))
    order = np.random.default_rng(0).permutation(12)
    batches = [features[np.sort(order[i : i + 4])] for i in (0, 4, 8)]
    np.testing.assert_allclose(first.moving_mean, features.mean(axis=(0, 1, 2)), atol=1e-5)
    expected_var = np.mean([b.var(axis=(0, 1, 2)) for b in batches], axis=0)
    np.testing.assert_allclose(first.moving_variance, expected_var, rtol=1e-4)
    assert np.all(expected_var < features.var(axis=(0, 1, 2)) + 1e-6)  # within-batch variance


def test_inference_no_longer_depends_on_the_old_moving_averages() -> None:
    x = images(16)
    outputs = []
    for garbage in (1, 2):
        seed_everything(0)  # the same initial weights
        model = build_model(CFG, SIZE, seed=0)
        scramble(model, garbage)
        before = model.predict(x, verbose=0)[AGE]
        recompute_statistics(model, x, batch_size=8, seed=3)
        outputs.append((before, model.predict(x, verbose=0)[AGE]))
    (before_1, after_1), (before_2, after_2) = outputs
    assert not np.allclose(before_1, before_2)
    np.testing.assert_allclose(after_1, after_2, rtol=1e-5)


def test_fewer_images_than_a_batch_make_one_batch() -> None:
    model = build_model(CFG, SIZE, seed=0)
    scramble(model, 0)
    recompute_statistics(model, images(3), batch_size=64, seed=0)
    assert np.all(np.isfinite(norms(model)[-1].moving_variance))


def test_statistics_come_from_clean_images_whatever_the_augmentation() -> None:
    strong = TINY_MODEL.model_copy(update={"filters": [8, 8]})  # default augmentation: all active
    x = images(16)
    stats = []
    for cfg in (CFG, strong):
        seed_everything(0)
        model = build_model(cfg, SIZE, seed=0)
        recompute_statistics(model, x, batch_size=8, seed=0)
        stats.append([layer.moving_variance.numpy() for layer in norms(model)])
    for clean, augmented in zip(*stats, strict=True):
        np.testing.assert_allclose(clean, augmented, rtol=1e-5)


class StatisticsAtValidation(keras.callbacks.Callback):
    """Records the last BatchNorm layer's moving variance as each validation begins."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[np.ndarray] = []

    def on_test_begin(self, logs: dict | None = None) -> None:
        self.seen.append(norms(self.model)[-1].moving_variance.numpy().copy())


def test_every_validation_runs_on_statistics_of_the_clean_sample() -> None:
    train, val = split(24), split(8, seed=1)
    cfg = TrainParams(batch_size=4, precise_batchnorm_sample=8)
    (callback,) = clean_batchnorm_callbacks(cfg, train, seed=0)
    assert len(callback.images) == 8
    assert all((train.images == image).all(axis=(1, 2, 3)).any() for image in callback.images)
    recorder = StatisticsAtValidation()
    model, history = fit(
        CFG, cfg, 0.01, train, val, seed=0, epochs=2, callbacks=[recorder], early_stopping=False
    )
    assert len(recorder.seen) == 2 and not np.allclose(recorder.seen[0], recorder.seen[1])
    # No training step after the last validation: the model still holds that validation's
    # statistics, exactly those of the sample, and evaluates to the logged val_loss.
    final = norms(model)[-1].moving_variance.numpy().copy()
    np.testing.assert_allclose(recorder.seen[-1], final)
    recompute_statistics(model, callback.images, batch_size=4, seed=0)
    np.testing.assert_allclose(norms(model)[-1].moving_variance.numpy(), final, rtol=1e-5)
    logged = model.evaluate(make_dataset(val, 4, shuffle=False, seed=0), verbose=0)[0]
    assert logged == pytest.approx(history["val_loss"][-1], rel=1e-4)


def test_without_precise_batchnorm_validation_uses_the_moving_averages() -> None:
    cfg = TrainParams(batch_size=4, precise_batchnorm=False)
    assert clean_batchnorm_callbacks(cfg, split(24), seed=0) == []


def test_the_sample_is_seeded_and_never_larger_than_the_split() -> None:
    def sample(size: int, seed: int) -> np.ndarray:
        cfg = TrainParams(precise_batchnorm_sample=size)
        (callback,) = clean_batchnorm_callbacks(cfg, split(10), seed)
        return callback.images

    np.testing.assert_array_equal(sample(6, seed=1), sample(6, seed=1))
    assert len(sample(6, seed=1)) == 6 and not np.array_equal(sample(6, 1), sample(6, 2))
    np.testing.assert_array_equal(sample(99, seed=1), split(10).images)
