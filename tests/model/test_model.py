"""The dual-head CNN (`utkface.model.network`) and the fit loop shared by tune and train
(`utkface.model.fitting`): outputs, inference vs training behaviour, losses, metric names,
reproducibility, and (slow) that a briefly trained model is about flip-invariant."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from tiny import NO_AUGMENT, SIZE, TINY_MODEL, images, split, synthetic_faces, targets

from utkface.data.dataset import SplitData
from utkface.data.labels import AGE, GENDER
from utkface.model import fitting
from utkface.model.network import PIXELS, build_model, compile_model, with_test_time_flip
from utkface.params import LossWeights, ModelParams, ReduceLrParams, TrainParams

RANDOM_LAYERS = (
    keras.layers.RandomFlip,
    keras.layers.RandomRotation,
    keras.layers.RandomZoom,
    keras.layers.RandomTranslation,
    keras.layers.RandomContrast,
)


pytestmark = pytest.mark.usefixtures("seeded")


def numpy(outputs: dict) -> dict[str, np.ndarray]:
    return {k: keras.ops.convert_to_numpy(v) for k, v in outputs.items()}


# --- outputs ----------------------------------------------------------------------------------


def left_half_model() -> keras.Model:
    """Stock layers that see only an image's left half: `age` sums its channel means, `gender`
    is a sigmoid of that sum. Unlike a freshly built CNN (whose outputs barely move at
    initialisation), mirroring the image changes both outputs by a wide margin."""
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    left = keras.layers.Cropping2D(((0, 0), (0, SIZE // 2)))(inputs)
    means = keras.layers.GlobalAveragePooling2D()(left)
    age = keras.layers.Dense(1, name=AGE, kernel_initializer="ones")(means)
    slope = keras.initializers.Constant(0.01)
    gender = keras.layers.Dense(1, "sigmoid", name=GENDER, kernel_initializer=slope)(means)
    return keras.Model(inputs, {AGE: age, GENDER: gender})


def test_test_time_flip_averages_the_image_and_its_mirror(tmp_path: Path) -> None:
    model = left_half_model()
    x = images(4)
    half = SIZE // 2
    left, right = x[:, :, :half].mean((1, 2)).sum(-1), x[:, :, half:].mean((1, 2)).sum(-1)
    assert np.abs(left - right).min() > 1  # the two halves differ: the test can tell a flip
    averaged = with_test_time_flip(model)
    out = averaged.predict(x, verbose=0)
    assert set(out) == {AGE, GENDER}
    np.testing.assert_allclose(out[AGE][:, 0], (left + right) / 2, rtol=1e-5)
    sigmoid = 1 / (1 + np.exp(-0.01 * np.stack([left, right])))
    np.testing.assert_allclose(out[GENDER][:, 0], sigmoid.mean(0), rtol=1e-5)
    np.testing.assert_allclose(averaged.predict(x[:, :, ::-1], verbose=0)[AGE], out[AGE], rtol=1e-5)
    assert len(averaged.trainable_weights) == len(model.trainable_weights)
    averaged.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")  # stock layers: no custom objects
    np.testing.assert_allclose(loaded.predict(x, verbose=0)[GENDER], out[GENDER], atol=1e-6)


def test_outputs_are_named_age_and_gender_with_one_value_per_image() -> None:
    model = build_model(TINY_MODEL, SIZE, seed=0)
    out = model.predict(images(5), verbose=0)
    assert set(out) == {AGE, GENDER}
    assert out[AGE].shape == (5, 1) and out[GENDER].shape == (5, 1)
    assert model.input_shape == (None, SIZE, SIZE, 3)


def test_gender_is_a_probability_even_for_extreme_images() -> None:
    model = build_model(TINY_MODEL.model_copy(update={"dense_units": 16}), SIZE, seed=1)
    batch = np.concatenate(
        [
            images(6),
            np.zeros((1, SIZE, SIZE, 3), "uint8"),
            np.full((1, SIZE, SIZE, 3), 255, "uint8"),
        ]
    )
    out = model.predict(batch, verbose=0)
    # black and white reach the network as -1 and 1: the rescaling inside the model
    pixels = keras.Model(model.input, model.get_layer(PIXELS).output).predict(batch[-2:], verbose=0)
    assert (pixels[0] == -1).all() and (pixels[1] == 1).all()
    # the gender output is the sigmoid of its logit, computed here from the last hidden layer
    hidden = keras.Model(model.input, model.get_layer(GENDER).input).predict(batch, verbose=0)
    kernel, bias = model.get_layer(GENDER).get_weights()
    expected = 1 / (1 + np.exp(-(hidden.astype(float) @ kernel + bias)))
    np.testing.assert_allclose(out[GENDER], expected, rtol=1e-5)
    assert np.isfinite(out[AGE]).all()


def test_age_bias_starts_at_the_prior() -> None:
    model = build_model(TINY_MODEL, SIZE, seed=0, age_prior=37.5)
    assert model.get_layer(AGE).bias.numpy() == pytest.approx([37.5])
    kernel = model.get_layer(AGE).kernel
    kernel.assign(np.zeros(kernel.shape, "float32"))  # the prior is all that is left
    assert model.predict(images(3), verbose=0)[AGE] == pytest.approx(np.full((3, 1), 37.5))
    default = build_model(TINY_MODEL, SIZE, seed=0)
    assert default.get_layer(AGE).bias.numpy() == pytest.approx([30.0])


# --- augmentation: training only --------------------------------------------------------------


def test_inference_is_deterministic_and_independent_of_the_batch() -> None:
    model = build_model(TINY_MODEL, SIZE, seed=0)  # default augmentation: all five layers
    assert sum(isinstance(layer, RANDOM_LAYERS) for layer in model.layers) == 5
    x = images(8)
    first, second = model.predict(x, verbose=0), model.predict(x, verbose=0)
    for name in (AGE, GENDER):
        np.testing.assert_array_equal(first[name], second[name])
    called = numpy(model(x, training=False))
    alone = model.predict(x[:1], verbose=0)
    for name in (AGE, GENDER):
        np.testing.assert_allclose(called[name], first[name], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(alone[name], first[name][:1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "knob",
    [
        {"horizontal_flip": True},
        {"rotation": 0.2},
        {"zoom": 0.2},
        {"translation": 0.2},
        {"contrast": 0.5},
    ],
    ids=lambda knob: next(iter(knob)),
)
def test_each_augmentation_changes_training_outputs(knob: dict) -> None:
    cfg = TINY_MODEL.model_copy(
        update={"dropout": 0.0, "augment": NO_AUGMENT.model_copy(update=knob)}
    )
    model = build_model(cfg, SIZE, seed=0)
    assert sum(isinstance(layer, RANDOM_LAYERS) for layer in model.layers) == 1
    x = images(16)
    # what the network is fed: the images after augmentation (the outputs could be flat, from
    # dead ReLUs at initialisation, whatever they are fed)
    augmented = keras.Model(model.input, model.get_layer(PIXELS).output)
    first, second = (keras.ops.convert_to_numpy(augmented(x, training=True)) for _ in range(2))
    assert not np.allclose(first, second)
    inference = [model.predict(x, verbose=0)[AGE] for _ in range(2)]
    np.testing.assert_array_equal(*inference)


def test_without_augmentation_or_dropout_training_outputs_repeat() -> None:
    """The control for the test above: what differs there is the augmentation."""
    cfg = TINY_MODEL.model_copy(update={"dropout": 0.0, "augment": NO_AUGMENT})
    model = build_model(cfg, SIZE, seed=0)
    assert not any(isinstance(layer, RANDOM_LAYERS) for layer in model.layers)
    x = images(16)
    augmented = keras.Model(model.input, model.get_layer(PIXELS).output)
    np.testing.assert_allclose(augmented(x, training=True), x / 127.5 - 1, atol=1e-6)  # rescaled
    first, second = numpy(model(x, training=True)), numpy(model(x, training=True))
    np.testing.assert_allclose(first[AGE], second[AGE], rtol=1e-6)


# --- losses and metrics -----------------------------------------------------------------------


@pytest.mark.parametrize("age_loss", ["huber", "mae"])
def test_age_loss_follows_params(age_loss: str) -> None:
    delta = 2.0
    cfg = TINY_MODEL.model_copy(update={"l2": 0.0})
    model = build_model(cfg, SIZE, seed=0, age_prior=0.0)
    weights = LossWeights(age=1.5, gender=0.5)
    train = TrainParams(age_loss=age_loss, huber_delta=delta, loss_weights=weights)
    compile_model(model, train, lr=0.001)
    y = {AGE: np.full(8, 100.0, "float32"), GENDER: np.ones(8, "float32")}  # errors >> delta
    result = model.evaluate(images(8), y, return_dict=True, verbose=0)
    mae = result["age_mae"]
    assert mae > 90.0
    if age_loss == "huber":  # linear beyond delta: delta * (|e| - delta / 2)
        assert result["age_loss"] == pytest.approx(delta * (mae - delta / 2), rel=1e-4)
    else:
        assert result["age_loss"] == pytest.approx(mae, rel=1e-5)
    assert result["loss"] == pytest.approx(
        1.5 * result["age_loss"] + 0.5 * result["gender_loss"], rel=1e-4
    )


def test_fit_history_names_the_metrics_per_head() -> None:
    model = compile_model(build_model(TINY_MODEL, SIZE, seed=0), TrainParams(), lr=0.001)
    history = model.fit(images(8), targets(8), epochs=1, batch_size=4, verbose=0).history
    assert {"loss", "age_mae", "gender_accuracy"} <= set(history)
    assert not any(name.startswith("val_") for name in history)
    model, history = fitting.fit(
        TINY_MODEL, TrainParams(batch_size=4), 0.001, split(8), split(4, seed=1), seed=0, epochs=2
    )
    expected = {"age_mae", "gender_accuracy", "val_age_mae", "val_gender_accuracy", "val_loss"}
    assert expected <= set(history)
    assert all(len(history[name]) == 2 for name in expected)
    # the last epoch's validation accuracy is the share of the 4 faces the fitted model gets right
    val = split(4, seed=1)
    p_female = model.predict(val.images, verbose=0)[GENDER].ravel()
    right = float(np.mean((p_female > 0.5) == (val.gender == 1)))
    assert history["val_gender_accuracy"][-1] == pytest.approx(right)


# --- input pipeline and fit -------------------------------------------------------------------


def test_make_dataset_batches_images_and_both_targets() -> None:
    data = split(10)
    batches = list(fitting.make_dataset(data, batch_size=4, shuffle=False, seed=0))
    assert [len(x) for x, _ in batches] == [4, 4, 2]
    x, y = batches[0]
    assert x.dtype.name == "uint8" and tuple(x.shape) == (4, SIZE, SIZE, 3)
    assert set(y) == {AGE, GENDER} and y[AGE].dtype.name == "float32"
    ages = np.concatenate([y[AGE].numpy() for _, y in batches])
    np.testing.assert_array_equal(ages, data.age)  # in order without shuffling
    np.testing.assert_array_equal(batches[0][0].numpy(), data.images[:4])


def test_make_dataset_shuffles_every_row_once_per_epoch() -> None:
    data = split(32)
    ds = fitting.make_dataset(data, batch_size=8, shuffle=True, seed=3)
    epochs = [np.concatenate([y[AGE].numpy() for _, y in ds]) for _ in range(2)]
    for ages in epochs:
        np.testing.assert_array_equal(np.sort(ages), np.sort(data.age))
    assert not np.array_equal(epochs[0], data.age)
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled each epoch


@pytest.mark.slow
def test_fit_is_reproducible_for_a_seed() -> None:
    def run(seed: int) -> dict[str, list[float]]:
        _, history = fitting.fit(
            TINY_MODEL, TrainParams(batch_size=8), 0.01, split(24), split(8, seed=1), seed, epochs=2
        )
        return history

    first = run(5)
    assert run(5) == first
    assert run(6) != first


def test_cosine_schedule_warms_up_peaks_at_lr_and_decays_to_zero() -> None:
    cfg = TrainParams(lr_schedule="cosine", warmup_epochs=2)
    schedule = fitting.learning_rate(cfg, 0.01, epochs=10, steps_per_epoch=5)
    rates = [float(schedule(step)) for step in range(50)]
    assert rates[0] == pytest.approx(0.001)
    assert max(rates) == pytest.approx(0.01) and rates.index(max(rates)) == 10
    assert rates[:11] == sorted(rates[:11]) and rates[10:] == sorted(rates[10:], reverse=True)
    assert float(schedule(50)) == pytest.approx(0.0, abs=1e-9)


def test_plateau_schedule_keeps_the_lr_and_lowers_it_on_plateaus() -> None:
    cfg = TrainParams(lr_schedule="plateau")
    assert fitting.learning_rate(cfg, 0.01, epochs=10, steps_per_epoch=5) == 0.01
    # a rate so small that the weights cannot move: val_loss never improves by ReduceLROnPlateau's
    # min_delta (1e-4), so from the second epoch on every epoch is a plateau of patience 1
    lr = 1e-8
    cfg = TrainParams(
        lr_schedule="plateau",
        batch_size=4,
        reduce_lr=ReduceLrParams(patience=1, factor=0.5, min_lr=0.0),
    )
    _, history = fitting.fit(TINY_MODEL, cfg, lr, split(8), split(4, seed=1), seed=0, epochs=4)
    assert max(history["val_loss"]) - min(history["val_loss"]) < 1e-4  # the plateau
    # each epoch logs the rate it trained with: halved after epochs 2 and 3
    assert history["learning_rate"] == pytest.approx([lr, lr, lr / 2, lr / 4], rel=1e-5)


def test_fit_follows_the_cosine_schedule_epoch_by_epoch() -> None:
    cfg = TrainParams(batch_size=4, lr_schedule="cosine", warmup_epochs=1)
    _, history = fitting.fit(
        TINY_MODEL, cfg, 0.01, split(8), split(4, seed=1), seed=0, epochs=3, early_stopping=False
    )
    # Keras reports the rate at each epoch's end: after warm-up, half-way, at the end.
    assert history["learning_rate"] == pytest.approx([0.01, 0.005, 0.0], abs=1e-6)


# --- behaviour of a trained model -------------------------------------------------------------


@pytest.mark.slow
def test_trained_model_is_nearly_flip_invariant() -> None:
    """Horizontal flips are part of the training augmentation (and faces are about symmetric),
    so a mirrored face should get about the same age, while different faces get different ones.
    """
    faces, labels = synthetic_faces(400)
    ages, genders = labels["age"].to_numpy("float32"), labels["gender"].to_numpy("float32")

    def part(rows: slice) -> SplitData:
        return SplitData(faces[rows], ages[rows], genders[rows], labels.iloc[rows])

    train, val = part(slice(0, 300)), part(slice(300, 400))
    cfg = ModelParams(stem_filters=8, filters=[16, 32], convs_per_block=1, dense_units=16)
    model, _ = fitting.fit(
        cfg, TrainParams(batch_size=32), 0.01, train, val, seed=0, epochs=12, early_stopping=False
    )
    predicted = model.predict(val.images, verbose=0)[AGE][:, 0]
    mirrored = model.predict(val.images[:, :, ::-1], verbose=0)[AGE][:, 0]
    mae = float(np.abs(predicted - val.age).mean())
    flip_change = float(np.abs(predicted - mirrored).mean())
    face_change = float(np.abs(predicted - np.roll(predicted, 1)).mean())
    assert predicted.std() > 1.0, "the model ignores the image: nothing to compare"
    assert flip_change < 0.1 * mae, (flip_change, mae)
    assert flip_change < 0.25 * face_change, (flip_change, face_change)


def test_mixed_precision_builds_the_cnn_in_float16_with_float32_heads_and_loss_scaling() -> None:
    train_cfg = TrainParams(mixed_precision=True, epochs=1, batch_size=16, warmup_epochs=0)
    data = split(32)
    model, compile_fn = fitting.build_member("scratch", TINY_MODEL, train_cfg, data, seed=0)
    assert keras.config.dtype_policy().name == "float32"  # restored for what is built next
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs and all(layer.compute_dtype == "float16" for layer in convs)
    assert all(layer.variable_dtype == "float32" for layer in convs)
    outputs = model(data.images[:4])
    assert {keras.backend.standardize_dtype(o.dtype) for o in outputs.values()} == {"float32"}
    history = fitting.fit_model(model, train_cfg, 0.01, data, data, 0, 1, compile_fn=compile_fn)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert np.isfinite(history.history["loss"]).all()
