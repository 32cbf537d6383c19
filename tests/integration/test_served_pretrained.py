"""The served model of the pretrained family: ONNX Runtime alone (no TensorFlow or Keras
imported by loading, predicting, `utkface predict` or `utkface serve`, and no MLflow by
`utkface predict` with its champion kept beside the store), the same answer for a photo
whatever EXIF orientation it was stored with, the age interval from the head's bins and the
face check."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import psutil
import pytest
import yaml
from mlflow.models.model import ModelInfo
from mlflow.pyfunc import PyFuncModel
from model_fixtures import (
    FACE_SIZE,
    astronaut_face,
    invoke,
    log_tiny_serving_model,
    register_version,
    save_tiny_head,
    start_logged,
    stopped_after,
    use_tmp_store,
    wait_until_up,
)
from PIL import Image
from raw_files import STORED, stored
from tiny import AGE_MAX, MAX_PIXELS, free_port

from utkface.data.imaging import load_image
from utkface.inference import client, local_model
from utkface.inference.mlflow_model import MlflowModel
from utkface.inference.pyfunc_logging import answered_examples
from utkface.mlops import registry
from utkface.model.face_backbone import FaceBackbone, package_files
from utkface.scoring.age_interval import AgeInterval

MAX_BYTES = 2_000_000
VENV_BIN = Path(sys.executable).parent  # this venv's scripts: utkface


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelInfo]:
    with pytest.MonkeyPatch.context() as patch:
        root = tmp_path_factory.mktemp("pretrained")
        use_tmp_store(patch, root)
        yield log_tiny_serving_model(root, member="pretrained", max_image_bytes=MAX_BYTES)


@pytest.fixture(scope="module")
def pyfunc(logged: ModelInfo) -> PyFuncModel:
    return mlflow.pyfunc.load_model(logged.model_uri)


def test_the_input_example_holds_the_first_images_the_model_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_tmp_store(monkeypatch, tmp_path)
    noise = np.random.default_rng(1).integers(0, 256, (FACE_SIZE, FACE_SIZE, 3), dtype=np.uint8)
    face = astronaut_face(FACE_SIZE)
    turned = np.asarray(Image.fromarray(face).rotate(8))
    candidates = [noise, face, noise, turned, face]
    info = log_tiny_serving_model(
        tmp_path, member="pretrained", max_image_bytes=MAX_BYTES, examples=candidates
    )
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri))
    example = mlflow.models.Model.load(local).load_input_example(local)
    pixels = [np.asarray(Image.open(io.BytesIO(base64.b64decode(i)))) for i in example["image"]]
    assert len(pixels) == 2  # the noise skipped: the model finds no face in it
    np.testing.assert_array_equal(pixels[0], face)
    np.testing.assert_array_equal(pixels[1], turned)
    answerer = local_model.load(local, local_model.pyfunc_flavor(local)).answerer
    assert answered_examples(answerer, ["a", b64(png(noise)), "c"]) == ["a", b64(png(noise))]


def test_the_logged_model_needs_no_tensorflow(logged: ModelInfo) -> None:
    local = Path(mlflow.artifacts.download_artifacts(logged.model_uri))
    requirements = {
        line.split("==")[0] for line in (local / "requirements.txt").read_text().split()
    }
    assert requirements == {
        *("mlflow", "pillow", "numpy", "pandas"),
        *("onnxruntime", "dlib-bin", "opencv-python-headless"),
    }
    artifacts = sorted(p.name for p in (local / "artifacts").iterdir())
    assert artifacts == ["backbone", "pretrained.onnx"]  # no Keras file


LOADED_FRAMEWORKS = """
import json, sys
{body}
names = {{m.split(".")[0] for m in sys.modules}}
frameworks = sorted(names & {watched!r})
print("frameworks:", json.dumps(frameworks))
"""
DEEP_LEARNING = {"tensorflow", "keras", "tf_keras"}


def _frameworks_after(
    body: str, cwd: Path, watched: set[str] = DEEP_LEARNING
) -> tuple[list[str], str]:
    """Which of the `watched` top-level packages a fresh Python has imported after `body`, and
    what it printed."""
    done = subprocess.run(
        [sys.executable, "-c", LOADED_FRAMEWORKS.format(body=body, watched=watched)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    line = next(x for x in done.stdout.splitlines() if x.startswith("frameworks:"))
    return json.loads(line.removeprefix("frameworks:")), done.stdout


@pytest.mark.slow
def test_predict_loads_and_answers_without_tensorflow(logged: ModelInfo, tmp_path: Path) -> None:
    photo = tmp_path / "face.png"
    photo.write_bytes(png(astronaut_face(FACE_SIZE)))
    body = f"""
