"""Where raw UTKFace files come from: a folder, a .zip, a .tar.gz, or the synthetic demo set.

Each source yields `RawFile`s: a name relative to the source plus a way to read its bytes, or a
refusal (unsafe archive member, oversized file, name that is not UTF-8) that ingest reports
instead of reading. Every name and refusal is text that encodes as UTF-8, so the labels parquet
and the rejections CSV can always be written.
Archives are read member by member in memory; nothing is extracted to disk, so a member named
``../../etc/passwd`` can never be written anywhere. In a folder, a file or link whose real path
lies outside the folder is refused unread.
"""

from __future__ import annotations

import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from utkface.data.labels import IMAGE_SUFFIXES
from utkface.data.rejections import Category

SYNTHETIC = "synthetic"
ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")
# What reading a corrupt, truncated or encrypted archive (member) raises; zipfile raises
# UnicodeDecodeError for a name flagged UTF-8 that is not, in a member's own header too.
READ_ERRORS = (
    OSError,
    EOFError,
    RuntimeError,
    UnicodeDecodeError,
    zlib.error,
    zipfile.BadZipFile,
    tarfile.TarError,
)


class SourceError(ValueError):
    """The configured source does not exist or is not a supported kind."""


@dataclass(frozen=True)
class Refusal:
    """Why a file must not be read at all: in words, and its category."""

    reason: str
    category: Category


@dataclass(frozen=True)
class RawFile:
    """One candidate file. `refusal` is set when it must not be read at all."""

    name: str
    read: Callable[[], bytes]
    refusal: Refusal | None = None


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _unsafe_member(name: str) -> Refusal | None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        return Refusal("unsafe archive member: absolute path refused", Category.UNSAFE_PATH)
    if ".." in path.parts:
        return Refusal(
            "unsafe archive member: '..' in path refused (path traversal)", Category.UNSAFE_PATH
        )
    return None


def _escaped(name: str) -> str:
    """`name` with each byte that is not UTF-8 written as a backslash escape (``\\xe9``).

    Folders and tar archives hand such bytes over as surrogate escapes (PEP 383), which no
    UTF-8 writer accepts; this is the form they are shown in."""
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no decoder escaped: show it as Python writes it
        return name.encode("utf-8", "backslashreplace").decode()
    return raw.decode("utf-8", "backslashreplace")


def _utf8_named(raw: RawFile) -> RawFile:
    """`raw`, or, if its name is not valid UTF-8, a refusal under the escaped name: such a name
    cannot be written to the labels (pyarrow raises), and ingesting it under the escaped name
    would list a file that does not exist."""
    try:
        raw.name.encode("utf-8")
    except UnicodeEncodeError:
        shown = _escaped(raw.name)
        refusal = Refusal(f"file name is not valid UTF-8: {shown}", Category.NAME_NOT_UTF8)
        return RawFile(shown, raw.read, refusal)
    return raw


def _too_big(size: int, max_bytes: int) -> Refusal | None:
    if size > max_bytes:
        return Refusal(
            f"file too large: {size} bytes exceeds max_file_bytes={max_bytes}", Category.TOO_LARGE
        )
    return None


def _outside(path: Path, real_root: Path) -> Refusal | None:
    """Why a folder entry must not be read: a link that leads out of the source folder (or
    nowhere). Links inside it, and a source folder that is itself a link, are fine."""
    if not path.exists():
        return Refusal("unsafe path: broken link refused", Category.UNSAFE_PATH)
    real = path.resolve()
    if not real.is_relative_to(real_root):
        return Refusal(
            "unsafe path: link out of the source folder refused "
            f"(it leads to {_escaped(str(real))})",
            Category.UNSAFE_PATH,
        )
    return None


def _folder_files(root: Path, max_bytes: int) -> Iterator[RawFile]:
    real_root = root.resolve()
    for path in sorted(p for p in root.rglob("*") if p.is_symlink() or p.is_file()):
        name = path.relative_to(root).as_posix()
        refusal = _outside(path, real_root)
        if path.is_dir():  # a link to a folder, which rglob does not enter
            if refusal:
                yield RawFile(name, path.read_bytes, refusal)
            continue
        yield RawFile(name, path.read_bytes, refusal or _too_big(path.stat().st_size, max_bytes))


def _unreadable(archive: Path, error: BaseException) -> SourceError:
    return SourceError(f"ingest.source: {archive} is not a readable archive: {error}")


def _open_zip(archive: Path) -> zipfile.ZipFile:
    """The archive, opened. zipfile reads names without the UTF-8 flag as code page 437, which
    decodes any byte, but a name flagged UTF-8 that is not stops it reading the whole archive,
    so that member cannot be refused alone: the archive is reported, naming it."""
    try:
        return zipfile.ZipFile(archive)
    except UnicodeDecodeError as error:
        name = error.object.decode("utf-8", "backslashreplace")
        raise SourceError(
            f"ingest.source: {archive}: member name {name} is flagged UTF-8 but is not valid "
            "UTF-8; repack the archive with that file renamed"
        ) from None
    except READ_ERRORS as error:
        raise _unreadable(archive, error) from None


def _zip_files(archive: Path, max_bytes: int) -> Iterator[RawFile]:
    zf = _open_zip(archive)
    with zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            if info.is_dir():
                continue
            refusal = _unsafe_member(info.filename) or _too_big(info.file_size, max_bytes)
            yield RawFile(info.filename, lambda info=info: zf.read(info), refusal)


def _tar_files(archive: Path, max_bytes: int) -> Iterator[RawFile]:
    with ExitStack() as stack:
        try:
            tf = stack.enter_context(tarfile.open(archive, mode="r:*"))
            members = sorted(tf.getmembers(), key=lambda m: m.name)  # reads the whole archive
        except READ_ERRORS as error:
            raise _unreadable(archive, error) from None
        for member in members:
            if member.isdir():
                continue
            refusal = _unsafe_member(member.name)
            if refusal is None and not member.isfile():
                refusal = Refusal(
                    "unsafe archive member: links and devices refused", Category.UNSAFE_PATH
                )
            refusal = refusal or _too_big(member.size, max_bytes)

            def read(member: tarfile.TarInfo = member) -> bytes:
                handle = tf.extractfile(member)
                return handle.read() if handle else b""

            yield RawFile(member.name, read, refusal)


def describe(source: str) -> str:
    """What kind of source a params value names, for logs and metrics."""
    if source == SYNTHETIC:
        return "synthetic demo set"
    lower = source.lower()
    if lower.endswith(".zip"):
        return "zip archive"
    if lower.endswith(ARCHIVE_SUFFIXES):
        return "tar archive"
    return "folder"


def iter_source(source: str, max_bytes: int, synthetic_count: int, seed: int) -> Iterator[RawFile]:
    """Every file of the configured source, in a stable order."""
    if source == SYNTHETIC:
        from utkface.data.synthetic import synthetic_files

        for name, data in synthetic_files(synthetic_count, seed):
            yield RawFile(name, lambda data=data: data)
        return
    path = Path(source).expanduser()
    if not path.exists():
        raise SourceError(f"ingest.source: {path} does not exist")
    if path.is_dir():
        files = _folder_files(path, max_bytes)
    elif path.name.lower().endswith(".zip"):
        files = _zip_files(path, max_bytes)
    elif path.name.lower().endswith(ARCHIVE_SUFFIXES):
        files = _tar_files(path, max_bytes)
    else:
        raise SourceError(
            f"ingest.source: {path} is neither a folder nor a .zip / .tar.gz / .tar archive"
        )
    yield from map(_utf8_named, files)
