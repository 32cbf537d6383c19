"""Raw sources: folders (recursive), .zip, .tar.gz and the synthetic set; unsafe archive members
are refused without being read, and bad source paths fail with `SourceError`."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from raw_files import spy
from tiny import AGE_MAX

from utkface.data.admission import Admission, admit
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


def admit_source(source: Path | str, read: list[str] | None = None) -> Admission:
    files: Iterator[RawFile] = iter_source(str(source), MAX_BYTES, 10, 0)
    if read is not None:
        files = spy(files, read)
    return admit(files, SIZE, MAX_PIXELS, AGE_MAX, progress=False)


def by_id(result: Admission) -> dict[str, tuple]:
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
    result = admit_source(root)
    assert set(result.labels["image_id"]) == INGESTED
    assert list(result.rejections["file"]) == ["UTKFace/notes.txt"]


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz", ".tgz", ".tar"])
def test_archives_give_the_same_result_as_the_folder(tmp_path, suffix):
    folder = admit_source(write_folder(tmp_path / "data"))
    archive = tmp_path / f"UTKFace{suffix}"
    if suffix == ".zip":
        write_zip(archive, FILES)
    else:
        with tarfile.open(archive, "w:gz" if suffix != ".tar" else "w") as tf:
            for name, data in FILES.items():
                tf.addfile(*tar_member(name, data))
    before = snapshot(tmp_path)
    packed = admit_source(archive)
    assert by_id(packed) == by_id(folder)
    assert sorted(packed.rejections["file"]) == sorted(folder.rejections["file"])
    assert packed.files_seen == folder.files_seen == len(FILES)
    assert snapshot(tmp_path) == before  # nothing extracted


def test_tar_with_dot_slash_names_and_directory_entries(tmp_path):
    archive = tmp_path / "faces.tar.gz"
    dirs = [tar_member("./UTKFace", kind=tarfile.DIRTYPE)]
    write_tar(archive, {f"./UTKFace/{utk(25, 0, 0, 1)}": face(1)}, dirs)
    result = admit_source(archive)
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
        result = admit_source(source, read)
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
    result = admit_source(archive, read)

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
    result = admit_source(archive, read)
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
    result = admit_source(source, read)
    assert read == [utk(25, 0, 0, 1)]
    (reason,) = result.rejections["reason"]
    assert reason == f"file too large: {len(big)} bytes exceeds max_file_bytes={MAX_BYTES}"
    assert list(result.rejections["category"]) == ["too_large"]


# ------------------------------------------------------------------------ names that are not UTF-8

# Names as an old Latin-1 system stored them (0xe9 is "é"): in the stem, in a folder (labels
# valid), in the suffix. Each sits next to good files, which must still be ingested.
LATIN1 = {
    b"25_0_0_2017\xe9.jpg": face(10),
    b"F\xe9tes/" + utk(26, 1, 0, 2).encode(): face(11),
    utk(27, 0, 1, 3).encode().replace(b".chip", b".chip\xe9"): face(12),
}
NEXT_TO_THEM = {utk(30, 0, 0, 1): face(1), f"UTKFace/{utk(31, 1, 2, 4)}": face(4)}


def write_raw_name(root: Path, name: bytes, data: bytes) -> None:
    """A file whose name is the bytes `name`, whatever they decode to."""
    path = os.path.join(os.fsencode(root), name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)


def write_latin1_tar(path: Path, files: dict[str, bytes], latin1: dict[bytes, bytes]) -> Path:
    """A tar whose names are raw Latin-1 bytes, as GNU tar stores them (PAX would store UTF-8)."""
    with tarfile.open(path, "w:gz", format=tarfile.GNU_FORMAT, encoding="latin-1") as tf:
        for name, data in files.items():
            tf.addfile(*tar_member(name, data))
        for raw, data in latin1.items():
            tf.addfile(*tar_member(raw.decode("latin-1"), data))
    return path


def write_zip_with_raw_names(path: Path, files: dict[str, bytes], raw: dict[str, bytes]) -> Path:
    """A zip of `files` where the names that are keys of `raw` are replaced by its raw bytes:
    zipfile only writes ASCII (no flag) or UTF-8 (UTF-8 flag set) names, so each stand-in is
    swapped for its bytes afterwards, in the local header and in the central directory; both
    are the same length, so the archive stays valid."""
    write_zip(path, files)
    packed = path.read_bytes()
    for stand_in, name in raw.items():
        assert len(stand_in.encode()) == len(name) and packed.count(stand_in.encode()) == 2
        packed = packed.replace(stand_in.encode(), name)
    path.write_bytes(packed)
    return path


def written(result: Admission, folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The labels and rejections written as the stage writes them (parquet, CSV) and read
    back: a name holding a lone surrogate made these writes raise UnicodeEncodeError."""
    result.labels.to_parquet(folder / "labels.parquet", index=False)
    result.rejections.to_csv(folder / "rejections.csv", index=False)
    return pd.read_parquet(folder / "labels.parquet"), pd.read_csv(folder / "rejections.csv")


