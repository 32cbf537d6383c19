"""`utkface use-data`: copying a user's UTKFace into data/raw and pointing ingest.source at it,
and refusing a source with no usable image before changing anything."""

from __future__ import annotations

import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml
from tiny import default_params

from utkface.cli.main import main
from utkface.cli.use_data import check_usable, copy_into_raw, set_ingest_source
from utkface.data.synthetic import synthetic_files
from utkface.params import Params, load_params

REPO = Path(__file__).resolve().parents[2]
NAME = "25_0_0_20170101000000001.jpg.chip.jpg"


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def user_folder(tmp_path) -> Path:
    root = tmp_path / "home" / "UTKFace"
    (root / "UTKFace").mkdir(parents=True)
    (root / "UTKFace" / NAME).write_bytes(b"\xff\xd8 face one")
    (root / "31_1_2_20170101000000002.jpg.chip.jpg").write_bytes(b"\xff\xd8 face two")
    return root


def test_copy_a_folder(tmp_path, user_folder):
    raw = tmp_path / "repo" / "data" / "raw"
    target = copy_into_raw(user_folder, raw)
    assert target == raw / "UTKFace"
    assert tree(target) == tree(user_folder)
    assert user_folder.exists()  # copied, not moved


@pytest.mark.parametrize("suffix", [".tar.gz", ".zip", ".tgz"])
def test_copy_an_archive(tmp_path, user_folder, suffix):
    archive = tmp_path / "home" / f"UTKFace{suffix}"
    if suffix == ".zip":
        with zipfile.ZipFile(archive, "w") as zf:
            zf.write(user_folder / "UTKFace" / NAME, f"UTKFace/{NAME}")
    else:
        with tarfile.open(archive, "w:gz") as tf:
            tf.add(user_folder, arcname="UTKFace")
    raw = tmp_path / "raw"
    target = copy_into_raw(archive, raw)
    assert target == raw / archive.name
    assert target.read_bytes() == archive.read_bytes()
    assert [p.name for p in raw.iterdir()] == [archive.name]


