"""Raw sources: folders (recursive), .zip, .tar.gz and the synthetic set; unsafe archive members
are refused without being read, and bad source paths fail with `SourceError`."""

from __future__ import annotations

import io
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from raw_files import spy
from tiny import AGE_MAX

from stages.ingest import IngestResult, ingest
from utkface.data.labels import parse_file_name
from utkface.data.sources import RawFile, SourceError, describe, iter_source

SIZE = 32
MAX_BYTES = 50_000
MAX_PIXELS = 1_000_000


def utk(age: int, gender: int, race: int, n: int) -> str:
    return f"{age}_{gender}_{race}_2017010912{n:07d}.jpg.chip.jpg"


def face(seed: int, size: int = 40) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


# Kaggle layout: UTKFace/UTKFace/*.jpg.chip.jpg; plus one face a level up and a stray text file.
FILES = {
    f"UTKFace/UTKFace/{utk(25, 0, 0, 1)}": face(1),
    f"UTKFace/UTKFace/{utk(3, 1, 2, 2)}": face(2),
    f"UTKFace/UTKFace/{utk(70, 1, 4, 3)}": face(3),
    f"UTKFace/{utk(45, 0, 3, 4)}": face(4),
    utk(12, 1, 1, 5): face(5),
    "UTKFace/notes.txt": b"hello\n",
}
INGESTED = {name.rsplit("/", 1)[-1].removesuffix(".jpg.chip.jpg") for name in FILES} - {"notes.txt"}


def write_folder(root: Path, files: dict[str, bytes] = FILES) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(zipfile.ZipInfo(name), data)  # ZipInfo keeps the name exactly
    return path


def tar_member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = ""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data)
    return info, io.BytesIO(data) if data else None


