"""Shards: discovering them under a source root and enumerating their items.

A shard is one entry directly under the source root:

* a **folder** of images (searched recursively); ``name.txt`` beside ``name.jpg`` is its
  caption, ``name.json`` its metadata (a ``caption`` key is used when there is no ``.txt``);
* a **WebDataset-style tar** (``.tar``, ``.tar.gz``, ``.tgz``): members sharing a key (the path
  up to the first dot of the basename) form one sample, ``KEY.txt`` / ``KEY.json`` as above;
* a **manifest** (``.csv`` or ``.parquet``) with a ``path`` column (relative paths are relative
  to the manifest's folder) and an optional ``caption`` column.

The shard's key (its Dagster partition key) is the entry's name, e.g. ``shard-001.tar``.

**When is a shard ready?** Writers are expected to either write under a temporary name and
rename when done, or to finish with a marker. Concretely a shard is *not* picked up while:

* its name starts with ``.`` or ``_`` (hidden / staging, e.g. ``_manifest_images``), or ends in
  ``.tmp``, ``.part``, ``.partial``, ``.incomplete``, ``.inprogress`` or ``.crdownload``;
* it is a folder with no files;
* the newest modification time among its files is younger than ``min_age_s`` seconds
  (the writer may still be appending), unless a folder holds a ``_SUCCESS`` marker file, which
  marks it complete at once.

Shards are treated as immutable once registered: to re-ingest a changed shard, re-materialize
its partition.
"""

import json
import logging
import os
import re
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import polars as pl

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


class ShardError(ValueError):
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


@dataclass
class Item:
    """One enumerated input of a shard: an image candidate, or an input that already failed.

    Attributes:
        source_uri: Path, or ``tar_path#member`` for tar members.
        data: The file's bytes; None when they could not be read (see ``error``).
        caption: Caption from a sidecar or manifest column.
        error: ``(reason_code, detail)`` when the input is unusable before decoding.
    """

    source_uri: str
    data: bytes | None = None
    caption: str | None = None
    error: tuple[str, str] | None = None
    meta: dict[str, object] = field(default_factory=dict)


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


def _visible_files(folder: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "_")))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


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
        files = list(_visible_files(path))
        if not files:
            return ShardInfo(name, resolved, kind, False, "folder has no files yet")
        newest = max(f.stat().st_mtime for f in files)
        if (path / SUCCESS_MARKER).exists():
            return ShardInfo(name, resolved, kind, True, "", newest)
    else:
        newest = path.stat().st_mtime
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


def _read_caption(files: dict[str, bytes | None]) -> str | None:
    txt = files.get(".txt")
    if txt is not None:
        return txt.decode("utf-8", errors="replace").strip() or None
    raw = files.get(".json")
    if raw is not None:
        try:
            meta = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        caption = meta.get("caption") if isinstance(meta, dict) else None
        return str(caption) if caption is not None else None
    return None


def _group_items(
    key_uri: str, members: list[tuple[str, str, bytes | None, tuple[str, str] | None]]
) -> Iterator[Item]:
    """Turn the members of one sample key into items.

    ``members`` holds ``(suffix, uri, data, error)``; sidecars become the caption of every
    image member; a key with sidecars only is one ``orphan_sidecar`` item.
    """
    sidecars = {s: d for s, _, d, _ in members if s in SIDECAR_SUFFIXES}
    images = [m for m in members if m[0] not in SIDECAR_SUFFIXES]
    if not images:
        uris = ", ".join(u for _, u, _, _ in members)
        yield Item(
            source_uri=members[0][1],
            error=("orphan_sidecar", f"sidecar(s) {uris} without an image for key {key_uri!r}"),
        )
        return
    caption = _read_caption(sidecars)
    for _, uri, data, error in images:
        yield Item(source_uri=uri, data=data, caption=caption, error=error)


def _read_file(path: Path, max_bytes: int) -> tuple[bytes | None, tuple[str, str] | None]:
    try:
        size = path.stat().st_size
        if size > max_bytes:
            return None, ("too_large_file", f"{size} bytes > max_file_bytes={max_bytes}")
        return path.read_bytes(), None
    except FileNotFoundError:
        return None, ("missing_file", f"{path} does not exist")
    except OSError as exc:
        return None, ("read_error", f"{type(exc).__name__}: {exc}")


def _iter_folder(shard: ShardInfo, max_bytes: int) -> Iterator[Item]:
    groups: dict[Path, list[Path]] = {}
    for f in _visible_files(shard.path):
        if f.name == SUCCESS_MARKER:
            continue
        groups.setdefault(f.with_suffix(""), []).append(f)
    for key in sorted(groups):
        members = []
        for f in groups[key]:
            suffix = f.suffix.lower()
            if suffix in SIDECAR_SUFFIXES:
                data, err = _read_file(f, 1 << 20)
            else:
                data, err = _read_file(f, max_bytes)
            members.append((suffix, str(f), data, err))
        yield from _group_items(str(key), members)


def _tar_key(name: str) -> tuple[str, str]:
    """WebDataset convention: key = path up to the first dot of the basename."""
    head, _, base = name.rpartition("/")
    stem, dot, rest = base.partition(".")
    key = f"{head}/{stem}" if head else stem
    return key, f"{dot}{rest}".lower()


