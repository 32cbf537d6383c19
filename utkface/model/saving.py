"""Saving a Keras model so that the same model gives the same bytes: DVC hashes the saved model
into `dvc.lock`, and Keras stamps every save with the time (`date_saved` in the archive's
`metadata.json`, the weights file's entry time in the zip) and numbers the objects its layers
share by their memory addresses (`shared_object_id` in `config.json`), so an unchanged model
would change `dvc.lock` on every run."""

from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import keras

EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can hold
STAMPED = "date_saved"
SHARED = "shared_object_id"


def _renumbered(node: Any, ids: dict[int, int]) -> Any:
    """The config with each `shared_object_id` (a memory address) replaced by its order of
    first appearance: the same objects stay shared, and the numbers no longer vary."""
    if isinstance(node, dict):
        return {
            key: ids.setdefault(value, len(ids)) if key == SHARED else _renumbered(value, ids)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_renumbered(item, ids) for item in node]
    return node


def save_model(model: keras.Model, path: Path) -> Path:
    """`model.save(path)` with the save time taken out of the archive; it loads as before."""
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / path.name
        model.save(saved)
        with zipfile.ZipFile(saved) as source, zipfile.ZipFile(path, "w") as target:
            for entry in source.infolist():
                data = source.read(entry)
                if entry.filename == "metadata.json":
                    metadata = json.loads(data)
                    metadata.pop(STAMPED, None)
                    data = json.dumps(metadata).encode()
                elif entry.filename == "config.json":
                    data = json.dumps(_renumbered(json.loads(data), {})).encode()
                fixed = zipfile.ZipInfo(entry.filename, date_time=EPOCH)
                fixed.compress_type, fixed.external_attr = entry.compress_type, entry.external_attr
                target.writestr(fixed, data)
    return path
