"""Helpers for the registry, promote, predict and serving tests: a throwaway MLflow store, a
tiny real Keras CNN or head, generated images and registered versions of the served model."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import keras
import mlflow
import mlflow.tracking._tracking_service.utils as mlflow_tracking_utils
import numpy as np
import pandas as pd
import pytest
import requests
import yaml
from mlflow.entities.model_registry import ModelVersion
from mlflow.models.model import ModelInfo
from PIL import Image
from skimage import data
from tiny import AGE_MAX, MAX_PIXELS, new_store, synthetic_faces

from utkface import paths
from utkface.data.labels import AGE, GENDER
from utkface.data.synthetic import draw_face
from utkface.inference.answering import ServingConfig
from utkface.inference.faces import Box, crop_box, detect_faces
from utkface.inference.pyfunc_logging import log_serving_model
from utkface.mlops import promotion, registry, tracking
from utkface.model.head import build_head, serving_head
from utkface.model.head_export import save_head_onnx
from utkface.model.network import build_model
from utkface.params import HeadParams, ModelParams
from utkface.scoring.age_interval import AgeInterval

IMAGE_SIZE = 32
FACE_SIZE = 200  # features.image_size: the pretrained family's input, and the face check's
# the backbone's features: age net pooled 256 + 3x3x256 map + 81 bins; gender net 64x8x8 + 16 + 2
FEATURE_SIZE = 256 + 2304 + 81 + 4096 + 16 + 2
INTERVAL = AgeInterval("residuals", below=(-4.0,) * 6, above=(6.0,) * 6)  # tiny models' interval
MAX_IMAGE_BYTES = 20_000  # small, so that a 200x200 noise PNG is "too large"
GATE = {"max_age_mae_increase": 0.1, "max_gender_accuracy_decrease": 0.005}
MODEL_NAME = "test-age-gender"
LINEAGE = {
    "git_commit": "abc123",
    "git_changes": "none",
    "dvc_exp_name": "test",
    "data_version": "data-v1",
}
CARD = registry.ModelCardFacts(family="scratch", trained_on="real images", training_images=10)


def use_tmp_store(monkeypatch: pytest.MonkeyPatch, root: Path) -> str:
    """MLflow store, artifacts and a minimal params.yaml under `root`, which becomes the cwd."""
    uri = new_store(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # a URI set in the process (`mlflow.set_tracking_uri`, which `utkface predict` calls) wins
    # over the environment's: cleared here and put back with the rest, so that no test's store
    # outlives it
    monkeypatch.setattr(mlflow_tracking_utils, "_tracking_uri", None)
    monkeypatch.chdir(root)
    (root / "params.yaml").write_text(
        yaml.safe_dump({"promote": GATE, "register": {"model_name": MODEL_NAME}})
    )
    # use_experiment creates the experiment (artifacts beside the db) but only selects an
    # existing one, so select it here too: otherwise runs land in "Default" (./mlruns).
    mlflow.set_experiment(experiment_id=tracking.use_experiment("tests"))
    return uri


def image_bytes(seed: int, size: int = 48, fmt: str = "PNG") -> bytes:
    """A noise image (no faces needed: the tests check plumbing, not accuracy)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def save_tiny_model(path: Path) -> Path:
    model = build_model(
        ModelParams(filters=[4], convs_per_block=1, dense_units=4), IMAGE_SIZE, seed=0
    )
    model.save(path)
    return path


