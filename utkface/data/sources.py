"""Where raw UTKFace files come from: a folder, a .zip, a .tar.gz, or the synthetic demo set.

Each source yields `RawFile`s: a name relative to the source plus a way to read its bytes, or a
refusal (unsafe archive member, oversized file) that ingest reports instead of reading.
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

SYNTHETIC = "synthetic"
ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")
# What reading a corrupt, truncated or encrypted archive (member) raises.
READ_ERRORS = (OSError, EOFError, RuntimeError, zlib.error, zipfile.BadZipFile, tarfile.TarError)


class SourceError(ValueError):
    """The configured source does not exist or is not a supported kind."""


@dataclass(frozen=True)
class RawFile:
    """One candidate file. `refusal` is set when it must not be read at all."""

    name: str
    read: Callable[[], bytes]
    refusal: str | None = None


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _unsafe_member(name: str) -> str | None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        return "unsafe archive member: absolute path refused"
    if ".." in path.parts:
        return "unsafe archive member: '..' in path refused (path traversal)"
    return None


def _too_big(size: int, max_bytes: int) -> str | None:
    if size > max_bytes:
        return f"file too large: {size} bytes exceeds max_file_bytes={max_bytes}"
    return None


def _outside(path: Path, real_root: Path) -> str | None:
    """Why a folder entry must not be read: a link that leads out of the source folder (or
    nowhere). Links inside it, and a source folder that is itself a link, are fine."""
    if not path.exists():
        return "unsafe path: broken link refused"
    real = path.resolve()
    if not real.is_relative_to(real_root):
        return f"unsafe path: link out of the source folder refused (it leads to {real})"
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


def _zip_files(archive: Path, max_bytes: int) -> Iterator[RawFile]:
    try:
        zf = zipfile.ZipFile(archive)
    except READ_ERRORS as error:
        raise _unreadable(archive, error) from None
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
                refusal = "unsafe archive member: links and devices refused"
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
        yield from _folder_files(path, max_bytes)
    elif path.name.lower().endswith(".zip"):
        yield from _zip_files(path, max_bytes)
    elif path.name.lower().endswith(ARCHIVE_SUFFIXES):
        yield from _tar_files(path, max_bytes)
    else:
        raise SourceError(
            f"ingest.source: {path} is neither a folder nor a .zip / .tar.gz / .tar archive"
        )