def write_tar(path: Path, files: dict[str, bytes], extra: list | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            tf.addfile(*tar_member(name, data))
        for info, handle in extra or []:
            tf.addfile(info, handle)
    return path


def run_ingest(source: Path | str, read: list[str] | None = None) -> IngestResult:
    files: Iterator[RawFile] = iter_source(str(source), MAX_BYTES, 10, 0)
    if read is not None:
        files = spy(files, read)
    return ingest(files, SIZE, MAX_PIXELS, AGE_MAX, progress=False)


def by_id(result: IngestResult) -> dict[str, tuple]:
    labels = result.labels.set_index("image_id")
    return {
        image_id: (row.age, row.gender, row.race, result.images[row.cache_index].tobytes())
        for image_id, row in labels.iterrows()
    }


def snapshot(root: Path) -> set[Path]:
    return set(root.rglob("*"))


# ---------------------------------------------------------------------------- folders, archives


def test_folder_is_read_recursively(tmp_path):
    root = write_folder(tmp_path / "data")
    names = [raw.name for raw in iter_source(str(root), MAX_BYTES, 10, 0)]
    assert names == sorted(names)  # stable order
    assert sorted(names) == sorted(FILES)
    result = run_ingest(root)
    assert set(result.labels["image_id"]) == INGESTED
    assert list(result.rejections["file"]) == ["UTKFace/notes.txt"]


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz", ".tgz", ".tar"])
def test_archives_give_the_same_result_as_the_folder(tmp_path, suffix):
    folder = run_ingest(write_folder(tmp_path / "data"))
    archive = tmp_path / f"UTKFace{suffix}"
    if suffix == ".zip":
        write_zip(archive, FILES)
    else:
        with tarfile.open(archive, "w:gz" if suffix != ".tar" else "w") as tf:
            for name, data in FILES.items():
                tf.addfile(*tar_member(name, data))
    before = snapshot(tmp_path)
    packed = run_ingest(archive)
    assert by_id(packed) == by_id(folder)
    assert sorted(packed.rejections["file"]) == sorted(folder.rejections["file"])
    assert packed.files_seen == folder.files_seen == len(FILES)
    assert snapshot(tmp_path) == before  # nothing extracted


def test_tar_with_dot_slash_names_and_directory_entries(tmp_path):
    archive = tmp_path / "faces.tar.gz"
    dirs = [tar_member("./UTKFace", kind=tarfile.DIRTYPE)]
    write_tar(archive, {f"./UTKFace/{utk(25, 0, 0, 1)}": face(1)}, dirs)
    result = run_ingest(archive)
    assert list(result.labels["image_id"]) == [utk(25, 0, 0, 1).removesuffix(".jpg.chip.jpg")]
    assert result.files_seen == 1  # the directory entry is not a file


def test_links_out_of_the_source_folder_are_refused_unread(tmp_path):
    """A link to a system file, to an image elsewhere or to a folder elsewhere is refused and
    listed; a link inside the folder, and a source folder that is itself a link, are read."""
    root = write_folder(tmp_path / "data", {utk(25, 0, 0, 1): face(1), "store/a.bin": face(6)})
    elsewhere = write_folder(tmp_path / "elsewhere", {utk(30, 1, 0, 2): face(2)})
    (root / utk(31, 0, 0, 3)).symlink_to(elsewhere / utk(30, 1, 0, 2))
    (root / utk(32, 0, 0, 4)).symlink_to("/etc/passwd")
    (root / "more").symlink_to(elsewhere, target_is_directory=True)
    (root / utk(33, 0, 0, 5)).symlink_to(tmp_path / "gone.jpg")
    (root / utk(34, 1, 0, 6)).symlink_to(root / "store" / "a.bin")  # inside: fine
    linked_root = tmp_path / "linked"
    linked_root.symlink_to(root, target_is_directory=True)
    for source in (root, linked_root):
        read: list[str] = []
        result = run_ingest(source, read)
        reasons = dict(zip(result.rejections["file"], result.rejections["reason"], strict=True))
        outside = [utk(31, 0, 0, 3), utk(32, 0, 0, 4), "more"]
        for name in outside:
            assert reasons[name].startswith("unsafe path: link out of the source folder"), name
        assert reasons[utk(33, 0, 0, 5)] == "unsafe path: broken link refused"
        assert "/etc/passwd" in reasons[utk(32, 0, 0, 4)]
        assert not set(read) & {*outside, utk(33, 0, 0, 5)}  # never opened
        ingested = set(result.labels["image_id"])
        assert ingested == {utk(n[0], n[1], 0, n[2]).removesuffix(".jpg.chip.jpg")
                            for n in ((25, 0, 1), (34, 1, 6))}  # fmt: skip


# ------------------------------------------------------------------------- unsafe archive members

EVIL = {
    "/etc/x.jpg": "absolute path",
    f"../../evil_1_0_0_{'2' * 17}.jpg": "'..' in path",
    f"UTKFace/../../{utk(30, 1, 0, 9)}": "'..' in path",
    f"C:/Windows/{utk(31, 1, 0, 8)}": "absolute path",
}


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_unsafe_members_are_refused_and_never_read(tmp_path, kind):
    work = tmp_path / "work"
    work.mkdir()
    good = {utk(25, 0, 0, 1): face(1)}
    evil = {name: face(10 + i) for i, name in enumerate(EVIL)}
    archive = work / f"faces.{kind}"
    if kind == "zip":
        write_zip(archive, good | evil)
        assert set(zipfile.ZipFile(archive).namelist()) >= set(EVIL)  # names kept as given
    else:
        write_tar(archive, good | evil)
        with tarfile.open(archive) as tf:
            assert set(tf.getnames()) >= set(EVIL)
    before = snapshot(tmp_path)
    read: list[str] = []
    result = run_ingest(archive, read)

    assert read == list(good)
    assert list(result.labels["file"]) == list(good)
    rejected = result.rejections.set_index("file")
    assert sorted(rejected.index) == sorted(EVIL)
    for name, why in EVIL.items():
        assert rejected.loc[name, "reason"].startswith(f"unsafe archive member: {why}")
        assert rejected.loc[name, "category"] == "unsafe_path"
    assert snapshot(tmp_path) == before
    assert not list(tmp_path.parent.glob("evil_*"))
    assert not (tmp_path.parent / utk(30, 1, 0, 9)).exists()


def test_tar_links_and_devices_are_refused(tmp_path):
    archive = tmp_path / "faces.tar.gz"
    extra = [
        tar_member(utk(40, 0, 0, 2), kind=tarfile.SYMTYPE, link="/etc/passwd"),
        tar_member(utk(41, 0, 0, 3), kind=tarfile.LNKTYPE, link=utk(25, 0, 0, 1)),
        tar_member(utk(42, 0, 0, 4), kind=tarfile.FIFOTYPE),
    ]
    write_tar(archive, {utk(25, 0, 0, 1): face(1)}, extra)
    read: list[str] = []
    result = run_ingest(archive, read)
    assert read == [utk(25, 0, 0, 1)]
    rejected = result.rejections.set_index("file")
    assert sorted(rejected.index) == [utk(40, 0, 0, 2), utk(41, 0, 0, 3), utk(42, 0, 0, 4)]
    assert (rejected["reason"] == "unsafe archive member: links and devices refused").all()
    assert (rejected["category"] == "unsafe_path").all()


@pytest.mark.parametrize("kind", ["folder", "zip", "tar.gz"])
def test_oversized_files_are_refused_without_reading(tmp_path, kind):
    big = face(7, size=300)
    assert len(big) > MAX_BYTES
    files = {utk(25, 0, 0, 1): face(1), utk(26, 0, 0, 2): big}
    if kind == "folder":
        source = write_folder(tmp_path / "data", files)
    elif kind == "zip":
        source = write_zip(tmp_path / "f.zip", files)
    else:
        source = write_tar(tmp_path / "f.tar.gz", files)
    read: list[str] = []
    result = run_ingest(source, read)
    assert read == [utk(25, 0, 0, 1)]
    (reason,) = result.rejections["reason"]
    assert reason == f"file too large: {len(big)} bytes exceeds max_file_bytes={MAX_BYTES}"
    assert list(result.rejections["category"]) == ["too_large"]


# ------------------------------------------------------------------------------- bad source paths


def test_missing_source_raises_source_error_with_the_path(tmp_path):
    missing = tmp_path / "no" / "such" / "UTKFace.zip"
    with pytest.raises(SourceError, match="does not exist") as error:
        list(iter_source(str(missing), MAX_BYTES, 10, 0))
    assert str(missing) in str(error.value)


@pytest.mark.parametrize("name", ["UTKFace.rar", "faces.txt", "UTKFace.tar.xz.part"])
def test_unsupported_file_raises_source_error_with_the_path(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"whatever")
    with pytest.raises(SourceError, match="neither a folder nor") as error:
        list(iter_source(str(path), MAX_BYTES, 10, 0))
    assert str(path) in str(error.value)


@pytest.mark.parametrize("kind", ["not-a-zip", "not-a-tar", "truncated-tar"])
def test_unreadable_archive_raises_source_error_with_the_path(tmp_path, kind):
    if kind == "not-a-zip":
        path = tmp_path / "UTKFace.zip"
        path.write_bytes(b"this is not a zip archive")
    elif kind == "not-a-tar":
        path = tmp_path / "UTKFace.tar.gz"
        path.write_bytes(b"this is not a tar archive")
    else:
        files = {utk(20 + i, 0, 0, i): face(i) for i in range(5)}
        path = write_tar(tmp_path / "UTKFace.tar.gz", files)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(SourceError) as error:
        list(iter_source(str(path), MAX_BYTES, 10, 0))
    assert str(path) in str(error.value)


def test_describe():
    assert describe("synthetic") == "synthetic demo set"
    assert describe("data/raw/UTKFace.ZIP") == "zip archive"
    assert describe("data/raw/UTKFace.tar.gz") == "tar archive"
    assert describe("data/raw/UTKFace") == "folder"


# ------------------------------------------------------------------------------------ synthetic


def test_synthetic_source_is_deterministic_and_labelled():
    first = [(raw.name, raw.read()) for raw in iter_source("synthetic", MAX_BYTES, 12, 7)]
    again = [(raw.name, raw.read()) for raw in iter_source("synthetic", MAX_BYTES, 12, 7)]
    other = [(raw.name, raw.read()) for raw in iter_source("synthetic", MAX_BYTES, 12, 8)]
    assert len(first) == 12
    assert first == again
    assert first != other
    assert len({name for name, _ in first}) == 12
    for name, data in first:
        parse_file_name(name, AGE_MAX)  # valid UTKFace labels
        assert data[:2] == b"\xff\xd8"  # JPEG
    # a longer set starts with the same images
    longer = [raw.name for raw in iter_source("synthetic", MAX_BYTES, 15, 7)]
    assert longer[:12] == [name for name, _ in first]


def test_synthetic_source_ingests_cleanly():
    result = ingest(iter_source("synthetic", MAX_BYTES, 10, 3), SIZE, MAX_PIXELS, AGE_MAX, False)
    assert result.files_seen == 10
    assert result.images.shape == (10, SIZE, SIZE, 3)
    assert result.rejections.empty