from utkface.cli.main import main
try:
    main(["predict", "--json", "--model", {logged.model_uri!r}, {str(photo)!r}])
except SystemExit as done:
    print("exit:", done.code)
"""
    loaded, out = _frameworks_after(body, tmp_path)
    assert loaded == []
    (answer,) = json.loads(out[out.index("[") : out.index("exit:")])
    assert answer["error"] is None and answer["face_check"] == "ok"
    assert answer["age_low"] < answer["age"] < answer["age_high"]
    assert "exit: 0" in out


@pytest.mark.slow
def test_predict_with_the_champion_kept_beside_the_store_never_imports_mlflow(
    logged: ModelInfo, tmp_path: Path
) -> None:
    name = "champion-without-mlflow"
    version = register_version(logged, name)
    registry.registry_client().set_registered_model_alias(name, registry.CHAMPION, version.version)
    assert registry.champion_files(name) is not None  # asks the store, and keeps the answer
    photo = tmp_path / "face.png"
    photo.write_bytes(png(astronaut_face(FACE_SIZE)))
    body = f"""
from utkface.cli.main import main
try:
    main(["predict", "--json", "--model-name", {name!r}, {str(photo)!r}])
except SystemExit as done:
    print("exit:", done.code)
"""
    loaded, out = _frameworks_after(body, Path.cwd(), {"mlflow", *DEEP_LEARNING})
    assert loaded == []
    (answer,) = json.loads(out[out.index("[") : out.index("exit:")])
    (expected,) = (
        mlflow.pyfunc.load_model(logged.model_uri)
        .predict(pd.DataFrame({"image": [b64(photo.read_bytes())]}), params={"on_error": "report"})
        .to_dict("records")
    )
    assert answer["age"] == pytest.approx(expected["age"], rel=1e-6)
    assert answer["p_female"] == pytest.approx(expected["p_female"], rel=1e-6)
    assert answer["face_check"] == expected["face_check"] == "ok"
    assert "exit: 0" in out


@pytest.mark.slow
def test_serve_loads_the_model_without_tensorflow(logged: ModelInfo, tmp_path: Path) -> None:
    body = f"""
import os
os.environ["UTKFACE_SERVE_MODEL"] = {logged.model_uri!r}
os.environ["UTKFACE_SERVE_MAX_REQUEST_BYTES"] = "1000000"
from utkface.inference import server
server.create_app()
"""
    assert _frameworks_after(body, tmp_path)[0] == []


@pytest.mark.slow
def test_the_app_predicts_without_tensorflow(logged: ModelInfo, tmp_path: Path) -> None:
    body = f"""