def test_refuses_an_existing_target_and_leaves_it_alone(tmp_path, user_folder):
    raw = tmp_path / "raw"
    (raw / "UTKFace").mkdir(parents=True)
    (raw / "UTKFace" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists") as error:
        copy_into_raw(user_folder, raw)
    assert str(raw / "UTKFace") in str(error.value)
    assert tree(raw) == {"UTKFace/keep.txt": b"mine"}


@pytest.mark.parametrize("name", ["faces.txt", "UTKFace.rar", "UTKFace.7z"])
def test_refuses_a_file_that_is_not_an_archive(tmp_path, name):
    source = tmp_path / name
    source.write_bytes(b"nope")
    raw = tmp_path / "raw"
    with pytest.raises(ValueError, match=r"expected a folder, a \.zip or a \.tar\.gz") as error:
        copy_into_raw(source, raw)
    assert name in str(error.value)
    assert not raw.exists()


def test_refuses_a_missing_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        copy_into_raw(tmp_path / "nowhere", tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


# --------------------------------------------------------------------------- usable sources


def _synthetic_face() -> tuple[str, bytes]:
    """One UTKFace-named JPEG that ingest admits."""
    return next(synthetic_files(1, seed=0))


def test_a_source_with_one_usable_image_among_other_files_is_usable(tmp_path):
    name, data = _synthetic_face()
    (tmp_path / "faces").mkdir()
    (tmp_path / "faces" / "README.txt").write_text("notes")
    (tmp_path / "faces" / name).write_bytes(data)
    check_usable(tmp_path / "faces", Params())  # does not raise


def test_an_archive_without_utkface_names_is_refused_with_why(tmp_path):
    archive = tmp_path / "holiday.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("beach.jpg", _synthetic_face()[1])
        zf.writestr("pier.jpg", _synthetic_face()[1])
    with pytest.raises(ValueError) as error:
        check_usable(archive, Params())
    message = str(error.value)
    assert message.startswith(f"{archive}: no usable image among its 2 file(s) (malformed_name 2;")
    assert "e.g. beach.jpg: malformed name" in message


@pytest.mark.parametrize(
    ("files", "reason"),
    [
        ({}, "no usable image: it holds no file"),
        (
            {"notes.txt": "not a face"},
            "no usable image among its 1 file(s) (not_an_image 1; e.g. notes.txt: "
            "not an image file name",
        ),
    ],
    ids=["empty", "text-file"],
)
def test_use_data_refuses_a_source_without_a_usable_image_and_changes_nothing(
    tmp_path, monkeypatch, capsys, files, reason
):
    source = tmp_path / "home" / "faces"
    source.mkdir(parents=True)
    for name, text in files.items():
        (source / name).write_text(text)
    project = tmp_path / "project"
    project.mkdir()
    params = project / "params.yaml"
    params.write_text(yaml.safe_dump(default_params(), sort_keys=False))
    before = params.read_bytes()
    monkeypatch.chdir(project)
    with pytest.raises(SystemExit) as stopped:
        main(["use-data", str(source)])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.startswith(f"use-data: {source}: {reason}")
    assert params.read_bytes() == before
    assert [p.name for p in project.iterdir()] == ["params.yaml"]  # no data/raw, no .dvc file


# --------------------------------------------------------------------------- set_ingest_source


@pytest.fixture
def params_file(tmp_path) -> Path:
    path = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", path)
    return path


def test_set_ingest_source_changes_only_that_value(params_file, tmp_path):
    source = str(tmp_path / "UTKFace.tar.gz")  # never what the workspace's params.yaml says
    before_text = params_file.read_text()
    before = load_params(params_file)
    set_ingest_source(source, params_file)
    after_text = params_file.read_text()
    after = load_params(params_file)

    assert after.ingest.source == source
    assert after.model_dump() == {
        **before.model_dump(),
        "ingest": {**before.ingest.model_dump(), "source": source},
    }
    old_lines, new_lines = before_text.splitlines(), after_text.splitlines()
    assert len(old_lines) == len(new_lines)
    changed = [(o, n) for o, n in zip(old_lines, new_lines, strict=True) if o != n]
    assert len(changed) == 1
    old, new = changed[0]
    assert new.lstrip().startswith(f"source: {source}")
    # the line's comment and indentation survive; so does every other comment in the file
    assert old.partition("#")[2] == new.partition("#")[2]
    assert old[: len(old) - len(old.lstrip())] == new[: len(new) - len(new.lstrip())]


def test_set_ingest_source_twice(params_file):
    set_ingest_source("data/raw/a", params_file)
    set_ingest_source("data/raw/b", params_file)
    assert load_params(params_file).ingest.source == "data/raw/b"


def test_set_ingest_source_finds_source_after_other_keys_and_only_in_ingest(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(
        "# top comment\n"
        "seed: 1\n"
        "\n"
        "ingest:\n"
        "  image_size: 32   # size\n"
        "\n"
        "  source: synthetic  # where the faces are\n"
        "other:\n"
        "  source: untouched\n"
    )
    set_ingest_source("data/raw/UTKFace", path)
    text = path.read_text()
    assert yaml.safe_load(text) == {
        "seed": 1,
        "ingest": {"image_size": 32, "source": "data/raw/UTKFace"},
        "other": {"source": "untouched"},
    }
    # a longer value pushes its comment along (ruamel.yaml keeps one space before the `#`)
    assert "  source: data/raw/UTKFace # where the faces are\n" in text
    assert text.startswith("# top comment\n") and "image_size: 32   # size\n" in text


def test_set_ingest_source_keeps_the_comment_column_when_the_value_fits(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("lr: null     # tuned\ningest:\n  source: synthetic   # faces\n")
    set_ingest_source("raw/UTK", path)
    assert path.read_text() == "lr: null     # tuned\ningest:\n  source: raw/UTK     # faces\n"


def test_set_ingest_source_without_a_source_line(tmp_path):
    path = tmp_path / "params.yaml"
    text = "ingest:\n  image_size: 32\nother:\n  source: x\n"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"no ingest\.source line"):
        set_ingest_source("data/raw/UTKFace", path)
    assert path.read_text() == text


@pytest.mark.parametrize("value", ["data/raw/UTKFace #2", "data/raw/faces: part 1"])
def test_set_ingest_source_with_yaml_special_characters(params_file, value):
    set_ingest_source(value, params_file)
    assert load_params(params_file).ingest.source == value


# --------------------------------------------------------------------------- the command


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("seed: 1\n", "params.yaml: no ingest.source line found"),
        (
            "ingest: {source: synthetic\n",
            "params.yaml: not valid YAML: while parsing a flow mapping: expected ',' or '}', "
            "but got '<stream end>' (line 2, column 1)",
        ),
    ],
)
def test_use_data_with_a_bad_params_file_exits_2_before_copying(
    text, message, tmp_path, user_folder, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(SystemExit) as stopped:
        main(["use-data", str(user_folder)])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f"use-data: {message}"]
    assert not (tmp_path / "data").exists()
