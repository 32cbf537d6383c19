"""The served pyfunc: training preprocessing, every face of a photo, row-level errors, and
`mlflow models serve`. The tiny model's inputs are noise images: the tests of mechanics answer
them with the parameter faces="crop" (the centre square is one face, whatever it shows)."""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import psutil
import pytest
from mlflow.exceptions import MlflowException
from mlflow.models.model import ModelInfo
from mlflow.pyfunc import PyFuncModel
from model_fixtures import (
    AGE_MAX,
    IMAGE_SIZE,
    INTERVAL,
    LINEAGE,
    MAX_IMAGE_BYTES,
    MAX_PIXELS,
    MODEL_NAME,
    image_bytes,
    invoke,
    log_tiny_serving_model,
    register_version,
    scratch_reference,
    start_logged,
    stopped_after,
    two_faces_jpeg,
    use_tmp_store,
    wait_until_up,
)
from tiny import free_port, synthetic_faces

from utkface import tensorflow_build
from utkface.cli import serve as serve_command
from utkface.data.imaging import load_image
from utkface.inference.answering import NO_FACE, encode_png
from utkface.inference.batching import BatchedModel
from utkface.inference.families import Outputs, to_answers
from utkface.inference.server import too_large_message
from utkface.mlops import registry
from utkface.params import Params

ANSWER = ["age", "age_low", "age_high", "gender", "p_female", "face_check"]  # an answer's columns
WHERE = ["row", "faces", "face", "box_x", "box_y", "box_w", "box_h"]  # which face it answers
CROP = {"faces": "crop"}
NOT_AN_IMAGE = base64.b64encode(b"hello, I am plain text").decode()
TOO_LARGE = rf"image of (about )?\d+ bytes exceeds the limit of {MAX_IMAGE_BYTES}"
VENV_BIN = Path(sys.executable).parent  # this venv's scripts: mlflow, utkface, uvicorn


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelInfo]:
    with pytest.MonkeyPatch.context() as patch:
        root = tmp_path_factory.mktemp("serving")
        use_tmp_store(patch, root)
        yield log_tiny_serving_model(root, varied=True)  # answers that differ by image


@pytest.fixture(scope="module")
def pyfunc(logged: ModelInfo) -> PyFuncModel:
    return mlflow.pyfunc.load_model(logged.model_uri)


def test_logged_with_signature_config_and_code(logged: ModelInfo) -> None:
    assert logged.signature.inputs.input_names() == ["image"]
    assert logged.signature.outputs.input_names() == [*WHERE, *ANSWER, "error"]
    local = Path(mlflow.artifacts.download_artifacts(logged.model_uri))
    code = local / "code"
    carried = sorted(p.relative_to(code).as_posix() for p in code.rglob("*.py"))
    assert carried == [
        "utkface/__init__.py",
        "utkface/console.py",
        "utkface/data/__init__.py",
        "utkface/data/imaging.py",
        "utkface/data/labels.py",
        "utkface/data/rejections.py",
        "utkface/inference/__init__.py",
        "utkface/inference/answering.py",
        "utkface/inference/faces.py",
        "utkface/inference/families.py",
        "utkface/inference/pyfunc.py",
        "utkface/model/__init__.py",
        "utkface/model/face_backbone.py",
        "utkface/scoring/__init__.py",
        "utkface/scoring/age_interval.py",
        "utkface/tensorflow_build.py",  # imported only when a scratch CNN loads
    ]
    requirements = (local / "requirements.txt").read_text().split()
    build = tensorflow_build.distribution()  # tensorflow-cpu here, tensorflow on a GPU install
    assert f"{build}=={metadata.version(build)}" in requirements  # the scratch CNN needs it
    backbone = sorted(p.name for p in (local / "artifacts" / "backbone").iterdir())
    assert backbone == ["manifest.json", "notices", "shape_predictor_5_face_landmarks.dat"]
    model = mlflow.models.Model.load(local)
    # models from code: loading runs the carried code, and the model holds no pickle at all
    assert model.flavors["python_function"]["model_code_path"].endswith("served_model.py")
    assert (local / Path(model.flavors["python_function"]["model_code_path"]).name).is_file()
    logged_files = [p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()]
    pickles = [f for f in logged_files if f.endswith((".pkl", ".pickle", ".cloudpickle"))]
    assert pickles == [], pickles
    assert model.flavors["python_function"]["config"] == {
        "image_size": IMAGE_SIZE,
        "max_image_bytes": MAX_IMAGE_BYTES,
        "max_pixels": MAX_PIXELS,
        "age_max": AGE_MAX,
        "age_interval": INTERVAL.to_config(),
        "face_size": IMAGE_SIZE,
        "family": "scratch",
        "trained_on": "real images",
        "threads": 0,  # one per core; there so that a loader may override it
    }
    assert model.metadata == LINEAGE