from skimage import data
from utkface.app import logic
from utkface.inference.answering import encode_png
model, limits = logic.load_model({logged.model_uri!r})
(face,) = logic.predict_faces(model, encode_png(data.astronaut()))
print("label:", logic.label(face))
"""
    loaded, out = _frameworks_after(body, tmp_path)
    assert loaded == []
    assert re.search(r"label: age ≈ \d+ \(\d+-\d+\), (fe)?male p=0\.\d\d$", out, re.M), out


def test_a_loader_sets_the_onnx_runtime_threads_of_every_graph(
    logged: ModelInfo, tmp_path: Path
) -> None:
    local = Path(mlflow.artifacts.download_artifacts(logged.model_uri, dst_path=str(tmp_path)))
    for uri, kind in ((str(local), local_model.LocalModel), (logged.model_uri, MlflowModel)):
        for threads in (1, 0):  # 0: the model's own setting, one per core
            model = client.load_model(uri, None, threads)
            assert isinstance(model, kind)
            answerer = (
                model.answerer
                if isinstance(model, local_model.LocalModel)
                else model.pyfunc.unwrap_python_model().answerer
            )
            sessions = [*answerer.backbone.sessions.values(), answerer.model.session]
            assert {s.get_session_options().intra_op_num_threads for s in sessions} == {threads}
    # a model logged without the entry keeps its own setting, as MLflow keeps it
    description = yaml.safe_load((local / "MLmodel").read_text())
    del description["flavors"]["python_function"]["config"]["threads"]
    (local / "MLmodel").write_text(yaml.safe_dump(description))
    answerer = client.load_model(str(local), None, 1).answerer
    assert answerer.backbone.sessions["age"].get_session_options().intra_op_num_threads == 0


@pytest.mark.slow
def test_predict_in_two_processes_answers_as_one_does(logged: ModelInfo, tmp_path: Path) -> None:
    local = Path(mlflow.artifacts.download_artifacts(logged.model_uri, dst_path=str(tmp_path)))
    faces = tmp_path / "faces"
    faces.mkdir()
    count = 2 * client.BATCH + 2  # three chunks of files
    for i in range(count):
        turned = Image.fromarray(astronaut_face(FACE_SIZE)).rotate(i % 15 - 7)
        (faces / f"{i:03d}.png").write_bytes(png(np.asarray(turned)))
    answers, logs = {}, {}
    for jobs in (1, 2):
        body = f"""