@pytest.mark.parametrize("kind", ["folder", "tar.gz"])
def test_names_that_are_not_utf8_are_refused_unread_with_the_name_escaped(tmp_path, kind):
    """Folders and tar archives hand such names over with surrogate escapes (PEP 383)."""
    if kind == "folder":
        source = write_folder(tmp_path / "data", NEXT_TO_THEM)
        for raw, data in LATIN1.items():
            write_raw_name(source, raw, data)
    else:
        source = write_latin1_tar(tmp_path / "faces.tar.gz", NEXT_TO_THEM, LATIN1)
    read: list[str] = []
    labels, rejections = written(admit_source(source, read), tmp_path)

    assert sorted(read) == sorted(labels["file"]) == sorted(NEXT_TO_THEM)
    shown = {raw.decode("utf-8", "backslashreplace") for raw in LATIN1}  # 2017\xe9 and so on
    assert set(rejections["file"]) == shown and len(rejections) == len(LATIN1)
    for row in rejections.itertuples():
        assert row.reason == f"file name is not valid UTF-8: {row.file}"
        assert row.category == "name_not_utf8"


def test_link_to_a_name_that_is_not_utf8_is_refused_with_the_target_escaped(tmp_path):
    """The refusal names where the link leads, so that name is escaped too."""
    root = write_folder(tmp_path / "data", NEXT_TO_THEM)
    write_raw_name(tmp_path, b"elsewhere/f\xe9te.jpg", face(10))
    (root / utk(32, 0, 0, 5)).symlink_to(os.fsdecode(tmp_path / "elsewhere") + "/f\udce9te.jpg")
    labels, rejections = written(admit_source(root), tmp_path)
    assert sorted(labels["file"]) == sorted(NEXT_TO_THEM)
    (reason,) = rejections["reason"]
    assert reason.startswith("unsafe path: link out of the source folder refused")
    assert reason.endswith("/elsewhere/f\\xe9te.jpg)")


def test_zip_names_without_the_utf8_flag_are_read_as_cp437(tmp_path):
    """Zip names carry no encoding unless the UTF-8 flag is set; zipfile reads flagless names as
    code page 437, which decodes every byte, so a Latin-1 name arrives as mojibake (0xe9 is "Θ")
    but as text that can be written anywhere: ingested or rejected like any other name."""
    archive = tmp_path / "old.zip"
    raw = {"F@tes/" + utk(26, 1, 0, 2): b"F\xe9tes/" + utk(26, 1, 0, 2).encode(),
           "25_0_0_2017@.jpg": b"25_0_0_2017\xe9.jpg"}  # fmt: skip
    files = {utk(30, 0, 0, 1): face(1)} | {stand_in: face(11 + i) for i, stand_in in enumerate(raw)}
    write_zip_with_raw_names(archive, files, raw)
    labels, rejections = written(admit_source(archive), tmp_path)
    assert sorted(labels["file"]) == sorted([utk(30, 0, 0, 1), "F\u0398tes/" + utk(26, 1, 0, 2)])
    assert list(rejections["file"]) == ["25_0_0_2017\u0398.jpg"]
    assert list(rejections["category"]) == ["malformed_name"]


def test_zip_name_flagged_utf8_that_is_not_is_a_source_error_naming_it(tmp_path):
    """zipfile decodes a name flagged UTF-8 strictly and gives up on the whole archive, so one
    such member cannot be refused alone: the archive is reported, with the name escaped."""
    archive = tmp_path / "bad.zip"
    raw = {"25_0_0_2017\u00e9.jpg": b"25_0_0_2017\xe9\xe9.jpg"}  # "é" is two bytes in UTF-8
    write_zip_with_raw_names(archive, {utk(30, 0, 0, 1): face(1), **dict.fromkeys(raw, b"x")}, raw)
    with pytest.raises(SourceError, match="not valid UTF-8") as error:
        list(iter_source(str(archive), MAX_BYTES, 10, 0))
    assert str(archive) in str(error.value)
    assert "25_0_0_2017\\xe9\\xe9.jpg" in str(error.value)
    str(error.value).encode("utf-8")  # printable as it is


def test_zip_member_header_flagged_utf8_that_is_not_is_rejected_as_corrupt(tmp_path):
    """The central directory, read on opening, is fine; the member's own header, read with its
    bytes, names it in bytes flagged UTF-8 that are not: that one member is rejected."""
    archive = tmp_path / "bad.zip"
    first, second = utk(30, 0, 0, 1), utk(31, 1, 0, 2)
    write_zip(archive, {first: face(1), second: face(2)})
    packed = bytearray(archive.read_bytes())
    assert packed.startswith(b"PK\x03\x04")  # the first member's local header
    packed[7] |= 0x08  # general purpose flag bit 11: the name is UTF-8
    start = packed.index(first.encode())
    packed[start : start + 2] = b"\xe9\xe9"
    archive.write_bytes(bytes(packed))
    labels, rejections = written(admit_source(archive), tmp_path)
    assert list(labels["file"]) == [second]
    assert list(rejections["file"]) == [first]
    assert rejections["reason"][0].startswith("corrupt or unreadable file: 'utf-8' codec")
    assert list(rejections["category"]) == ["corrupt"]


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
    result = admit(iter_source("synthetic", MAX_BYTES, 10, 3), SIZE, MAX_PIXELS, AGE_MAX, False)
    assert result.files_seen == 10
    assert result.images.shape == (10, SIZE, SIZE, 3)
    assert result.rejections.empty
