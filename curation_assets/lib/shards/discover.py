"""Finding shards under a source root: kinds, readiness, partition keys, fingerprints."""

import hashlib
import logging
import os
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from curation_assets.lib.errors import PermanentError

logger = logging.getLogger(__name__)

ShardKind = Literal["folder", "tar", "manifest"]

SHARD_KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
MANIFEST_SUFFIXES = (".csv", ".parquet")
IN_PROGRESS_SUFFIXES = (".tmp", ".part", ".partial", ".incomplete", ".inprogress", ".crdownload")
SIDECAR_SUFFIXES = (".txt", ".json")
SUCCESS_MARKER = "_SUCCESS"
MANIFEST_PATH_COLUMNS = ("path", "image_path", "filepath", "file", "uri")
MANIFEST_CAPTION_COLUMNS = ("caption", "text", "TEXT", "alt")
DEFAULT_MAX_FILE_BYTES = 64 << 20
DEFAULT_MAX_CAPTION_BYTES = 64 << 10


class ShardError(PermanentError, ValueError):
    """A shard as a whole cannot be read (e.g. a manifest without a path column)."""


@dataclass(frozen=True)
class ShardInfo:
    """One shard found under the source root.

    Attributes:
        key: Partition key (the entry's name).
        path: Absolute path of the folder / tar / manifest.
        kind: ``folder``, ``tar`` or ``manifest``.
        ready: Whether it may be ingested now (see module docstring).
        why_not_ready: Reason when not ready (empty string otherwise).
        newest_mtime: Newest modification time among its files (epoch seconds).
    """

    key: str
    path: Path
    kind: ShardKind
    ready: bool
    why_not_ready: str = ""
    newest_mtime: float = 0.0


def file_type(mode: int) -> str:
    """What a non-regular file is, in words."""
    kinds = (
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISDIR, "folder"),
        (stat.S_ISLNK, "symlink"),
    )
    return next((word for test, word in kinds if test(mode)), "special file")


def shard_kind(path: Path) -> ShardKind | None:
    """The kind of shard ``path`` is, or None when it is not a shard."""
    name = path.name.lower()
    if path.is_dir():
        return "folder"
    if name.endswith(TAR_SUFFIXES):
        return "tar"
    if name.endswith(MANIFEST_SUFFIXES):
        return "manifest"
    return None


def visible_files(folder: Path) -> Iterator[Path]:
    """Files under ``folder``, sorted; hidden files and folders starting with '.' or '_' skipped."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "_")))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def _mtime(path: Path) -> float:
    """Modification time of a file of a folder shard; a dangling symlink counts by its own."""
    try:
        return path.stat().st_mtime
    except OSError:
        try:
            return path.lstat().st_mtime
        except OSError:
            return 0.0


def inspect_shard(path: Path, *, min_age_s: float, now: float | None = None) -> ShardInfo | None:
    """Classify one entry of the source root; None when it is not a shard at all."""
    now = time.time() if now is None else now
    name = path.name
    if name.startswith((".", "_")) or name.lower().endswith(IN_PROGRESS_SUFFIXES):
        return None
    kind = shard_kind(path)
    if kind is None:
        return None
    resolved = path.resolve()
    if not SHARD_KEY_PATTERN.match(name):
        return ShardInfo(
            name, resolved, kind, False, "name must match [A-Za-z0-9][A-Za-z0-9._-]{0,127}"
        )
    if kind == "folder":
        files = list(visible_files(path))
        if not files:
            return ShardInfo(name, resolved, kind, False, "folder has no files yet")
        newest = max(_mtime(f) for f in files)
        if (path / SUCCESS_MARKER).exists():
            return ShardInfo(name, resolved, kind, True, "", newest)
    else:
        try:
            st = path.stat()
        except OSError as exc:
            why = f"cannot stat it: {type(exc).__name__}: {exc}"
            return ShardInfo(name, resolved, kind, False, why)
        if not stat.S_ISREG(st.st_mode):
            why = f"is a {file_type(st.st_mode)}, not a regular file; it is never read"
            return ShardInfo(name, resolved, kind, False, why, st.st_mtime)
        newest = st.st_mtime
    age = now - newest
    if age < min_age_s:
        why = f"modified {age:.0f}s ago (< min_age_s={min_age_s:.0f}s); may still be written"
        return ShardInfo(name, resolved, kind, False, why, newest)
    return ShardInfo(name, resolved, kind, True, "", newest)


def discover_shards(
    root: Path, *, min_age_s: float = 60.0, now: float | None = None
) -> list[ShardInfo]:
    """All shards directly under ``root``, ready or not, sorted by key.

    Args:
        root: Source root folder.
        min_age_s: Quiet period after the last modification before a shard is ready.
        now: Current time (epoch seconds), for tests.

    Raises:
        FileNotFoundError: If ``root`` does not exist.
    """
    if not root.is_dir():
        msg = f"source root {root} does not exist or is not a folder; create it or fix the config"
        raise FileNotFoundError(msg)
    found = (inspect_shard(p, min_age_s=min_age_s, now=now) for p in sorted(root.iterdir()))
    return [s for s in found if s is not None]


def shard_info(root: Path, key: str) -> ShardInfo:
    """The shard ``key`` under ``root`` (readiness not checked).

    Raises:
        FileNotFoundError: If no such shard exists.
    """
    info = inspect_shard(root / key, min_age_s=0.0) if (root / key).exists() else None
    if info is None:
        msg = (
            f"shard {key!r} not found under source root {root}; it was registered as a "
            "partition but its folder/tar/manifest is gone or renamed"
        )
        raise FileNotFoundError(msg)
    return info


def source_fingerprint(path: Path) -> str:
    """A short hash of a shard's files: relative path, size and mtime of each.

    A folder is walked (its files are stat'ed, not read); a tar or manifest is one file (the
    files a manifest lists are not stat'ed). ``curation run`` compares it with the last
    ingest's to skip unchanged shards.
    """
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        rel = f.relative_to(path) if path.is_dir() else Path(f.name)
        h.update(f"{os.fsencode(rel)!r}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]
