"""Learning-rate multipliers (`utkface.model.layerwise_lr`) on a tiny model, a nested functional
`backbone` and a `head`, through Keras' compiled train step (a tf.function) as `fit` runs it.
Each comparison is with Keras' own Adam from the same state."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pytest

from utkface.model.fitting import MIXED_PRECISION, dtype_policy, learning_rate
from utkface.model.layerwise_lr import (
    LayerwiseAdam,
    LearningRate,
    adam,
    layer_multipliers,
    multiplier_for,
)
from utkface.params import TrainParams

LR = 0.01
X = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
Y = np.random.default_rng(1).normal(size=(16, 1)).astype("float32")
ULP = 2.5e-7  # float32 spacing of weights below 2: a step's change is known to within it
BACKBONE = ["hidden/kernel", "hidden/bias", "last/kernel", "last/bias"]


def tiny_model(policy: str = "float32") -> keras.Model:
    """The same weights on every call (seeded initialisers)."""
    with dtype_policy(policy):
        x = inputs = keras.Input((4,))
        for i, name in enumerate(("hidden", "last")):
            init = keras.initializers.GlorotUniform(i)
            x = keras.layers.Dense(8, "tanh", kernel_initializer=init, name=name)(x)
        backbone = keras.Model(inputs, x, name="backbone")
        inputs = keras.Input((4,))
        init = keras.initializers.GlorotUniform(2)
        head = keras.layers.Dense(1, kernel_initializer=init, dtype="float32", name="head")
        return keras.Model(inputs, head(backbone(inputs)))


def compiled(ratio: float | None, lr: LearningRate = LR, policy: str = "float32") -> keras.Model:
    """The tiny model compiled with `adam` (Keras' Adam for no `ratio`), the backbone at
    `ratio` times the learning rate."""
    model = tiny_model(policy)
    multipliers = None if ratio is None else layer_multipliers(model, {"backbone": ratio})
    model.compile(optimizer=adam(lr, multipliers), loss="mse")
    return model


def weights(model: keras.Model) -> dict[str, np.ndarray]:
    return {v.path: keras.ops.convert_to_numpy(v).copy() for v in model.trainable_variables}


def step(model: keras.Model) -> dict[str, np.ndarray]:
    """Each variable's change in one compiled train step on the whole batch."""
    before = weights(model)
    model.train_on_batch(X, Y)
    return {path: value - before[path] for path, value in weights(model).items()}


def assert_scaled(got: dict[str, np.ndarray], want: dict[str, np.ndarray], ratio: float) -> None:
    assert np.abs(want["head/kernel"]).min() > 0
    for path, delta in want.items():
        expected = ratio * delta if path in BACKBONE else delta
        np.testing.assert_allclose(got[path], expected, rtol=1e-5, atol=ULP, err_msg=path)


def assert_steps_scaled(
    layerwise: keras.Model,
    reference: keras.Model,
    ratio: float,
    steps: int,
    before_step: Callable[[int], None] = lambda _: None,
) -> None:
    """Step by step, `layerwise`'s backbone moves `ratio` times as far as `reference`'s and its
    head as far: `reference` is given `layerwise`'s weights before each step, so both see the
    same gradients and keep the same Adam moments."""
    for i in range(steps):
        before_step(i)
        reference.set_weights(layerwise.get_weights())
        assert_scaled(step(layerwise), step(reference), ratio)


def assert_only_the_head_moves(model: keras.Model) -> None:
    before = weights(model)
    model.fit(X, Y, batch_size=4, epochs=2, verbose=0)
    after = weights(model)
    for path in before:
        assert np.array_equal(before[path], after[path]) == (path in BACKBONE), path


def test_keys_are_whole_leading_path_components_and_the_longest_wins() -> None:
    multipliers = {"backbone": 0.1, "backbone/last": 0.5, "age": 0.0}
    assert multiplier_for("backbone/conv/kernel", multipliers) == 0.1
    assert multiplier_for("backbone/last/kernel", multipliers) == 0.5
    assert multiplier_for("backbone_2/kernel", multipliers) == 1.0
    assert multiplier_for("age_bins/kernel", multipliers) == 1.0
    assert multiplier_for("age/kernel", multipliers) == 0.0


def test_layer_multipliers_reach_into_nested_models() -> None:
    model = tiny_model()
    assert layer_multipliers(model, {"backbone": 0.1, "last": 0.5}) == {
        "hidden/kernel": 0.1,
        "hidden/bias": 0.1,
        "last/kernel": 0.5,
        "last/bias": 0.5,
    }
    with pytest.raises(ValueError, match=r"no layer named \['backbon'\]"):
        layer_multipliers(model, {"backbon": 0.1})


def test_ratio_zero_freezes_the_backbone_through_fit() -> None:
    assert_only_the_head_moves(compiled(0.0))


@pytest.mark.parametrize("ratio", [0.1, 0.37])
def test_first_step_of_the_backbone_is_ratio_times_adams(ratio: float) -> None:
    got, want = step(compiled(ratio)), step(compiled(None))
    for path, delta in want.items():
        # Adam's first step is lr * g / (|g| + eps): lr per element, whatever the gradient
        np.testing.assert_allclose(np.abs(delta), LR, rtol=1e-2, err_msg=path)
    assert_scaled(got, want, ratio)


def test_the_ratio_holds_after_the_learning_rate_is_set_as_reduce_lr_on_plateau_does() -> None:
    layerwise, reference = compiled(0.1), compiled(None)

    def lower(i: int) -> None:
        if i == 2:  # after the train step was traced with the first rate
            layerwise.optimizer.learning_rate = reference.optimizer.learning_rate = LR / 7

    assert_steps_scaled(layerwise, reference, 0.1, steps=4, before_step=lower)
    assert float(layerwise.optimizer.learning_rate) == pytest.approx(LR / 7)


def test_the_ratio_holds_along_fittings_warmup_and_cosine_schedule() -> None:
    cfg = TrainParams(lr_schedule="cosine", warmup_epochs=1)

    def schedule() -> keras.optimizers.schedules.LearningRateSchedule:
        return learning_rate(cfg, LR, epochs=3, steps_per_epoch=2)

    assert_steps_scaled(compiled(0.25, schedule()), compiled(None, schedule()), 0.25, steps=5)
    rates = [float(schedule()(i)) for i in range(5)]
    assert rates[0] < rates[2] and rates[4] < rates[2]  # warm-up, then decay: the rate moved


def test_mixed_precision_wraps_it_in_loss_scaling_and_keeps_the_ratio() -> None:
    frozen = compiled(0.0, policy=MIXED_PRECISION)
    assert isinstance(frozen.optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(frozen.optimizer.inner_optimizer, LayerwiseAdam)
    assert frozen.get_layer("backbone").get_layer("hidden").compute_dtype == "float16"
    assert_only_the_head_moves(frozen)

    layerwise = compiled(0.1, policy=MIXED_PRECISION)
    reference = compiled(None, policy=MIXED_PRECISION)

    def lower(i: int) -> None:
        if i == 1:  # through the wrapper's learning_rate, as ReduceLROnPlateau writes it
            layerwise.optimizer.learning_rate = reference.optimizer.learning_rate = LR / 3

    assert_steps_scaled(layerwise, reference, 0.1, steps=3, before_step=lower)


def test_a_key_for_no_trainable_variable_is_an_error() -> None:
    model = tiny_model()
    model.compile(optimizer=LayerwiseAdam(LR, {"backbone": 0.1}), loss="mse")
    with pytest.raises(ValueError, match=r"for no trainable variable: \['backbone'\]"):
        model.train_on_batch(X, Y)  # the nested model's name is in no variable's path
    with pytest.raises(ValueError, match=">= 0"):
        LayerwiseAdam(LR, {"hidden": -0.1})


def test_it_saves_and_loads_with_the_model(tmp_path: Path) -> None:
    model = compiled(0.1)
    model.train_on_batch(X, Y)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert isinstance(loaded.optimizer, LayerwiseAdam)
    assert loaded.optimizer.multipliers == model.optimizer.multipliers
    reference = compiled(None)
    reference.train_on_batch(X, Y)  # the same Adam moments as the saved optimizer's
    assert_steps_scaled(loaded, reference, 0.1, steps=2)
    config = model.optimizer.get_config()
    assert LayerwiseAdam.from_config(config).get_config() == config


def test_adam_is_keras_own_without_multipliers() -> None:
    assert type(adam(LR)) is keras.optimizers.Adam
    assert type(adam(LR, {})) is keras.optimizers.Adam
    assert type(adam(LR, {"hidden": 0.1})) is LayerwiseAdam
