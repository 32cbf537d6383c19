"""What the finetuned family's members see of each face (`finetuned.finetune_dataset`): while
training, one cached view or its mirror, drawn anew every epoch; otherwise the face's own chip,
as served."""

from __future__ import annotations

import numpy as np
import pandas as pd

from utkface.data.dataset import SplitData
from utkface.model.finetuned import FEATURES, PREFIX, finetune_dataset

FACES, VIEWS = 4, 3


def split() -> SplitData:
    """Faces whose cached activations say which face, view and side (0: the view, 1: its
    mirror) they are: 100 * face + 10 * view + side, in every cell."""
    codes = (
        100 * np.arange(FACES)[:, None, None]
        + 10 * np.arange(VIEWS)[None, :, None]
        + np.arange(2)[None, None, :]
    )
    prefix = np.broadcast_to(codes[..., None, None, None], (FACES, VIEWS, 2, 2, 2, 1))
    images = {PREFIX: prefix.astype(np.float16), FEATURES: np.zeros((FACES, 5), np.float32)}
    ages = np.arange(FACES, dtype=np.float32)
    table = pd.DataFrame({"image_id": [f"img{i}" for i in range(FACES)]})
    return SplitData(images, ages, ages % 2, table)


def seen(shuffle: bool, epochs: int) -> list[list[int]]:
    """Per epoch, the code each face was given, in face order."""
    data = split()
    targets = {"age": data.age}
    ds = finetune_dataset(data, batch_size=FACES, shuffle=shuffle, seed=7, targets=targets)
    result = []
    for _ in range(epochs):
        codes = {}
        for inputs, batch in ds:
            assert tuple(inputs[PREFIX].shape[1:]) == (2, 2, 1)  # one activation a face
            faces = zip(inputs[PREFIX][:, 0, 0, 0].numpy(), batch["age"].numpy(), strict=True)
            for code, age in faces:
                codes[int(age)] = int(code)
        result.append([codes[face] for face in range(FACES)])
    return result


def test_training_draws_views_and_mirrors_of_each_face_anew_every_epoch() -> None:
    epochs = seen(shuffle=True, epochs=30)
    drawn = {code for epoch in epochs for code in epoch}
    assert all(code // 100 == face for epoch in epochs for face, code in enumerate(epoch))
    assert {code % 100 for code in drawn} == {10 * view + side for view in range(VIEWS)
                                              for side in range(2)}  # fmt: skip
    assert len({tuple(epoch) for epoch in epochs}) > 1


def test_judging_gives_each_face_its_own_chip_not_mirrored() -> None:
    assert seen(shuffle=False, epochs=2) == [[100 * face for face in range(FACES)]] * 2