def save_varied_tiny_model(path: Path) -> Path:
    """The tiny CNN with its dense layers set so that its answers differ from image to image
    (a freshly initialised one answers about 30 years and p(female) 0.5 for every image, so a
    test could not tell one image's answer from another's): its pooled features, standardised
    on noise and synthetic faces, give ages of about 10 to 70 and both genders."""
    keras.utils.set_random_seed(0)  # the convolutions' initial weights: whatever ran before
    model = build_model(
        ModelParams(filters=[4], convs_per_block=1, dense_units=4), IMAGE_SIZE, seed=0
    )
    (hidden,) = [
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.Dense) and layer.name not in (AGE, GENDER)
    ]
    faces, _ = synthetic_faces(16, IMAGE_SIZE)
    noise = np.random.default_rng(1).integers(0, 256, (16, *faces.shape[1:]), dtype=np.uint8)
    pooled = keras.Model(model.input, hidden.input).predict(
        np.concatenate([faces, noise]), verbose=0
    )
    mean, std = pooled.mean(axis=0), pooled.std(axis=0) + 1e-6
    shift = 3.0  # standardised features plus 3: the ReLU passes nearly all of them
    hidden.set_weights([np.diag(1 / std).astype("float32"), (shift - mean / std).astype("float32")])
    for name, kernel, centre in (
        (AGE, [8.0, -6.0, 5.0, 4.0], 40.0),
        (GENDER, [2.0, 2.0, -2.0, 1.5], 0.0),
    ):
        weights = np.asarray(kernel, dtype="float32")[:, None]
        bias = np.asarray([centre - shift * weights.sum()], dtype="float32")
        model.get_layer(name).set_weights([weights, bias])
    model.save(path)
    return path


def scratch_reference(model_uri: str, images: np.ndarray) -> pd.DataFrame:
    """The answers of a logged tiny scratch model for preprocessed uint8 (n, S, S, 3) `images`,
    computed without the served pyfunc: its Keras file run by Keras, then the served model's
    documented post-processing done here by hand (the age clamped to [1, AGE_MAX], "female"
    where p(female) > 0.5, the `INTERVAL` of 4 years below and 6 above, clamped likewise)."""
    local = Path(mlflow.artifacts.download_artifacts(model_uri))
    model = keras.saving.load_model(local / "artifacts" / "scratch.keras", compile=False)
    outputs = model.predict(np.asarray(images, dtype="float32"), verbose=0)
    age = np.clip(outputs[AGE].ravel().astype(float), 1, AGE_MAX)
    p_female = outputs[GENDER].ravel().astype(float)
    return pd.DataFrame(
        {
            "age": age,
            "age_low": np.clip(age - 4, 1, AGE_MAX),
            "age_high": np.clip(age + 6, 1, AGE_MAX),
            "gender": np.where(p_female > 0.5, "female", "male").astype(object),
            "p_female": p_female,
        }
    )


def save_tiny_head(folder: Path) -> keras.Model:
    """A small pretrained-family head on random features of the backbone's size, its weights
    drawn at random so that its outputs vary with the face; saved as train saves it (Keras and
    ONNX). Returns the head with its `age_bins` output."""
    rng = np.random.default_rng(0)
    features = rng.normal(0, 1, (64, FEATURE_SIZE)).astype("float32")
    ages = rng.integers(1, 90, 64).astype("float32")
    head = build_head(HeadParams(units=8, age_bins=6), features, ages, seed=0)
    for layer in head.layers:
        if isinstance(layer, keras.layers.Dense) and layer.name != "age":  # age: the centres
            weights = layer.get_weights()
            layer.set_weights([rng.normal(0, 0.05, w.shape).astype("float32") for w in weights])
    serving_head(head).save(paths.member_model("pretrained", folder))
    save_head_onnx(head, paths.served_file("pretrained", folder))
    return head


