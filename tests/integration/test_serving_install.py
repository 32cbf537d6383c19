"""The serving install: a fresh virtual environment with only `pip install -e ".[serve]"` (no
TensorFlow, no Keras, no DVC) predicts and serves a registered model of the pretrained family
with `utkface predict`, `utkface serve` and `mlflow models serve --env-manager local`.

It installs from the package index (pip's cache makes a second run quick), so it is slow."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
from model_fixtures import (
    FACE_SIZE,
    face_crop,
    invoke,
    log_tiny_serving_model,
    start_logged,
    stopped_after,
    use_tmp_store,
    wait_until_up,
)
from PIL import Image
from skimage import data
from tiny import REPO, free_port

from utkface.inference import faces

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def serve_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the project installed with its `serve` extra."""
    venv = tmp_path_factory.mktemp("serve-venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "-e", f"{REPO}[serve]"],
        check=True,
        timeout=900,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    return venv


def _downloaded(tmp_path_factory: pytest.TempPathFactory, member: str) -> Iterator[Path]:
    """A tiny model of `member`'s family, logged here and downloaded as a plain folder."""
    with pytest.MonkeyPatch.context() as patch:
        root = tmp_path_factory.mktemp(f"install-{member}")
        use_tmp_store(patch, root)
        info = log_tiny_serving_model(root, member=member, max_image_bytes=2_000_000)
        yield Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(root / "m")))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield from _downloaded(tmp_path_factory, "pretrained")


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The face in scikit-image's public-domain NASA portrait, as a JPEG crop."""
    image = data.astronaut()
    (box,) = faces.detect_faces(image)
    crop = face_crop(image, box)
    path = tmp_path_factory.mktemp("photo") / "face.jpg"
    Image.fromarray(crop).resize((FACE_SIZE, FACE_SIZE)).save(path, quality=90)
    return path


def _env(venv: Path, home: Path) -> dict[str, str]:
    """The serving venv first on PATH, a throwaway store and the defaults of params.yaml in
    `home`, the working directory."""
    (home / "params.yaml").write_text("{}\n")
    return {
        **os.environ,
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow.db",
    }


def test_the_install_has_no_tensorflow_keras_or_dvc(serve_venv: Path) -> None:
    done = subprocess.run(
        [
            str(serve_venv / "bin" / "python"),
            "-c",
            "import importlib.util as u; "
            "print([m for m in ('tensorflow', 'keras', 'dvc') if u.find_spec(m)])",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "[]"


def test_utkface_predict_answers_with_the_interval_and_face_check(
    serve_venv: Path, model_dir: Path, photo: Path, tmp_path: Path
) -> None:
    done = subprocess.run(
        [
            str(serve_venv / "bin" / "utkface"),
            "predict",
            "--json",
            "--model",
            str(model_dir),
            str(photo),
        ],
        cwd=tmp_path,
        env=_env(serve_venv, tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (answer,) = json.loads(done.stdout)
    assert answer["error"] is None and answer["face_check"] == "ok"
    assert answer["age_low"] < answer["age"] < answer["age_high"]


def test_a_scratch_cnn_names_the_install_it_needs(
    serve_venv: Path, tmp_path_factory: pytest.TempPathFactory, photo: Path, tmp_path: Path
) -> None:
    (scratch,) = _downloaded(tmp_path_factory, "scratch")
    command = ["predict", "--model", str(scratch), str(photo)]
    done = subprocess.run(
        [str(serve_venv / "bin" / "utkface"), *command],
        cwd=tmp_path,
        env=_env(serve_venv, tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    last = done.stderr.splitlines()[-1]  # after MLflow's warning on the missing requirements
    assert last.startswith("predict: cannot load model "), done.stderr
    assert 'needs TensorFlow, from an extra: pip install -e ".[cpu]"' in last


@pytest.mark.parametrize("server", ["utkface serve", "mlflow models serve"])
def test_the_model_is_served_over_rest(
    serve_venv: Path, model_dir: Path, photo: Path, tmp_path: Path, server: str
) -> None:
    port = free_port()
    command = {
        "utkface serve": ["utkface", "serve", "--model", str(model_dir), "--port", str(port)],
        "mlflow models serve": [
            *("mlflow", "models", "serve", "-m", str(model_dir), "--env-manager", "local"),
            *("-p", str(port), "--host", "127.0.0.1"),
        ],
    }[server]
    log = tmp_path / "serve.log"
    executable = [str(serve_venv / "bin" / command[0]), *command[1:]]
    process = start_logged(executable, tmp_path, _env(serve_venv, tmp_path), log)
    with stopped_after(process, log):
        url = f"http://127.0.0.1:{port}"
        wait_until_up(process, url)
        response = invoke(url, base64.b64encode(photo.read_bytes()).decode())
        assert response.status_code == 200, response.text
        (answer,) = response.json()["predictions"]
        assert answer["face_check"] == "ok"
        assert np.isfinite([answer["age"], answer["age_low"], answer["age_high"]]).all()
