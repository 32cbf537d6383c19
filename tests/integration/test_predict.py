"""`utkface predict`: files and folders through the served pyfunc, every face of a photo,
per-file errors, URIs. The tiny model's inputs are noise images: the tests of mechanics answer
them with `--faces crop` (the centre square is one face, whatever it shows)."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.models.model import ModelInfo
from model_fixtures import (
    FACE_SIZE,
    IMAGE_SIZE,
    MODEL_NAME,
    astronaut_face,
    image_bytes,
    log_tiny_serving_model,
    register_version,
    scratch_reference,
    two_faces_jpeg,
    use_tmp_store,
)
from PIL import Image
from tiny import MAX_PIXELS

from utkface.cli import predict as predict_command
from utkface.cli import promote as promote_command
from utkface.data.imaging import load_image, prepare_image
from utkface.inference import client, local_model, mlflow_model
from utkface.inference.answering import (
    NO_FACE,
    SYNTHETIC_TRAINING,
    SYNTHETIC_WARNING,
    encode_png,
    to_base64,
)
from utkface.mlops import registry

COLUMNS = ["path", "face", "box", "age", "interval", "gender", "p_female", "face_check", "error"]
CROP = ("--faces", "crop")


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelInfo]:
    with pytest.MonkeyPatch.context() as patch:
        root = tmp_path_factory.mktemp("predict")
        use_tmp_store(patch, root)
        yield log_tiny_serving_model(root, varied=True)  # answers that differ by image


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Two good images (one nested) and a text file posing as a JPEG."""
    (tmp_path / "faces" / "nested").mkdir(parents=True)
    (tmp_path / "faces" / "a.png").write_bytes(image_bytes(1))
    (tmp_path / "faces" / "nested" / "b.JPG").write_bytes(image_bytes(2, fmt="JPEG"))
    (tmp_path / "faces" / "broken.jpg").write_text("this is not an image\n")
    (tmp_path / "faces" / "notes.txt").write_text("ignored: not an image suffix\n")
    return tmp_path / "faces"


def run(*argv: object) -> int:
    parser = argparse.ArgumentParser()
    predict_command.add_arguments(parser)
    return predict_command.run(parser.parse_args([str(a) for a in argv]))


def by_name(entries: list[dict]) -> dict[str, dict]:
    return {Path(e["path"]).name: e for e in entries}


def reference(logged: ModelInfo, *files: Path) -> list[dict]:
    """The answers for whole image files, computed without the served model."""
    images = np.stack([load_image(f.read_bytes(), IMAGE_SIZE, MAX_PIXELS) for f in files])
    return scratch_reference(logged.model_uri, images).to_dict("records")


def assert_answers(entries: list[dict], expected: list[dict]) -> None:
    assert [e["gender"] for e in entries] == [x["gender"] for x in expected]
    for name in ("age", "age_low", "age_high", "p_female"):
        actual = [e[name] for e in entries]
        assert actual == pytest.approx([x[name] for x in expected], rel=1e-5), name


def test_find_images_recurses_and_reports_missing(folder: Path) -> None:
    files, missing = client.find_images([folder, folder / "notes.txt", folder / "nope.png"])
    assert [f.name for f in files] == ["a.png", "broken.jpg", "b.JPG", "notes.txt"]
    assert [(Path(m.path).name, m.error) for m in missing] == [
        ("nope.png", "no such file or folder")
    ]