def log_tiny_serving_model(
    root: Path,
    trained_on: str = "real images",
    member: str = "scratch",
    max_image_bytes: int = MAX_IMAGE_BYTES,
    varied: bool = False,
    examples: Sequence[np.ndarray] | None = None,
) -> ModelInfo:
    """The tiny CNN (or, for `member` "pretrained", a tiny head) saved under `root`, logged as
    the served pyfunc in a new run; with `varied`, the CNN of `save_varied_tiny_model`;
    `examples`: the candidates for its input example (default: two of noise)."""
    folder = root / "model"
    folder.mkdir(parents=True, exist_ok=True)
    interval = INTERVAL
    if member == "pretrained":
        centres = save_tiny_head(folder).get_layer("age").get_weights()[0][:, 0]
        interval = AgeInterval("bins", centres=tuple(map(float, centres)), margins=(1.0,) * 6)
    else:
        save = save_varied_tiny_model if varied else save_tiny_model
        save(paths.member_model("scratch", folder))
    if examples is None:
        examples = np.random.default_rng(0).integers(
            0, 256, (2, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8
        )  # small: noise PNGs of FACE_SIZE are over MAX_IMAGE_BYTES
    config = ServingConfig(
        FACE_SIZE if member == "pretrained" else IMAGE_SIZE,
        max_image_bytes,
        MAX_PIXELS,
        AGE_MAX,
        age_interval=interval.to_config(),
        face_size=FACE_SIZE if member == "pretrained" else IMAGE_SIZE,
        family=member,
        trained_on=trained_on,
    )
    with mlflow.start_run():
        return log_serving_model(folder, config, examples, lineage=LINEAGE)


def register_version(
    info: ModelInfo,
    name: str = MODEL_NAME,
    age_mae: float = 8.0,
    gender_accuracy: float = 0.8,
    data_version: str = "data-v1",
    experiment: str = "test",
    baseline_age_mae: float = 20.0,
    validation: tuple[float, float] | None = None,
) -> ModelVersion:
    """A new `challenger` version of `name` with the given test metrics, the median baseline's
    age MAE and, when given, the validation age MAE and gender accuracy."""
    metrics = {
        registry.AGE_MAE: age_mae,
        registry.GENDER_ACCURACY: gender_accuracy,
        promotion.BASELINE_AGE_MAE: baseline_age_mae,
    }
    if validation is not None:
        names = (promotion.VAL_AGE_MAE, promotion.VAL_GENDER_ACCURACY)
        metrics |= dict(zip(names, validation, strict=True))
    return registry.register(
        run_id=info.run_id,
        model_uri=info.model_uri,
        model_name=name,
        metrics=metrics,
        lineage=LINEAGE | {"data_version": data_version, "dvc_exp_name": experiment},
        card=CARD,
    )


def wait_until_up(server: subprocess.Popen, url: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"mlflow models serve exited with {server.returncode}")
        try:
            if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"mlflow models serve did not answer /ping within {timeout}s")


def invoke(url: str, *cells: str, faces: str | None = None) -> requests.Response:
    """POST /invocations of base64 image `cells`, with the served model's `faces` mode."""
    body: dict = {"dataframe_split": {"columns": ["image"], "data": [[c] for c in cells]}}
    if faces is not None:
        body["params"] = {"faces": faces}
    return requests.post(f"{url}/invocations", json=body, timeout=30)


def start_logged(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    """`command` started in its own session (for `stopped_after`), its output in `log`."""
    with log.open("w") as out:
        return subprocess.Popen(
            command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


@contextlib.contextmanager
def stopped_after(server: subprocess.Popen, log: Path) -> Iterator[None]:
    """The body runs with `server` up (started with `start_new_session`); a failed assertion
    prints the end of its `log`, and its process group is stopped afterwards."""
    try:
        yield
    except AssertionError:
        print(log.read_text()[-5000:])
        raise
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)


def astronaut_face(size: int) -> np.ndarray:
    """The face in scikit-image's public-domain NASA portrait, cropped as the served model crops
    a face it finds in a photo, resized to `size` px: a real face for tests."""
    photo = data.astronaut()
    (box,) = detect_faces(photo)
    return np.asarray(Image.fromarray(face_crop(photo, box)).resize((size, size)))


def face_crop(image: np.ndarray, box: Box) -> np.ndarray:
    """The square UTKFace-style crop (`faces.crop_box`) of a detected box, as the served model
    cuts a face it finds in a photo."""
    left, top, side, _ = crop_box(box, image.shape[1], image.shape[0])
    return image[top : top + side, left : left + side]


def two_faces_jpeg() -> bytes:
    """Two 120 px synthetic faces side by side, 20 px apart: small enough for the tiny model's
    byte limit."""
    gap = np.full((120, 20, 3), 235, dtype=np.uint8)
    left = np.asarray(draw_face(34, 1, 0, np.random.default_rng(3), size=120))
    right = np.asarray(draw_face(27, 0, 0, np.random.default_rng(1), size=120))
    buffer = io.BytesIO()
    Image.fromarray(np.hstack([gap, left, gap, right, gap])).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()
