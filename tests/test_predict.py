"""`utkface predict`: files and folders through the served pyfunc, per-file errors, URIs."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.models.model import ModelInfo
from model_fixtures import (
    MODEL_NAME,
    image_bytes,
    log_tiny_serving_model,
    register_version,
    use_tmp_store,
)

from stages import predict, promote


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelInfo]:
    with pytest.MonkeyPatch.context() as patch:
        root = tmp_path_factory.mktemp("predict")
        use_tmp_store(patch, root)
        yield log_tiny_serving_model(root)


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
    predict.add_arguments(parser)
    return predict.run(parser.parse_args([str(a) for a in argv]))


def by_name(entries: list[dict]) -> dict[str, dict]:
    return {Path(e["path"]).name: e for e in entries}


def test_find_images_recurses_and_reports_missing(folder: Path) -> None:
    files, missing = predict.find_images([folder, folder / "notes.txt", folder / "nope.png"])
    assert [f.name for f in files] == ["a.png", "broken.jpg", "b.JPG", "notes.txt"]
    assert [(Path(m.path).name, m.error) for m in missing] == [
        ("nope.png", "no such file or folder")
    ]


@pytest.mark.parametrize("uri_kind", ["models", "runs"])
def test_folder_json_has_predictions_and_per_file_error(
    logged: ModelInfo, folder: Path, uri_kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = logged.model_uri if uri_kind == "models" else f"runs:/{logged.run_id}/serving_model"
    assert run(folder, "--model", uri, "--json") == 0
    out, err = capsys.readouterr()
    entries = by_name(json.loads(out))
    assert set(entries) == {"a.png", "b.JPG", "broken.jpg"}
    for good in ("a.png", "b.JPG"):
        entry = entries[good]
        assert isinstance(entry["age"], float)
        assert 0 <= entry["age"] <= 116
        assert entry["gender"] in ("male", "female")
        assert 0 <= entry["p_female"] <= 1
        assert entry["error"] is None
    broken = entries["broken.jpg"]
    assert broken["error"] == "not an image (unrecognised format)"
    assert broken["age"] is None
    assert "2 predicted, 1 failed" in err


def test_table_output(logged: ModelInfo, folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(folder / "a.png", folder / "broken.jpg", "--model", logged.model_uri) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == ["path", "age", "gender", "p_female", "error"]
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
    promote.add_arguments(parser)
    assert promote.run(parser.parse_args([])) == 0
    capsys.readouterr()
    assert run(folder / "a.png", "--json") == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["gender"] in ("male", "female")


def test_bad_model_uri_is_a_clear_error(
    logged: ModelInfo, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(folder, "--model", str(folder / "no-model-here")) == 1
    err = capsys.readouterr().err
    assert "cannot load model" in err
    assert "Traceback" not in err
