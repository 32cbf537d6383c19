"""Where the project's MLflow store is, and the champion remembered beside it: what a cold
`utkface predict` needs before it answers, without importing MLflow (about 1 s of a cold
start).

`tracking_uri` is `MLFLOW_TRACKING_URI`, by default a SQLite store in the repository root.
Asking a SQLite store for a champion costs about half a second (SQLAlchemy, MLflow's schema
check), so `registry.champion_files` keeps the answer beside such a store
(`paths.CHAMPION_CACHE`) with the store's `store_stamp`, and `cached_champion` reuses it while
the stamp holds and the folder is still in the store's artifacts: any write to the store, such
as a promotion, makes the next call ask the store again.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from utkface import paths


def repo_root(start: Path | None = None) -> Path:
    """The user's repository root, also from inside a DVC queue's temporary workspace."""
    here = (start or Path.cwd()).resolve()
    parts = here.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return here


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / paths.MLFLOW_DB}"


def sqlite_store(uri: str) -> Path | None:
    """The file of a SQLite store; None for any other store."""
    return Path(uri.removeprefix("sqlite:///")).absolute() if uri.startswith("sqlite:///") else None


def local_path(location: str) -> Path | None:
    """The folder of a local artifact location; None for a remote one (s3://, http://...)."""
    parsed = urlparse(location)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path)).absolute()
    return None


def _cache_of(store: Path | None) -> Path | None:
    """The champion cache beside a SQLite store that exists; None for any other store."""
    return store.parent / paths.CHAMPION_CACHE if store is not None and store.is_file() else None


def store_stamp() -> list[int] | None:
    """The `_stamp` of the project's store; None when it is not a SQLite file."""
    store = sqlite_store(tracking_uri())
    return None if _cache_of(store) is None else _stamp(store)


def _stamp(store: Path) -> list[int]:
    """What a write to a SQLite store changes: the change counter in its header (which every
    committed write increments, even one within the file clock's tick), and the size and
    modification time of the store and of its write-ahead log."""
    with store.open("rb") as handle:
        counter = int.from_bytes(handle.read(28)[24:], "big")
    stats = [f.stat() for f in (store, store.with_name(store.name + "-wal")) if f.exists()]
    return [counter, *(n for stat in stats for n in (stat.st_size, stat.st_mtime_ns))]


def cached_champion(name: str) -> str | None:
    """The champion folder of `name` remembered beside the store, while it holds; else None."""
    store = sqlite_store(tracking_uri())
    if (cache := _cache_of(store)) is None:
        return None
    kept = _read_cache(cache).get(name)
    if not isinstance(kept, dict) or kept.get("store") != str(store):
        return None
    folder = Path(str(kept.get("files")))
    fresh = kept.get("stamp") == _stamp(store)
    if fresh and folder.is_dir() and folder.is_relative_to(store.parent / paths.MLFLOW_ARTIFACTS):
        return str(folder)
    return None


def remember_champion(name: str, files: str, stamp: list[int] | None) -> None:
    """Keep `files`, the champion folder of `name` that the store gave when it had `stamp`,
    beside a SQLite store; nothing for another store or a remote folder."""
    store = sqlite_store(tracking_uri())
    if (cache := _cache_of(store)) is None or stamp is None or not Path(files).is_dir():
        return
    entries = _read_cache(cache)
    entries[name] = {"store": str(store), "stamp": stamp, "files": files}
    with contextlib.suppress(OSError):  # a read-only project still predicts
        partial = cache.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(entries, indent=1))
        partial.replace(cache)


def _read_cache(cache: Path) -> dict[str, Any]:
    try:
        entries = json.loads(cache.read_text())
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}