from utkface.cli.main import main
main(["predict", "--json", "--jobs", "{jobs}", "--model", {str(local)!r}, {str(faces)!r}])
"""
        done = subprocess.run(
            [sys.executable, "-c", body], capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        answers[jobs], logs[jobs] = json.loads(done.stdout), done.stderr
    assert logs[1].endswith(f"{count} predicted, 0 failed\n")
    assert logs[2].endswith(f"{count} predicted, 0 failed, in 2 processes\n")
    assert "stopped early" not in logs[2]  # the helper answered what it claimed
    assert [a["path"] for a in answers[2]] == [a["path"] for a in answers[1]]
    for key in ("age", "age_low", "age_high", "p_female"):
        assert [a[key] for a in answers[2]] == pytest.approx([a[key] for a in answers[1]])
    assert len({a["age"] for a in answers[1]}) > 10  # the turned faces are answered apart


@pytest.mark.slow
def test_serve_forks_its_workers_from_the_loaded_model(
    logged: ModelInfo, pyfunc: PyFuncModel, tmp_path: Path
) -> None:
    """`utkface serve --workers 2`: the command loads the model and stays as the supervisor of
    two workers forked from it (not uvicorn's spawned workers), which answer as the model does;
    SIGTERM to the command stops them all and frees the port."""
    local = Path(mlflow.artifacts.download_artifacts(logged.model_uri, dst_path=str(tmp_path)))
    (tmp_path / "params.yaml").write_text("# the defaults\n")
    port, log_path = free_port(), tmp_path / "serve.log"
    command = [str(VENV_BIN / "utkface"), "serve", "--workers", "2", "--port", str(port)]
    server = start_logged([*command, "--model", str(local)], tmp_path, dict(os.environ), log_path)
    with stopped_after(server, log_path):
        url = f"http://127.0.0.1:{port}"
        wait_until_up(server, url)
        supervisor = psutil.Process(server.pid)
        assert supervisor.cmdline()[1:3] == [str(VENV_BIN / "utkface"), "serve"]  # no exec
        workers = supervisor.children()
        assert len(workers) == 2 and all(w.cmdline() == supervisor.cmdline() for w in workers)
        face = Image.fromarray(astronaut_face(FACE_SIZE))
        faces = [png(np.asarray(face.rotate(turn))) for turn in (-6, 0, 6)]
        expected = pyfunc.predict(pd.DataFrame({"image": [b64(f) for f in faces]}))
        with ThreadPoolExecutor(4) as pool:  # concurrent requests, new connections each
            answers = list(pool.map(lambda i: invoke(url, b64(faces[i % 3])), range(12)))
        for i, answer in enumerate(answers):
            assert answer.status_code == 200, answer.text
            (row,) = answer.json()["predictions"]
            assert row["age"] == pytest.approx(expected["age"][i % 3], abs=1e-4)
        assert len(set(expected["age"])) == 3  # the turned faces are answered apart
        mapped = {Path(m.path).name for p in (supervisor, *workers) for m in p.memory_maps()}
        assert not any(name.startswith("libarrow") for name in mapped)  # arrowless
        assert any(name.startswith("onnxruntime") for name in mapped)

        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
        assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
        with socket.create_server(("127.0.0.1", port)):  # the port is free again
            pass


def test_every_exif_orientation_gets_the_answer_of_the_upright_photo(
    pyfunc: PyFuncModel,
) -> None:
    upright = Image.fromarray(astronaut_face(FACE_SIZE))
    cells = [b64(stored(upright, orientation)) for orientation in STORED]
    answers = pyfunc.predict(pd.DataFrame({"image": cells})).drop(columns="row")
    assert answers["box_w"].tolist() == [FACE_SIZE] * len(STORED)  # each a tight crop
    expected = answers.iloc[[0] * len(STORED)].reset_index(drop=True)  # orientation 1
    pd.testing.assert_frame_equal(answers, expected)
    turned = pd.DataFrame({"image": [b64(png(np.rot90(astronaut_face(FACE_SIZE))))]})
    sideways = pyfunc.predict(turned, params={"faces": "crop"})
    assert sideways.loc[0, "face_check"] == "implausible"  # turned without a tag: not upright


def test_the_interval_comes_from_the_heads_bins(
    logged: ModelInfo, pyfunc: PyFuncModel, tmp_path: Path
) -> None:
    photos = [
        astronaut_face(FACE_SIZE),
        np.asarray(Image.fromarray(astronaut_face(FACE_SIZE)).rotate(8)),
    ]
    answers = pyfunc.predict(pd.DataFrame({"image": [b64(png(p)) for p in photos]}))
    # the reference, without the pyfunc: the backbone's features into the Keras head (the same
    # seeded head as the fixture's, with its bins output), then the interval of the config
    local = Path(mlflow.artifacts.download_artifacts(logged.model_uri))
    config = mlflow.models.Model.load(local).flavors["python_function"]["config"]
    interval = AgeInterval.from_config(config["age_interval"])
    assert interval.kind == "bins"
    prepared = [load_image(png(p), FACE_SIZE, MAX_PIXELS) for p in photos]
    backbone = FaceBackbone(package_files())
    features = backbone.chip_features(backbone.aligned(prepared)[0])
    outputs = save_tiny_head(tmp_path).predict(features, verbose=0)
    age = np.clip(outputs["age"].ravel(), 1, AGE_MAX)
    low, high = interval.bounds(age, AGE_MAX, outputs["age_bins"])
    np.testing.assert_allclose(answers["age"], age, rtol=1e-5)
    np.testing.assert_allclose(answers["age_low"], low, rtol=1e-4)
    np.testing.assert_allclose(answers["age_high"], high, rtol=1e-4)
    assert (answers["age_high"] - answers["age_low"] > 2).all()  # a margin of 1 on each side


def test_a_face_passes_the_face_check_and_noise_does_not(pyfunc: PyFuncModel) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (FACE_SIZE, FACE_SIZE, 3), dtype=np.uint8)
    flat = np.full((FACE_SIZE, FACE_SIZE, 3), 128, dtype=np.uint8)
    cells = [b64(png(p)) for p in (astronaut_face(FACE_SIZE), noise, flat)]
    answers = pyfunc.predict(pd.DataFrame({"image": cells}), params={"faces": "crop"})
    assert answers["face_check"].tolist() == ["ok", "implausible", "implausible"]
    assert answers["age"].notna().all()  # answered all the same: faces=crop answers anything
    found = pyfunc.predict(pd.DataFrame({"image": cells}), params={"on_error": "report"})
    assert found["faces"].tolist() == [1, 0, 0]  # by default: no face, no answer