def _iter_tar(shard: ShardInfo, max_bytes: int) -> Iterator[Item]:
    current_key: str | None = None
    members: list[tuple[str, str, bytes | None, tuple[str, str] | None]] = []
    last_name = ""
    try:
        with tarfile.open(shard.path, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = member.name.rpartition("/")[2]
                if base.startswith(".") or base == SUCCESS_MARKER:
                    continue
                key, suffix = _tar_key(member.name)
                suffix = "." + suffix.rpartition(".")[2] if suffix else ""
                if key != current_key and members:
                    yield from _group_items(f"{shard.path}#{current_key}", members)
                    members = []
                current_key = key
                uri = f"{shard.path}#{member.name}"
                last_name = member.name
                limit = (1 << 20) if suffix in SIDECAR_SUFFIXES else max_bytes
                if member.size > limit:
                    err = ("too_large_file", f"{member.size} bytes > limit {limit}")
                    members.append((suffix, uri, None, err))
                    continue
                fh = tar.extractfile(member)
                data = fh.read() if fh is not None else None
                members.append((suffix, uri, data, None))
            end = tar.offset
        if not shard.path.name.lower().endswith((".gz", ".tgz")):
            # Streaming tarfile takes a header cut short for the end of the archive; a complete
            # tar has two zero blocks after its last member.
            size = shard.path.stat().st_size
            if size < end + 1024:
                msg = f"file is {size} bytes but its last member ends at {end} + 1024 end blocks"
                raise tarfile.ReadError(msg)
    except (tarfile.ReadError, EOFError, OSError) as exc:
        if members:
            yield from _group_items(f"{shard.path}#{current_key}", members)
            members = []
        where = f"after member {last_name!r}" if last_name else "at its start"
        yield Item(
            source_uri=f"{shard.path}#<truncated after {last_name or 'start'}>",
            error=("tar_truncated", f"tar unreadable {where}: {type(exc).__name__}: {exc}"),
        )
        return
    if members:
        yield from _group_items(f"{shard.path}#{current_key}", members)


def read_manifest(path: Path) -> pl.DataFrame:
    """Read a CSV/parquet manifest as a frame with ``path`` and ``caption`` (String) columns.

    Raises:
        ShardError: If the file cannot be parsed or has no recognised path column.
    """
    try:
        if path.name.lower().endswith(".parquet"):
            df = pl.read_parquet(path)
        else:
            df = pl.read_csv(path, infer_schema=False, raise_if_empty=False)
    except Exception as exc:  # polars raises several exception types for bad files
        msg = f"manifest {path} could not be read as {path.suffix}: {type(exc).__name__}: {exc}"
        raise ShardError(msg) from exc
    path_col = next((c for c in MANIFEST_PATH_COLUMNS if c in df.columns), None)
    if path_col is None:
        msg = (
            f"manifest {path} has columns {df.columns} but none of {list(MANIFEST_PATH_COLUMNS)}; "
            "add a 'path' column with image paths (relative to the manifest's folder)"
        )
        raise ShardError(msg)
    cap_col = next((c for c in MANIFEST_CAPTION_COLUMNS if c in df.columns), None)
    caption = pl.col(cap_col).cast(pl.String) if cap_col else pl.lit(None, dtype=pl.String)
    return df.select(pl.col(path_col).cast(pl.String).alias("path"), caption.alias("caption"))


def _iter_manifest(shard: ShardInfo, max_bytes: int) -> Iterator[Item]:
    df = read_manifest(shard.path)
    base = shard.path.parent
    for i, (raw_path, caption) in enumerate(df.iter_rows()):
        caption = caption.strip() or None if isinstance(caption, str) else None
        if raw_path is None or not raw_path.strip():
            uri = f"{shard.path}#row={i}"
            yield Item(uri, caption=caption, error=("missing_file", f"row {i} has an empty path"))
            continue
        raw_path = raw_path.strip().removeprefix("file://")
        if "://" in raw_path:
            detail = f"row {i}: {raw_path!r}; only local paths are read (download first)"
            yield Item(raw_path, caption=caption, error=("unsupported_uri", detail))
            continue
        p = Path(raw_path)
        p = (p if p.is_absolute() else base / p).resolve()
        data, err = _read_file(p, max_bytes)
        yield Item(str(p), data=data, caption=caption, error=err)


def iter_items(shard: ShardInfo, *, max_file_bytes: int = 64 << 20) -> Iterator[Item]:
    """Enumerate every input of a shard in a deterministic order.

    Every input yields exactly one :class:`Item`, including inputs that cannot be used
    (missing files, orphan sidecars, a truncated tar), which carry ``error``. Memory: one
    item's bytes at a time (plus one sample's sidecars for tars).

    Raises:
        ShardError: If the shard as a whole cannot be read (bad manifest).
    """
    if shard.kind == "folder":
        yield from _iter_folder(shard, max_file_bytes)
    elif shard.kind == "tar":
        yield from _iter_tar(shard, max_file_bytes)
    else:
        yield from _iter_manifest(shard, max_file_bytes)