LOAD_AND_LIST_MODULES = """
import sys, mlflow
mlflow.pyfunc.load_model(sys.argv[1])
import utkface
print(utkface.__file__)
print(" ".join(sorted(name for name in sys.modules if name.startswith("utkface"))))
"""


@pytest.mark.slow
def test_the_model_loads_with_only_the_code_it_carries(logged: ModelInfo, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", LOAD_AND_LIST_MODULES, logged.model_uri],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    package, modules = done.stdout.splitlines()[-2:]
    assert package.endswith("/code/utkface/__init__.py")  # the model's copy, not the checkout
    assert modules.split() == [
        "utkface",
        "utkface.console",
        "utkface.data",
        "utkface.data.imaging",
        "utkface.data.labels",
        "utkface.data.rejections",
        "utkface.inference",
        "utkface.inference.answering",
        "utkface.inference.faces",
        "utkface.inference.families",
        "utkface.inference.pyfunc",
        "utkface.model",
        "utkface.model.face_backbone",
        "utkface.scoring",
        "utkface.scoring.age_interval",
        "utkface.tensorflow_build",
    ]


def reference(logged: ModelInfo, images: list[bytes]) -> pd.DataFrame:
    """The answers without the pyfunc: the logged Keras file run by Keras itself on the
    training preprocessing, and the documented post-processing by hand."""
    arrays = np.stack([load_image(i, IMAGE_SIZE, MAX_PIXELS) for i in images])
    return scratch_reference(logged.model_uri, arrays)


def assert_answers(result: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert result["gender"].tolist() == expected["gender"].tolist()
    for name in ("age", "age_low", "age_high", "p_female"):
        np.testing.assert_allclose(result[name], expected[name], rtol=1e-5, err_msg=name)


def test_predicts_like_keras_on_training_preprocessing(
    logged: ModelInfo, pyfunc: PyFuncModel
) -> None:
    images = [image_bytes(1, size=40), image_bytes(2, size=64, fmt="JPEG")]
    faces, _ = synthetic_faces(16)
    images += [encode_png(faces[i]) for i in (0, 3, 12)]  # cartoons: both genders, ages apart
    result = pyfunc.predict(pd.DataFrame({"image": [b64(i) for i in images]}), params=CROP)
    assert list(result.columns) == [*WHERE, *ANSWER]
    assert result["row"].tolist() == [0, 1, 2, 3, 4] and set(result["faces"]) == {1}
    assert result[["box_x", "box_y", "box_w"]].values.tolist()[:2] == [[0, 0, 40], [0, 0, 64]]
    expected = reference(logged, images)
    assert_answers(result, expected)
    assert set(expected["gender"]) == {"male", "female"}
    assert np.ptp(expected["age"]) > 5
    assert result["face_check"][:2].tolist() == ["implausible", "implausible"]  # noise, no face


def test_predictions_clamp_age() -> None:
    """`to_answers` on made-up outputs with known answers: clamped ages and intervals, and the
    gender of p(female) either side of 0.5."""
    outputs = Outputs(np.array([-3.0, 200.0, 40.0]), np.array([0.7, 0.2, 0.5]))
    frame = to_answers(outputs, age_max=100, interval=INTERVAL)
    assert frame["age"].tolist() == [1.0, 100.0, 40.0]
    assert frame["gender"].tolist() == ["female", "male", "male"]  # female above 0.5 only
    assert frame["age_low"].tolist() == [1.0, 96.0, 36.0]  # the interval is clamped too
    assert frame["age_high"].tolist() == [7.0, 100.0, 46.0]


@pytest.mark.parametrize(
    ("cell", "reason"),
    [
        (NOT_AN_IMAGE, r"not an image \(unrecognised format\)"),
        ("%%% not base64 %%%", "not valid base64"),
        (b64(image_bytes(3, size=200)), TOO_LARGE),
        (b64(image_bytes(4)[:200]), "corrupt or truncated image"),
    ],
    ids=["text", "not-base64", "too-large", "truncated"],
)
def test_bad_rows_are_rejected_by_row_and_reason(
    pyfunc: PyFuncModel, cell: str, reason: str
) -> None:
    frame = pd.DataFrame({"image": [b64(image_bytes(1)), cell]})
    with pytest.raises(MlflowException) as raised:
        pyfunc.predict(frame, params=CROP)
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE"
    assert raised.value.get_http_status_code() == 400
    assert re.search(f"row 1: {reason}", raised.value.message)
    assert "row 0" not in raised.value.message


def test_report_mode_predicts_the_good_rows(logged: ModelInfo, pyfunc: PyFuncModel) -> None:
    frame = pd.DataFrame({"image": [NOT_AN_IMAGE, b64(image_bytes(1)), NOT_AN_IMAGE]})
    result = pyfunc.predict(frame, params={"on_error": "report", **CROP})
    assert result["error"].tolist() == [
        "not an image (unrecognised format)",
        None,
        "not an image (unrecognised format)",
    ]
    assert result["age"].isna().tolist() == [True, False, True]
    answer = pd.DataFrame([result.loc[1, ANSWER[:5]].to_dict()])
    assert_answers(answer, reference(logged, [image_bytes(1)]))
    with pytest.raises(MlflowException, match="on_error must be one of"):
        pyfunc.predict(frame, params={"on_error": "ignore"})
    with pytest.raises(MlflowException, match="faces must be one of"):
        pyfunc.predict(frame, params={"faces": "all"})


def test_every_face_of_a_photo_and_an_error_where_there_is_none(
    logged: ModelInfo, pyfunc: PyFuncModel
) -> None:
    """By default a photo gives a row per face with its box, and says how many it found; an
    image without a face is an error naming its row, or with on_error="report" a row of its
    own with 0 faces."""
    frame = pd.DataFrame({"image": [b64(image_bytes(1)), b64(two_faces_jpeg())]})
    result = pyfunc.predict(frame, params={"on_error": "report"})
    assert result["row"].tolist() == [0, 1, 1]
    assert result["faces"].tolist() == [0, 2, 2]
    assert result["error"].tolist() == [NO_FACE, None, None]
    assert result["face"].tolist() == [None, 1, 2]
    # counts and boxes stay whole numbers beside an error row (JSON 2, not 2.0)
    assert {type(v) for name in ("faces", "box_x", "box_w") for v in result[name][1:]} == {int}
    assert result["box_x"][1] < 140 <= result["box_x"][2]  # left to right
    with pytest.raises(MlflowException, match=re.escape(f"row 0: {NO_FACE}")):
        pyfunc.predict(frame)


class HeldModel:
    """The tiny model, recording the rows of each call; the first call waits for `release`,
    so that requests sent meanwhile queue."""

    def __init__(self, model: PyFuncModel) -> None:
        self.model, self.metadata = model, model.metadata
        self.calls: list[int] = []
        self.release = threading.Event()

    def predict(self, data: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        self.calls.append(len(data))
        assert self.release.wait(30)
        return self.model.predict(data, params=params)


def _wait_for(condition: Callable[[], object], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert condition()


def _queued(
    frames: list[pd.DataFrame], pyfunc: PyFuncModel, params: dict[str, str] = CROP
) -> tuple[HeldModel, list]:
    """The answers (futures) of `frames` sent at once to a `BatchedModel` of the tiny model:
    the first alone, the others while it runs."""
    held = HeldModel(pyfunc)
    batched = BatchedModel(held)
    pool = ThreadPoolExecutor(len(frames))
    futures = [pool.submit(batched.predict, frames[0], params)]
    _wait_for(lambda: held.calls)
    futures += [pool.submit(batched.predict, frame, params) for frame in frames[1:]]
    _wait_for(lambda: len(batched.waiting) == len(frames) - 1)
    held.release.set()
    pool.shutdown(wait=True)
    return held, futures


def test_requests_that_wait_are_answered_in_one_call_each_as_alone(pyfunc: PyFuncModel) -> None:
    frames = [
        pd.DataFrame({"image": [b64(image_bytes(seed)) for seed in range(start, start + size)]})
        for start, size in ((1, 2), (3, 1), (4, 3), (7, 2))
    ]
    held, futures = _queued(frames, pyfunc)
    assert held.calls == [2, 6]  # the first alone, then the three that waited, together
    for frame, future in zip(frames, futures, strict=True):
        pd.testing.assert_frame_equal(future.result(), pyfunc.predict(frame, params=CROP))


def test_reported_errors_stay_in_their_own_request_when_answered_together(
    pyfunc: PyFuncModel,
) -> None:
    report = {**CROP, "on_error": "report"}
    frames = [
        pd.DataFrame({"image": [b64(image_bytes(seed)) for seed in range(start, start + size)]})
        for start, size in ((1, 2), (3, 1), (4, 3), (7, 2))
    ]
    frames[2].loc[1, "image"] = NOT_AN_IMAGE
    held, futures = _queued(frames, pyfunc, report)
    assert held.calls == [2, 6]  # reported, not refused: no request asked again
    for frame, future in zip(frames, futures, strict=True):
        answer = future.result()
        pd.testing.assert_frame_equal(answer, pyfunc.predict(frame, params=report))
        assert [type(row) for row in answer["row"]] == [int] * len(frame)  # JSON integers
    errors = futures[2].result()["error"].tolist()
    assert errors == [None, "not an image (unrecognised format)", None]


def test_a_refused_image_fails_only_its_own_request(pyfunc: PyFuncModel) -> None:
    frames = [pd.DataFrame({"image": [b64(image_bytes(seed))]}) for seed in (1, 2, 3)]
    frames.insert(2, pd.DataFrame({"image": [b64(image_bytes(4)), NOT_AN_IMAGE]}))
    held, futures = _queued(frames, pyfunc)
    assert held.calls == [1, 4, 1, 2, 1]  # the batch refused: asked again one by one
    with pytest.raises(MlflowException, match="row 1: not an image"):
        futures[2].result()
    for index in (0, 1, 3):
        expected = pyfunc.predict(frames[index], params=CROP)
        pd.testing.assert_frame_equal(futures[index].result(), expected)


# --- mlflow models serve -----------------------------------------------------------------------


@pytest.mark.slow
def test_mlflow_models_serve_the_champion(logged: ModelInfo, tmp_path: Path) -> None:
    register_version(logged, MODEL_NAME)
    registry.registry_client().set_registered_model_alias(MODEL_NAME, registry.CHAMPION, "1")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "serve.log"
    command = [str(VENV_BIN / "mlflow"), "models", "serve", "-m", registry.champion_uri(MODEL_NAME)]
    command += ["--env-manager", "local", "-p", str(port), "--host", "127.0.0.1"]
    # cwd not the repository root: its code comes with the model
    server = start_logged(command, tmp_path, venv_on_path(), log_path)
    with stopped_after(server, log_path):
        wait_until_up(server, url)
        ok = invoke(url, b64(image_bytes(1)), b64(image_bytes(2, fmt="JPEG")), faces="crop")
        assert ok.status_code == 200, ok.text
        predictions = pd.DataFrame(ok.json()["predictions"])
        assert_answers(predictions, reference(logged, [image_bytes(1), image_bytes(2, fmt="JPEG")]))

        for cell, reason in [
            (NOT_AN_IMAGE, "not an image"),
            (b64(image_bytes(3, size=200)), TOO_LARGE),
        ]:
            bad = invoke(url, b64(image_bytes(1)), cell, faces="crop")
            assert bad.status_code == 400, bad.text
            assert bad.json()["error_code"] == "INVALID_PARAMETER_VALUE"
            assert re.search(f"row 1: {reason}", bad.json()["message"])


def venv_on_path() -> dict[str, str]:
    """The environment with this venv's scripts first on PATH: the scoring server execs
    `uvicorn` from PATH."""
    return {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def port_is_free(port: int) -> bool:
    """Nothing listens on it (a closed connection's TIME_WAIT does not count; servers reuse
    the address)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def raw_post(port: int, headers: list[str], body: Iterator[bytes]) -> tuple[int, dict]:
    """POST /invocations with `headers`, the body sent from a thread (the server may stop
    reading it); the response's status and JSON."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        head = ["POST /invocations HTTP/1.1", "Host: 127.0.0.1", "Connection: close", *headers]
        head += ["", ""]
        sock.sendall("\r\n".join(head).encode())

        def send_body() -> None:
            with contextlib.suppress(OSError):  # the server answered and closed
                for chunk in body:
                    sock.sendall(chunk)

        sender = threading.Thread(target=send_body, daemon=True)
        sender.start()
        response = b""
        with contextlib.suppress(ConnectionResetError):  # closed with the body still coming
            while data := sock.recv(65536):
                response += data
    head, _, content = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(content)


def rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def test_utkface_serve_without_a_champion_says_how_to_get_one(
    logged: ModelInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    (tmp_path / "params.yaml").write_text("register:\n  model_name: never-registered\n")
    monkeypatch.chdir(tmp_path)
    parser = argparse.ArgumentParser()
    serve_command.add_arguments(parser)
    assert serve_command.run(parser.parse_args([])) == 1  # before any server starts
    err = capsys.readouterr().err
    assert "model 'never-registered' has no champion" in err and "utkface promote" in err


@pytest.mark.slow
def test_utkface_serve_loads_the_champions_files_in_place(
    logged: ModelInfo, tmp_path: Path
) -> None:
    """The champion's files loaded in place; a model whose loading starts threads (the CNN's
    TensorFlow) is served by uvicorn's own workers, each loading its own copy."""
    version = register_version(logged, MODEL_NAME)
    client = registry.registry_client()
    client.set_registered_model_alias(MODEL_NAME, registry.CHAMPION, version.version)
    (tmp_path / "params.yaml").write_text(f"register:\n  model_name: {MODEL_NAME}\n")
    port = free_port()
    log_path = tmp_path / "serve.log"
    command = [str(VENV_BIN / "utkface"), "serve", "--port", str(port), "--workers", "2"]
    server = start_logged(command, tmp_path, venv_on_path(), log_path)
    with stopped_after(server, log_path):
        url = f"http://127.0.0.1:{port}"
        wait_until_up(server, url)
        files = registry.version_files(client, version)
        champion = f"models:/{MODEL_NAME}@{registry.CHAMPION}"
        assert log_path.read_text().startswith(f"serve: {champion} ({files}) on {url}")
        ok = invoke(url, b64(image_bytes(1)), faces="crop")
        assert ok.status_code == 200 and len(ok.json()["predictions"]) == 1, ok.text
        # the CNN's TensorFlow starts threads as it loads: no fork, uvicorn's own workers
        assert "so each worker loads its own copy" in log_path.read_text()
        assert "uvicorn" in psutil.Process(server.pid).cmdline()


@pytest.mark.slow
def test_utkface_serve_refuses_large_requests_unread_and_stops_on_sigterm(
    logged: ModelInfo, tmp_path: Path
) -> None:
    """A 20 MB request gets 413 before its body is read; SIGTERM to the command (what a
    process manager, `timeout` or a container stop sends, not to its process group) stops the
    server and frees the port."""
    register_version(logged, MODEL_NAME)
    (tmp_path / "params.yaml").write_text("# the defaults: register.max_request_bytes 14 MB\n")
    limit = Params().register_.max_request_bytes
    port = free_port()
    command = [str(VENV_BIN / "utkface"), "serve", "--port", str(port), "--workers", "1"]
    command += ["--model", f"models:/{MODEL_NAME}@{registry.CHALLENGER}"]  # rss: its one worker
    server = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=venv_on_path(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(server, url)
        ok = invoke(url, b64(image_bytes(1)), faces="crop")
        assert ok.status_code == 200 and len(ok.json()["predictions"]) == 1, ok.text
        mapped = [Path(m.path).name for m in psutil.Process(server.pid).memory_maps()]
        assert not any(name.startswith("libarrow") for name in mapped)  # uvicorn's: arrowless
        size, chunk = 20_000_000, b"x" * 1_000_000
        before = rss(server.pid)
        declared = [f"Content-Length: {size}", "Content-Type: application/json"]
        status, error = raw_post(port, declared, iter([chunk] * (size // len(chunk))))
        assert status == 413, error
        assert error == {
            "error_code": "REQUEST_LIMIT_EXCEEDED",
            "message": too_large_message(size, limit),
        }
        assert rss(server.pid) - before < 5_000_000  # nothing of the body was kept
        chunked = ["Transfer-Encoding: chunked", "Content-Type: application/json"]
        pieces = (b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(size // len(chunk)))
        status, error = raw_post(port, chunked, pieces)
        assert status == 413 and error["message"] == too_large_message(None, limit), error
        frame = {"columns": ["image"], "data": [[b64(image_bytes(2))]]}
        small = json.dumps({"dataframe_split": frame, "params": CROP})
        status, answer = raw_post(
            port, chunked, iter([b"%x\r\n%s\r\n0\r\n\r\n" % (len(small), small.encode())])
        )
        assert status == 200 and len(answer["predictions"]) == 1, answer  # within the limit

        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        deadline = time.monotonic() + 10
        while not port_is_free(port) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert port_is_free(port), f"port {port} still held after SIGTERM to utkface serve"
    finally:
        with contextlib.suppress(ProcessLookupError):  # the whole group, whatever the outcome
            os.killpg(server.pid, signal.SIGKILL)