@pytest.mark.parametrize("uri_kind", ["models", "runs"])
def test_folder_json_has_predictions_and_per_file_error(
    logged: ModelInfo, folder: Path, uri_kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = logged.model_uri if uri_kind == "models" else f"runs:/{logged.run_id}/serving_model"
    assert run(folder, "--model", uri, "--json", *CROP) == 3  # some failed: broken.jpg
    out, err = capsys.readouterr()
    entries = by_name(json.loads(out))
    assert set(entries) == {"a.png", "b.JPG", "broken.jpg"}
    good = [entries["a.png"], entries["b.JPG"]]
    assert_answers(good, reference(logged, folder / "a.png", folder / "nested" / "b.JPG"))
    assert good[0]["age"] != pytest.approx(good[1]["age"])  # each file its own answer
    assert [(e["face_check"], e["error"]) for e in good] == [("implausible", None)] * 2  # noise
    assert [(e["face"], e["box"]) for e in good] == [(1, [0, 0, 48, 48])] * 2  # the whole image
    broken = entries["broken.jpg"]
    assert broken["error"] == "not an image (unrecognised format)"
    assert broken["age"] is None
    assert "2 predicted, 1 failed" in err


def test_table_output(logged: ModelInfo, folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(folder / "a.png", folder / "broken.jpg", "--model", logged.model_uri, *CROP) == 3
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == COLUMNS
    assert len(rows) == 2
    assert "not an image" in next(r for r in rows if "broken.jpg" in r)


def test_nothing_predictable_exits_non_zero(
    logged: ModelInfo, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(folder / "broken.jpg", "--model", logged.model_uri, "--json") == 1
    assert json.loads(capsys.readouterr().out)[0]["error"]
    assert run(folder / "nested" / "nope", "--model", logged.model_uri) == 1
    assert "no such file or folder" in capsys.readouterr().err


def test_without_champion_says_how_to_get_one(
    logged: ModelInfo, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(folder, "--model-name", "never-registered") == 1
    err = capsys.readouterr().err
    assert "no champion" in err
    assert "dvc repro" in err
    assert "utkface promote" in err
    assert "Traceback" not in err


def test_default_is_the_champion(
    logged: ModelInfo, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    register_version(logged, MODEL_NAME)
    parser = argparse.ArgumentParser()
    promote_command.add_arguments(parser)
    assert promote_command.run(parser.parse_args([])) == 0
    capsys.readouterr()
    assert run(folder / "a.png", "--json", *CROP) == 0  # all answered
    entries = json.loads(capsys.readouterr().out)
    assert_answers(entries, reference(logged, folder / "a.png"))  # the champion is `logged`
    store = registry.registry_client()
    champion = registry.get_alias_version(store, MODEL_NAME, registry.CHAMPION)
    files = Path(registry.version_files(store, champion))  # loaded in place, not copied
    assert (files / "MLmodel").is_file() and files.is_relative_to(Path.cwd() / "mlartifacts")


def test_the_champion_is_looked_up_again_only_after_the_store_changed(
    logged: ModelInfo, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    name = "cached-champion"
    first, second = register_version(logged, name), register_version(logged, name)
    store = registry.registry_client()
    store.set_registered_model_alias(name, registry.CHAMPION, first.version)
    asked = []
    look_up = registry.get_alias_version
    monkeypatch.setattr(
        registry, "get_alias_version", lambda *args: asked.append(args[1:]) or look_up(*args)
    )
    files = registry.champion_files(name)
    assert files == registry.version_files(store, first)
    assert registry.champion_files(name) == files and len(asked) == 1  # kept beside the store
    cache = Path.cwd() / "champions.json"
    kept = json.loads(cache.read_text())
    cache.write_text(json.dumps({name: kept[name] | {"files": str(tmp_path)}}))
    assert registry.champion_files(name) == files and len(asked) == 2  # not beside the store
    store.set_registered_model_alias(name, registry.CHAMPION, second.version)  # a write
    assert registry.champion_files(name) == files and len(asked) == 3  # asked again
    store.delete_registered_model_alias(name, registry.CHAMPION)
    assert registry.champion_files(name) is None and len(asked) == 4


def test_a_model_from_another_environment_is_named_with_what_differs(
    logged: ModelInfo, tmp_path: Path
) -> None:
    folder = Path(mlflow.artifacts.download_artifacts(logged.model_uri, dst_path=str(tmp_path)))
    flavor = local_model.pyfunc_flavor(folder)
    assert client.environment_mismatches(folder, flavor) == []  # logged here
    requirements = folder / "requirements.txt"
    pins = requirements.read_text().split()
    requirements.write_text("\n".join([*pins, "numpy==0.0.1", "no-such-package==1.0"]))
    assert client.environment_mismatches(folder, flavor) == [
        f"numpy==0.0.1 (here {np.__version__})",
        "no-such-package==1.0 (here not installed)",
    ]


def test_a_model_folder_with_this_code_is_answered_without_mlflow_as_mlflow_answers(
    logged: ModelInfo, folder: Path, tmp_path: Path
) -> None:
    local = Path(mlflow.artifacts.download_artifacts(logged.model_uri, dst_path=str(tmp_path)))
    frame = pd.DataFrame({"image": [to_base64(image_bytes(i)) for i in (1, 2, 3)] + ["no image"]})
    params = {"on_error": "report", "faces": "crop"}
    expected = mlflow.pyfunc.load_model(str(local)).predict(frame, params=params)
    model = client.load_model(str(local), None)
    assert isinstance(model, local_model.LocalModel)
    pd.testing.assert_frame_equal(model.predict(frame, params), expected)
    assert model.model_config == mlflow.pyfunc.load_model(str(local)).model_config
    with pytest.raises(client.PredictError, match="faces must be one of"):
        client.predict_inputs(model, [client.Input("a.png", image_bytes(1))], faces="all")
    # a model carrying other code than this one's runs its own, through MLflow
    carried = local / "code" / "utkface" / "inference" / "faces.py"
    carried.write_text(carried.read_text() + "\n# logged by another version\n")
    assert local_model.load(local, local_model.pyfunc_flavor(local)) is None
    model = client.load_model(str(local), None)
    assert isinstance(model, mlflow_model.MlflowModel)
    pd.testing.assert_frame_equal(model.predict(frame, params), expected)
    with pytest.raises(client.PredictError, match="faces must be one of"):
        client.predict_inputs(model, [client.Input("a.png", image_bytes(1))], faces="all")


def test_bad_model_uri_is_a_clear_error(
    logged: ModelInfo, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(folder, "--model", str(folder / "no-model-here")) == 1
    err = capsys.readouterr().err
    assert "cannot load model" in err
    assert "Traceback" not in err


def test_a_photo_gives_each_face_with_its_box_by_default(
    logged: ModelInfo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "two.jpg").write_bytes(two_faces_jpeg())
    (tmp_path / "noise.png").write_bytes(image_bytes(1))
    (tmp_path / "large.png").write_bytes(image_bytes(3, size=200))
    (tmp_path / "broken.jpg").write_text("this is not an image\n")
    assert run(tmp_path, "--model", logged.model_uri, "--json") == 3
    out, err = capsys.readouterr()
    entries = json.loads(out)
    two = [e for e in entries if e["path"].endswith("two.jpg")]
    assert [e["face"] for e in two] == [1, 2]
    (x1, _, w1, _), (x2, _, w2, _) = (e["box"] for e in two)
    assert x1 >= 20 and x1 + w1 <= 140  # within the left face
    assert x2 >= 160 and x2 + w2 <= 280  # within the right face
    # the reference: each reported box at the model's input size, through the Keras file
    photo = Image.open(tmp_path / "two.jpg").convert("RGB")
    crops = []
    for entry in two:
        left, top, side, height = entry["box"]
        assert side == height  # a square, cropped as UTKFace crops are (`faces.crop_box`)
        crops.append(prepare_image(photo.crop((left, top, left + side, top + side)), IMAGE_SIZE))
    assert_answers(two, scratch_reference(logged.model_uri, np.stack(crops)).to_dict("records"))
    assert two[0]["age"] != pytest.approx(two[1]["age"])  # two faces, two answers
    errors = {Path(e["path"]).name: e["error"] for e in entries if e["error"]}
    assert errors["noise.png"] == NO_FACE
    assert "faces=crop" in errors["noise.png"]
    assert "exceeds the limit" in errors["large.png"]
    assert errors["broken.jpg"] == "not an image (unrecognised format)"
    assert "2 predicted, 3 failed" in err
    assert "Traceback" not in err


def test_the_table_has_a_row_per_face_with_its_box(
    logged: ModelInfo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "two.jpg").write_bytes(two_faces_jpeg())
    assert run(tmp_path / "two.jpg", "--model", logged.model_uri) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == COLUMNS
    assert [row.split()[1] for row in rows] == ["1", "2"]
    assert rows[0].split()[2].count(",") == 3  # x,y,w,h


def test_a_tight_crop_is_one_face_and_the_modes_force_either_reading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A face crop as UTKFace's is one answer on the whole image by default; `--faces detect`
    looks for faces in it instead, and `--faces crop` answers a two-face photo's centre."""
    use_tmp_store(monkeypatch, tmp_path)
    uri = log_tiny_serving_model(tmp_path, member="pretrained", max_image_bytes=10**6).model_uri
    (tmp_path / "crop.png").write_bytes(encode_png(astronaut_face(FACE_SIZE)))
    (tmp_path / "two.jpg").write_bytes(two_faces_jpeg())
    capsys.readouterr()
    assert run(tmp_path / "crop.png", "--model", uri, "--json") == 0
    (whole,) = json.loads(capsys.readouterr().out)
    assert (whole["face"], whole["box"], whole["face_check"]) == (1, [0, 0, 200, 200], "ok")
    assert run(tmp_path / "crop.png", "--model", uri, "--json", "--faces", "detect") == 0
    (found,) = json.loads(capsys.readouterr().out)
    assert found["box"] != [0, 0, 200, 200] and found["box"][2] < 200  # a face inside it
    assert run(tmp_path / "two.jpg", "--model", uri, "--json", *CROP) == 0
    (centre,) = json.loads(capsys.readouterr().out)
    assert centre["box"] == [90, 0, 120, 120]  # the centre square of 300 x 120


def test_a_photo_without_faces_is_an_error_not_a_crash(
    logged: ModelInfo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "noise.png").write_bytes(image_bytes(1))
    assert run(tmp_path / "noise.png", "--model", logged.model_uri) == 1
    out, err = capsys.readouterr()
    assert NO_FACE in out
    assert "0 predicted, 1 failed" in err


def test_a_model_trained_on_the_synthetic_set_answers_with_a_warning(
    logged: ModelInfo,
    folder: Path,
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert run(folder / "a.png", "--model", logged.model_uri, *CROP) == 0
    assert "synthetic" not in capsys.readouterr().err  # trained on real images: no warning
    with pytest.MonkeyPatch.context() as patch:
        use_tmp_store(patch, tmp_path_factory.mktemp("demo"))
        demo = log_tiny_serving_model(Path.cwd(), trained_on=SYNTHETIC_TRAINING)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert run(folder / "a.png", "--model", demo.model_uri, *CROP) == 0
    err = capsys.readouterr().err
    assert f"predict: warning: {SYNTHETIC_WARNING}" in err
    # said once: the model's own warning as it loads (for `utkface serve`) is not logged too
    assert not [r for r in caplog.records if SYNTHETIC_WARNING in r.getMessage()]


def test_an_oversized_file_is_refused_from_its_size_without_being_read(tmp_path: Path) -> None:
    huge = tmp_path / "huge.jpg"
    with huge.open("wb") as handle:
        handle.truncate(4 * 1024**3)  # 4 GiB, sparse: reading it would take minutes and memory
    small = tmp_path / "small.png"
    small.write_bytes(image_bytes(1))
    refused = client.read_input(huge, max_bytes=10_000)
    assert refused == client.Prediction(
        str(huge), error=f"image of {4 * 1024**3} bytes exceeds the limit of 10000"
    )
    assert client.read_input(small, max_bytes=10_000) == client.Input(str(small), image_bytes(1))
    assert client.read_input(tmp_path / "gone.png", 10_000).error.startswith("cannot read")


def test_files_are_read_one_batch_at_a_time(
    logged: ModelInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = []
    for i in range(client.BATCH + 3):
        files.append(tmp_path / f"{i:03d}.png")
        files[-1].write_bytes(image_bytes(i % 3))
    held: list[int] = []  # images in memory at each prediction
    predict_inputs = client.predict_inputs

    def counted_predict(model, inputs, faces):
        held.append(len(inputs))
        return predict_inputs(model, inputs, faces)

    monkeypatch.setattr(client, "predict_inputs", counted_predict)
    model = client.load_model(logged.model_uri, None)
    predictions = client.predict_files(model, files, client.InputLimits.of(model), "crop")
    assert held == [client.BATCH, 3]
    assert [p.path for p in predictions] == [str(f) for f in files]
    assert all(p.error is None for p in predictions)
