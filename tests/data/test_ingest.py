"""Admission (`utkface.data.admission`): good files become one image cache plus labels; every
bad input is rejected with a reason and a category, never a crash. The `ingest` stage's main()
writes its outputs atomically."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from raw_files import spy
from tiny import AGE_MAX

from stages.ingest import main
from utkface import paths
from utkface.data.admission import Admission, admit, summarize
from utkface.data.imaging import load_image
from utkface.data.labels import LABEL_COLUMNS
from utkface.data.rejections import Category
from utkface.data.sources import RawFile, iter_source

SIZE = 32
MAX_PIXELS = 10_000  # 48x48 faces pass, the 200x200 "bomb" does not
MAX_BYTES = 20_000  # every fixture file is smaller, except OVERSIZED


def utk(age: int, gender: int, race: int, n: int) -> str:
    """A UTKFace file name with a 17-digit timestamp."""
    return f"{age}_{gender}_{race}_2017010912{n:07d}.jpg.chip.jpg"


def encode(image: Image.Image, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def solid(color: tuple[int, int, int], size: int = 48) -> bytes:
    return encode(Image.new("RGB", (size, size), color))


def noise(size: int, seed: int, fmt: str = "JPEG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels), fmt)


# Good RGB JPEGs: name -> (colour, age, gender, race)
GOOD = {
    utk(20, 0, 0, 1): ((200, 30, 60), 20, 0, 0),
    utk(35, 1, 1, 2): ((20, 180, 40), 35, 1, 1),
    utk(1, 1, 2, 3): ((40, 60, 220), 1, 1, 2),
    utk(116, 0, 4, 4): ((230, 230, 20), 116, 0, 4),
}
FIRST = utk(20, 0, 0, 1)

# Converted to RGB: name -> (image, format, counter key)
CONVERTED = {
    utk(40, 0, 3, 10): (Image.new("L", (48, 48), 128), "JPEG", "JPEG L"),
    utk(41, 1, 0, 11): (Image.new("CMYK", (48, 48), (0, 255, 255, 0)), "JPEG", "JPEG CMYK"),
    utk(42, 0, 1, 12): (Image.new("RGB", (48, 48), (250, 0, 0)).quantize(4), "PNG", "PNG P"),
    utk(43, 1, 2, 13): (Image.new("RGBA", (48, 48), (0, 0, 250, 100)), "PNG", "PNG RGBA"),
}

TRUNCATED_JPEG = noise(48, 1)
OVERSIZED = utk(50, 0, 0, 30)

# Bad inputs: name -> (bytes, expected text in the reason, category)
BAD = {
    "61_1_20170109142408075.jpg.chip.jpg": (
        solid((1, 2, 3)),
        "malformed name: expected age_gender_race_timestamp (4 fields), found 3 field(s)",
        "malformed_name",
    ),
    utk(0, 0, 0, 20): (solid((9, 9, 9)), "age 0 out of range [1, 116]", "label_out_of_range"),
    utk(130, 1, 0, 21): (solid((8, 8, 8)), "age 130 out of range", "label_out_of_range"),
    utk(30, 2, 0, 22): (solid((7, 7, 7)), "gender 2 not in {0, 1}", "label_out_of_range"),
    utk(30, 0, 7, 23): (solid((6, 6, 6)), "race 7 not in {0..4}", "label_out_of_range"),
    utk(31, 0, 0, 24): (b"", "empty file (0 bytes)", "empty"),
    utk(32, 0, 0, 25): (TRUNCATED_JPEG[: len(TRUNCATED_JPEG) // 2], "truncated", "corrupt"),
    utk(33, 0, 0, 26): (b"just some text\n" * 20, "not an image (unrecognised format)",
                        "not_an_image"),
    # the same bytes as FIRST under another (valid) name, sorted after it
    utk(90, 1, 1, 27): (solid(GOOD[FIRST][0]), f"duplicate image: same bytes as {FIRST}",
                        "duplicate"),
    # the same image id as FIRST in another folder (Kaggle ships UTKFace twice)
    f"zz_copy/{FIRST}": (solid((5, 5, 5)), f"duplicate image id: same name as {FIRST}",
                         "duplicate"),
    "README.txt": (b"UTKFace\n", "not an image file name", "not_an_image"),
    utk(34, 0, 0, 28): (
        solid((4, 4, 4), size=200),
        f"decompression bomb refused: 200x200 pixels exceeds {MAX_PIXELS}",
        "decompression_bomb",
    ),
    OVERSIZED: (noise(100, 2, "PNG"), "file too large: ", "too_large"),
}  # fmt: skip


def write_folder(root: Path) -> Path:
    root.mkdir(parents=True)
    files = {name: solid(colour) for name, (colour, *_) in GOOD.items()}
    files |= {name: encode(image, fmt) for name, (image, fmt, _) in CONVERTED.items()}
    files |= {name: data for name, (data, *_) in BAD.items()}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    assert len(BAD[OVERSIZED][0]) > MAX_BYTES
    assert all(len(d) <= MAX_BYTES for n, d in files.items() if n != OVERSIZED)
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("ingest") / "UTKFace")


@pytest.fixture(scope="module")
def run(folder) -> tuple[Admission, list[str]]:
    read: list[str] = []
    files = spy(iter_source(str(folder), MAX_BYTES, 10, 0), read)
    return admit(files, SIZE, MAX_PIXELS, AGE_MAX, progress=False), read


@pytest.fixture(scope="module")
def result(run) -> Admission:
    return run[0]


def test_good_files_are_ingested_with_their_labels(result):
    expected = {name: (age, gender, race) for name, (_, age, gender, race) in GOOD.items()}
    expected |= {name: tuple(int(f) for f in name.split("_")[:3]) for name in CONVERTED}
    labels = result.labels
    assert list(labels.columns) == list(LABEL_COLUMNS)
    assert sorted(labels["file"]) == sorted(expected)
    for row in labels.itertuples():
        assert (row.age, row.gender, row.race) == expected[row.file]
        assert row.image_id == row.file.removesuffix(".jpg.chip.jpg")
        assert row.timestamp == row.image_id.split("_")[3] and len(row.timestamp) == 17
    assert labels["image_id"].is_unique


def test_image_cache_shape_dtype_and_index(result):
    n = len(GOOD) + len(CONVERTED)
    assert result.images.shape == (n, SIZE, SIZE, 3)
    assert result.images.dtype == np.uint8
    assert sorted(result.labels["cache_index"]) == list(range(n))


def test_each_row_points_at_its_own_image(result):
    by_file = result.labels.set_index("file")["cache_index"]
    for name, (colour, *_) in GOOD.items():
        mean = result.images[by_file[name]].reshape(-1, 3).mean(axis=0)
        np.testing.assert_allclose(mean, colour, atol=6)


@pytest.mark.parametrize("name", list(BAD))
def test_each_bad_input_is_rejected_with_reason_and_category(result, name):
    _, reason_part, category = BAD[name]
    rows = result.rejections[result.rejections["file"] == name]
    assert len(rows) == 1, result.rejections
    assert reason_part in rows["reason"].iloc[0]
    assert rows["category"].iloc[0] == category
    assert name not in set(result.labels["file"])


def test_every_file_is_ingested_or_rejected_exactly_once(result):
    assert result.files_seen == len(GOOD) + len(CONVERTED) + len(BAD)
    assert result.files_seen == len(result.labels) + len(result.rejections)
    assert set(result.labels["file"]).isdisjoint(result.rejections["file"])
    assert list(result.rejections.columns) == ["file", "reason", "category"]
    assert "other" not in set(result.rejections["category"])


def test_grayscale_cmyk_palette_and_alpha_are_converted(result):
    assert dict(result.converted) == {key: 1 for *_, key in CONVERTED.values()}
    by_file = result.labels.set_index("file")["cache_index"]
    gray = result.images[by_file[utk(40, 0, 3, 10)]].astype(int)
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    assert abs(gray.mean() - 128) < 3
    palette = result.images[by_file[utk(42, 0, 1, 12)]].reshape(-1, 3).mean(axis=0)
    np.testing.assert_allclose(palette, (250, 0, 0), atol=3)
    rgba = result.images[by_file[utk(43, 1, 2, 13)]].reshape(-1, 3).mean(axis=0)
    np.testing.assert_allclose(rgba, (0, 0, 250), atol=3)  # alpha dropped, colour kept


def test_refused_files_are_never_read(run):
    _, read = run
    assert OVERSIZED not in read
    assert FIRST in read


def test_summarize_counts_add_up(result):
    summary = summarize(result, "some/folder", SIZE)
    assert "seconds" not in summary  # DVC-tracked: what was ingested, not how long it took
    assert summary["source_kind"] == "folder"
    assert summary["files_seen"] == result.files_seen
    assert summary["images"] + summary["rejected"] == summary["files_seen"]
    assert sum(summary["rejected_by_category"].values()) == summary["rejected"]
    assert summary["rejected_by_category"]["label_out_of_range"] == 4
    assert summary["rejected_by_category"]["duplicate"] == 2
    assert summary["converted_to_rgb"] == {key: 1 for *_, key in CONVERTED.values()}
    assert (summary["age_min"], summary["age_max"]) == (1, 116)
    assert summary["gender_counts"] == {"0": 4, "1": 4}
    json.dumps(summary)  # JSON-ready


def test_no_files_gives_empty_but_well_formed_outputs():
    result = admit([], SIZE, MAX_PIXELS, AGE_MAX, progress=False)
    assert result.images.shape == (0, SIZE, SIZE, 3) and result.images.dtype == np.uint8
    assert list(result.labels.columns) == list(LABEL_COLUMNS) and result.labels.empty
    assert list(result.rejections.columns) == ["file", "reason", "category"]
    assert result.files_seen == 0


def test_same_bytes_after_a_rejected_copy_is_still_ingested():
    """Only ingested images count as originals for duplicate detection."""
    data = solid((100, 100, 100))
    files = [
        RawFile("61_1_20170109142408075.jpg.chip.jpg", lambda: data),  # malformed, not ingested
        RawFile(utk(22, 1, 0, 1), lambda: data),
        RawFile(utk(23, 1, 0, 2), lambda: data),
    ]
    result = admit(files, SIZE, MAX_PIXELS, AGE_MAX, progress=False)
    assert list(result.labels["file"]) == [utk(22, 1, 0, 1)]
    assert list(result.rejections["category"]) == ["malformed_name", "duplicate"]


def test_non_square_images_are_centre_cropped():
    stripes = Image.new("RGB", (90, 30), (255, 0, 0))
    stripes.paste((0, 255, 0), (30, 0, 60, 30))
    stripes.paste((0, 0, 255), (60, 0, 90, 30))
    array = load_image(encode(stripes, "PNG"), SIZE, MAX_PIXELS)
    assert array.shape == (SIZE, SIZE, 3)
    np.testing.assert_allclose(array[:, 2:-2].reshape(-1, 3).mean(axis=0), (0, 255, 0), atol=2)


def test_max_pixels_is_the_callers_limit_and_pillows_guard_stays():
    big = encode(Image.new("1", (6000, 5000), 1), "PNG")  # 30 Mpx, a few KB
    file = RawFile(utk(30, 0, 0, 1), lambda: big)
    result = admit([file], SIZE, 50_000_000, AGE_MAX, progress=False)
    assert result.rejections.empty, result.rejections.to_dict("records")
    assert result.images.shape == (1, SIZE, SIZE, 3)
    refused = admit([file], SIZE, 25_000_000, AGE_MAX, progress=False)
    assert list(refused.rejections["category"]) == ["decompression_bomb"]
    assert Image.MAX_IMAGE_PIXELS is not None  # Pillow's guard is not switched off process-wide


def test_corrupt_archive_member_is_rejected_not_fatal(tmp_path):
    broken, fine = solid((10, 200, 10)), solid((200, 10, 10))
    archive = tmp_path / "faces.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(utk(20, 0, 0, 1), broken)
        zf.writestr(utk(21, 1, 0, 2), fine)
    data = bytearray(archive.read_bytes())
    data[data.find(broken) + len(broken) // 2] ^= 0xFF  # the CRC no longer matches
    archive.write_bytes(bytes(data))
    result = admit(iter_source(str(archive), MAX_BYTES, 10, 0), SIZE, MAX_PIXELS, AGE_MAX, False)
    assert list(result.labels["file"]) == [utk(21, 1, 0, 2)]
    assert list(result.rejections["file"]) == [utk(20, 0, 0, 1)]
    assert result.rejections["category"].iloc[0] == "corrupt"


# A known bad file for each category, and the category written for it: the values that
# metrics/ingest.json counts and the rejections CSV lists, whatever the messages say.
LINK_OUT = utk(60, 0, 0, 40)
NOT_UTF8 = b"F\xe9tes/" + utk(26, 1, 0, 2).encode()
PINNED = {
    "61_1_20170109142408075.jpg.chip.jpg": "malformed_name",
    utk(0, 0, 0, 20): "label_out_of_range",
    utk(31, 0, 0, 24): "empty",
    utk(32, 0, 0, 25): "corrupt",
    utk(33, 0, 0, 26): "not_an_image",
    utk(90, 1, 1, 27): "duplicate",
    utk(34, 0, 0, 28): "decompression_bomb",
    OVERSIZED: "too_large",
    LINK_OUT: "unsafe_path",
    NOT_UTF8.decode("utf-8", "backslashreplace"): "name_not_utf8",
}


def test_each_category_keeps_its_value_for_a_known_bad_file(tmp_path):
    source = write_folder(tmp_path / "UTKFace")
    (source / LINK_OUT).symlink_to("/etc/passwd")
    os.mkdir(os.path.join(os.fsencode(source), b"F\xe9tes"))
    with open(os.path.join(os.fsencode(source), NOT_UTF8), "wb") as handle:
        handle.write(solid((4, 5, 6)))
    result = admit(iter_source(str(source), MAX_BYTES, 10, 0), SIZE, MAX_PIXELS, AGE_MAX, False)
    written = dict(zip(result.rejections["file"], result.rejections["category"], strict=True))
    assert {name: written[name] for name in PINNED} == PINNED
    assert set(PINNED.values()) == set(Category)  # every category pinned


# ---------------------------------------------------------------------------------------- main()


def write_params(root: Path, source: Path | str, **ingest_params: object) -> None:
    ingest_cfg = {"source": str(source), "image_size": SIZE, **ingest_params}
    (root / "params.yaml").write_text(yaml.safe_dump({"ingest": ingest_cfg}))


def test_main_writes_consistent_outputs(folder, tmp_path, monkeypatch, capsys):
    write_params(tmp_path, folder, max_file_bytes=MAX_BYTES, max_image_pixels=MAX_PIXELS)
    monkeypatch.chdir(tmp_path)
    main()
    images = np.load(paths.IMAGES)
    labels = pd.read_parquet(paths.LABELS)
    rejections = pd.read_csv(paths.INGEST_REJECTIONS)
    summary = json.loads(paths.INGEST_METRICS.read_text())

    assert images.shape == (len(GOOD) + len(CONVERTED), SIZE, SIZE, 3)
    assert images.dtype == np.uint8
    assert len(labels) == images.shape[0]
    assert list(labels.columns) == list(LABEL_COLUMNS)
    assert sorted(labels["cache_index"]) == list(range(len(labels)))
    assert list(rejections.columns) == ["file", "reason", "category"]
    assert sorted(rejections["file"]) == sorted(BAD)
    assert summary["images"] == len(labels)
    assert summary["rejected"] == len(rejections)
    assert summary["images"] + summary["rejected"] == summary["files_seen"]
    assert summary["files_seen"] == len(GOOD) + len(CONVERTED) + len(BAD)
    assert summary["rejected_by_category"] == rejections["category"].value_counts().to_dict()
    assert summary["source"] == str(folder) and summary["image_size"] == SIZE
    leftovers = [p.name for p in tmp_path.rglob("*") if ".partial" in p.name]
    assert leftovers == []
    assert str(paths.INGEST_REJECTIONS) in capsys.readouterr().out


def test_main_reports_a_name_that_is_not_utf8_and_writes_the_rest(tmp_path, monkeypatch):
    """A Latin-1 name (0xe9 is "é") from an old folder made pyarrow raise UnicodeEncodeError
    while writing the labels; now it is one rejection among the outputs."""
    source = tmp_path / "UTKFace"
    source.mkdir()
    (source / FIRST).write_bytes(solid((1, 2, 3)))
    latin1 = b"F\xe9tes/" + utk(26, 1, 0, 2).encode()  # valid labels, in a Latin-1 folder
    os.mkdir(os.path.join(os.fsencode(source), b"F\xe9tes"))
    with open(os.path.join(os.fsencode(source), latin1), "wb") as handle:
        handle.write(solid((4, 5, 6)))
    write_params(tmp_path, source)
    monkeypatch.chdir(tmp_path)
    main()
    assert list(pd.read_parquet(paths.LABELS)["file"]) == [FIRST]
    rejections = pd.read_csv(paths.INGEST_REJECTIONS)
    shown = latin1.decode("utf-8", "backslashreplace")
    assert rejections.to_dict("records") == [
        {"file": shown, "reason": f"file name is not valid UTF-8: {shown}",
         "category": "name_not_utf8"}
    ]  # fmt: skip
    assert json.loads(paths.INGEST_METRICS.read_text())["rejected_by_category"] == {
        "name_not_utf8": 1
    }


def test_main_exits_non_zero_without_a_usable_image(tmp_path, monkeypatch):
    source = tmp_path / "junk"
    source.mkdir()
    (source / "README.txt").write_text("no faces here\n")
    (source / "61_1_20170109142408075.jpg.chip.jpg").write_bytes(solid((1, 1, 1)))
    (source / utk(20, 0, 0, 1)).write_bytes(b"")
    write_params(tmp_path, source)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code not in (None, 0)
    assert "no usable image" in str(exit_.value.code) and "3 files seen" in str(exit_.value.code)
    assert not paths.IMAGES.exists()
    assert not paths.INGEST_METRICS.exists()
    assert not list(tmp_path.rglob("*.npy"))


def test_main_exits_with_the_path_of_a_missing_source(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    write_params(tmp_path, missing)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main()
    assert str(missing) in str(exit_.value.code)
    assert not paths.IMAGES.exists()
