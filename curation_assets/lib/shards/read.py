"""Reading a shard's inputs safely: regular files only, bounded, inside the roots.

See the package docstring of :mod:`curation_assets.lib.shards` for the rules.
"""

import codecs
import errno
import json
import logging
import os
import stat
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import polars as pl

from curation_assets.lib.shards.discover import (
    DEFAULT_MAX_CAPTION_BYTES,
    DEFAULT_MAX_FILE_BYTES,
    MANIFEST_CAPTION_COLUMNS,
    MANIFEST_PATH_COLUMNS,
    SIDECAR_SUFFIXES,
    SUCCESS_MARKER,
    ShardError,
    ShardInfo,
    file_type,
    visible_files,
)

logger = logging.getLogger(__name__)

# A .txt sidecar is read up to the caption cap plus this much (trailing blanks are stripped).
_CAPTION_READ_SLACK = 4 << 10
_READ_CHUNK = 1 << 20
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)


@dataclass
class Item:
    """One enumerated input of a shard: an image candidate, or an input that already failed.

    Attributes:
        source_uri: Path, or ``tar_path#member`` for tar members.
        data: The file's bytes; None when they could not be read (see ``error``).
        caption: Caption from a sidecar or manifest column (at most ``max_caption_bytes``).
        error: ``(reason_code, detail)`` when the input is unusable before decoding.
        notes: Non-fatal remarks on a usable input, e.g. that its caption was truncated or its
            sidecar could not be used.
    """

    source_uri: str
    data: bytes | None = None
    caption: str | None = None
    error: tuple[str, str] | None = None
    meta: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def is_utf8(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8 (no lone surrogates from undecodable names)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def escape_text(text: str) -> str:
    r"""``text`` made writable as UTF-8; valid text is returned as is.

    Undecodable file-name bytes (surrogate escapes) are shown as ``\xff``, other lone
    surrogates as ``\udcxx``.
    """
    if is_utf8(text):
        return text
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def cap_caption(text: str, max_bytes: int, *, total_bytes: int | None = None) -> tuple[str, str]:
    r"""``text`` cut to at most ``max_bytes`` UTF-8 bytes at a character boundary.

    Returns ``(caption, note)``; ``note`` is empty when nothing changed. ``total_bytes`` is the
    size of the source when ``text`` is already only a prefix of it (a sidecar read up to the
    cap): the result then always counts as truncated. Lone surrogates (which cannot be written
    as UTF-8, e.g. ``"\udcff"`` in a JSON sidecar) are spelled out as ``\udcff``, with a note.
    """
    notes = []
    if not is_utf8(text):
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
        notes.append("caption held lone surrogates, written as \\udcxx escapes")
    raw = text.encode("utf-8")
    if len(raw) > max_bytes or total_bytes is not None:
        text = raw[:max_bytes].decode("utf-8", errors="ignore")  # drops a split last character
        total = max(total_bytes or 0, len(raw))
        notes.append(
            f"caption truncated to {len(text.encode('utf-8'))} of {total} bytes "
            f"(max_caption_bytes={max_bytes})"
        )
    return text, "; ".join(notes)


def _resolve_roots(root: Path, allowed_roots: Iterable[str | os.PathLike[str]]) -> tuple[str, ...]:
    """The shard's own root first, then the explicitly allowed roots, all fully resolved."""
    return tuple(dict.fromkeys(os.path.realpath(r) for r in (root, *allowed_roots)))


def _inside(path: str, roots: tuple[str, ...]) -> bool:
    return any(os.path.commonpath([path, r]) == r for r in roots)


def _outside_detail(shown: str, real: str, roots: tuple[str, ...]) -> str:
    root, *others = roots
    allowed = f" nor in allowed_roots {others}" if others else ""
    return (
        f"{shown} resolves to {escape_text(real)}, outside the shard's root {root}{allowed}; "
        "not read (pass allowed_roots to admit another folder)"
    )


def _bad_name_error(shown: str) -> tuple[str, str]:
    return (
        "bad_file_name",
        f"file name {shown} is not valid UTF-8 (undecodable bytes shown as \\xNN); "
        "rename it to ingest it",
    )


@dataclass
class _Read:
    """Result of :func:`_read_file`: bytes (or an error) and the file's size."""

    data: bytes | None = None
    error: tuple[str, str] | None = None
    size: int = 0


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    remaining = limit
    while remaining > 0:
        try:
            chunk = os.read(fd, min(remaining, _READ_CHUNK))
        except BlockingIOError:  # cannot happen for a regular file; never wait for data
            break
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _read_file(path: str, max_bytes: int, roots: tuple[str, ...], *, prefix: bool = False) -> _Read:
    """Read a regular file inside ``roots`` without blocking and without trusting ``st_size``.

    At most ``max_bytes + 1`` bytes are read. With ``prefix`` a longer file is not an error: its
    first ``max_bytes + 1`` bytes come back (more than ``max_bytes`` of them = there is more).
    """
    shown = escape_text(path)
    if "\x00" in path:
        return _Read(error=("bad_file_name", f"path {path!r} holds a NUL byte"))
    real = os.path.realpath(path)
    if not _inside(real, roots):
        return _Read(error=("outside_root", _outside_detail(shown, real, roots)))
    try:
        st = os.stat(real)
        if not stat.S_ISREG(st.st_mode):  # refused before open(): a FIFO would block, a
            detail = f"{shown} is a {file_type(st.st_mode)}, not a regular file; not opened"
            return _Read(error=("not_regular_file", detail))  # device may act on open
        fd = os.open(real, _OPEN_FLAGS)
        try:
            st = os.fstat(fd)  # the file actually opened, in case it was swapped after stat()
            if not stat.S_ISREG(st.st_mode):
                detail = f"{shown} is a {file_type(st.st_mode)}, not a regular file; not read"
                return _Read(error=("not_regular_file", detail))
            if st.st_size > max_bytes and not prefix:
                detail = f"{st.st_size} bytes > max_file_bytes={max_bytes}"
                return _Read(error=("too_large_file", detail), size=st.st_size)
            data = _read_at_most(fd, max_bytes + 1)
        finally:
            os.close(fd)
    except FileNotFoundError:
        return _Read(error=("missing_file", f"{shown} does not exist"))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            detail = f"{shown} became a symlink (or is a symlink loop) while being opened"
            return _Read(error=("read_error", detail))
        return _Read(error=("read_error", f"{type(exc).__name__}: {escape_text(str(exc))}"))
    size = max(st.st_size, len(data))
    if len(data) > max_bytes and not prefix:
        detail = (
            f"more than {max_bytes} bytes while reading (stat said {st.st_size}) "
            f"> max_file_bytes={max_bytes}"
        )
        return _Read(error=("too_large_file", detail), size=size)
    return _Read(data, None, size)


@dataclass
class _Member:
    """One file of a sample key (folder) or one member of a tar, before grouping.

    Attributes:
        suffix: Lower-case last suffix (``.jpg``, ``.txt``).
        uri: ``source_uri`` of the input (escaped when the name is not UTF-8).
        data: Bytes read; for a ``.txt`` sidecar possibly only a prefix (see ``size``).
        error: ``(reason_code, detail)`` when the member could not be read.
        size: Size of the file / member in bytes.
    """

    suffix: str
    uri: str
    data: bytes | None = None
    error: tuple[str, str] | None = None
    size: int = 0


def _txt_caption(m: _Member, max_caption_bytes: int) -> tuple[str | None, list[str]]:
    assert m.data is not None
    limit = max_caption_bytes + _CAPTION_READ_SLACK
    partial = len(m.data) > limit or m.size > len(m.data)
    data = m.data[:limit]
    notes: list[str] = []
    try:
        codecs.getincrementaldecoder("utf-8")("strict").decode(data, final=not partial)
    except UnicodeDecodeError as exc:
        notes.append(
            f"caption sidecar {m.uri} is not valid UTF-8 ({exc.reason} at byte {exc.start}); "
            "undecodable bytes replaced with U+FFFD"
        )
    text = codecs.getincrementaldecoder("utf-8")("replace").decode(data, final=not partial)
    text = text.strip()
    if not text:
        return None, notes
    caption, note = cap_caption(text, max_caption_bytes, total_bytes=m.size if partial else None)
    if note:
        notes.append(f"{note}; from {m.uri}")
    return caption, notes


def _json_caption(m: _Member, max_caption_bytes: int) -> tuple[str | None, list[str]]:
    assert m.data is not None
    try:
        meta = json.loads(m.data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, nesting
        why = f"{type(exc).__name__}: {escape_text(str(exc))}"[:300]
        return None, [f"metadata sidecar {m.uri} is not valid JSON ({why}); no caption from it"]
    value = meta.get("caption") if isinstance(meta, dict) else None
    if value is None:
        return None, []
    caption, note = cap_caption(str(value), max_caption_bytes)
    return caption or None, [f"{note}; from {m.uri}"] if note else []


def _read_caption(sidecars: list[_Member], max_caption_bytes: int) -> tuple[str | None, list[str]]:
    """Caption of a sample from its readable sidecars, plus notes.

    The ``.txt`` sidecar wins; else the ``caption`` key of the ``.json``. Notes record a
    truncation and sidecars that could not be used.
    """
    notes: list[str] = []
    readers = {".txt": _txt_caption, ".json": _json_caption}
    for suffix in SIDECAR_SUFFIXES:
        m = next((s for s in sidecars if s.suffix == suffix and s.data is not None), None)
        if m is None:
            continue
        caption, more = readers[suffix](m, max_caption_bytes)
        notes += more
        if caption is not None:
            return caption, notes
    return None, notes


def _group_items(key_uri: str, members: list[_Member], max_caption_bytes: int) -> Iterator[Item]:
    """Turn the members of one sample key into items.

    Sidecars become the caption of every image member; a key with sidecars only is one
    ``orphan_sidecar`` item. A member with a bad name is its own item, never grouped; a sidecar
    that could not be read is its own item too, after the images (which are kept, with a note).
    """
    bad_names = [m for m in members if m.error is not None and m.error[0] == "bad_file_name"]
    for m in bad_names:
        yield Item(source_uri=m.uri, error=m.error)
    grouped = [m for m in members if not any(m is b for b in bad_names)]
    sidecars = [m for m in grouped if m.suffix in SIDECAR_SUFFIXES]
    images = [m for m in grouped if m.suffix not in SIDECAR_SUFFIXES]
    readable = [m for m in sidecars if m.error is None]
    unreadable = [(m, m.error) for m in sidecars if m.error is not None]
    if images:
        caption, notes = _read_caption(readable, max_caption_bytes)
        notes += [
            f"caption sidecar {m.uri} not read ({e[0]}); see quarantine" for m, e in unreadable
        ]
        for m in images:
            yield Item(m.uri, data=m.data, caption=caption, error=m.error, notes=list(notes))
    elif readable:
        uris = ", ".join(m.uri for m in readable)
        detail = f"sidecar(s) {uris} without an image for key {escape_text(key_uri)!r}"
        yield Item(source_uri=readable[0].uri, error=("orphan_sidecar", detail))
    for m, error in unreadable:
        yield Item(source_uri=m.uri, error=error)


def _iter_folder(
    shard: ShardInfo, max_bytes: int, max_caption_bytes: int, roots: tuple[str, ...]
) -> Iterator[Item]:
    groups: dict[Path, list[Path]] = {}
    for f in visible_files(shard.path):
        if f.name == SUCCESS_MARKER:
            continue
        groups.setdefault(f.with_suffix(""), []).append(f)
    for key in sorted(groups):
        members = []
        for f in groups[key]:
            suffix = f.suffix.lower()
            uri = str(f)
            if not is_utf8(uri):
                shown = escape_text(uri)
                members.append(_Member(suffix, shown, error=_bad_name_error(shown)))
                continue
            if suffix == ".txt":
                limit = max_caption_bytes + _CAPTION_READ_SLACK
                read = _read_file(uri, limit, roots, prefix=True)
            else:  # images and .json sidecars
                read = _read_file(uri, max_bytes, roots)
            members.append(_Member(suffix, uri, read.data, read.error, read.size))
        yield from _group_items(str(key), members, max_caption_bytes)


def _tar_key(name: str) -> tuple[str, str]:
    """WebDataset convention: key = path up to the first dot of the basename."""
    head, _, base = name.rpartition("/")
    stem, dot, rest = base.partition(".")
    key = f"{head}/{stem}" if head else stem
    return key, f"{dot}{rest}".lower()


def _open_shard_file(path: Path) -> BinaryIO:
    """Open a tar / manifest shard without blocking; refuse anything but a regular file.

    Raises:
        ShardError: If it is a FIFO, a device, a socket or a folder.
    """
    fd = os.open(path, _OPEN_FLAGS & ~getattr(os, "O_NOFOLLOW", 0))  # path is resolved
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        msg = f"shard {path} is a {file_type(st.st_mode)}, not a regular file; it is not read"
        raise ShardError(msg)
    return os.fdopen(fd, "rb")


def _iter_tar(shard: ShardInfo, max_bytes: int, max_caption_bytes: int) -> Iterator[Item]:
    """Members are read from the archive, never from the file system: no root to check."""
    current_key: str | None = None
    members: list[_Member] = []
    last_name = ""
    try:
        with (
            _open_shard_file(shard.path) as fh_tar,
            tarfile.open(fileobj=fh_tar, mode="r|*") as tar,
        ):
            for member in tar:
                if not member.isfile():
                    continue
                base = member.name.rpartition("/")[2]
                if base.startswith(".") or base == SUCCESS_MARKER:
                    continue
                key, suffix = _tar_key(member.name)
                suffix = "." + suffix.rpartition(".")[2] if suffix else ""
                if key != current_key and members:
                    yield from _group_items(
                        f"{shard.path}#{current_key}", members, max_caption_bytes
                    )
                    members = []
                current_key = key
                uri = f"{shard.path}#{member.name}"
                last_name = escape_text(member.name)
                if not is_utf8(uri):
                    shown = escape_text(uri)
                    members.append(_Member(suffix, shown, error=_bad_name_error(shown)))
                    continue
                is_txt = suffix == ".txt"
                limit = max_caption_bytes + _CAPTION_READ_SLACK if is_txt else max_bytes
                if member.size > limit and not is_txt:
                    err = ("too_large_file", f"{member.size} bytes > limit {limit}")
                    members.append(_Member(suffix, uri, None, err, member.size))
                    continue
                fh = tar.extractfile(member)
                data = fh.read(limit + 1) if fh is not None else None
                members.append(_Member(suffix, uri, data, None, member.size))
            end = tar.offset
            size = os.fstat(fh_tar.fileno()).st_size
        if not shard.path.name.lower().endswith((".gz", ".tgz")):
            # Streaming tarfile takes a header cut short for the end of the archive; a complete
            # tar has two zero blocks after its last member.
            if size < end + 1024:
                msg = f"file is {size} bytes but its last member ends at {end} + 1024 end blocks"
                raise tarfile.ReadError(msg)
    except ShardError:
        raise
    except (tarfile.ReadError, EOFError, OSError) as exc:
        if members:
            yield from _group_items(f"{shard.path}#{current_key}", members, max_caption_bytes)
            members = []
        where = f"after member {last_name!r}" if last_name else "at its start"
        yield Item(
            source_uri=f"{shard.path}#<truncated after {last_name or 'start'}>",
            error=("tar_truncated", f"tar unreadable {where}: {type(exc).__name__}: {exc}"),
        )
        return
    if members:
        yield from _group_items(f"{shard.path}#{current_key}", members, max_caption_bytes)


def read_manifest(path: Path) -> pl.DataFrame:
    """Read a CSV/parquet manifest as a frame with ``path`` and ``caption`` (String) columns.

    Raises:
        ShardError: If the file is not a regular file, cannot be parsed or has no recognised
            path column.
    """
    try:
        with _open_shard_file(path) as fh:
            if path.name.lower().endswith(".parquet"):
                df = pl.read_parquet(fh)
            else:
                df = pl.read_csv(fh, infer_schema=False, raise_if_empty=False)
    except ShardError:
        raise
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


def manifest_root(shard: ShardInfo) -> Path:
    """The folder a manifest's paths must stay in.

    That is the folder holding the manifest: for a manifest directly under the source root, the
    source root, so it may list images of any folder there (e.g. ``_manifest_images/``).
    """
    return shard.path.parent


def _iter_manifest(
    shard: ShardInfo, max_bytes: int, max_caption_bytes: int, roots: tuple[str, ...]
) -> Iterator[Item]:
    df = read_manifest(shard.path)
    base = manifest_root(shard)
    for i, (raw_path, raw_caption) in enumerate(df.iter_rows()):
        caption, notes = None, []
        if isinstance(raw_caption, str) and raw_caption.strip():
            caption, note = cap_caption(raw_caption.strip(), max_caption_bytes)
            notes = [f"{note}; from row {i} of {shard.path.name}"] if note else []
        if raw_path is None or not raw_path.strip():
            uri = f"{shard.path}#row={i}"
            yield Item(uri, caption=caption, error=("missing_file", f"row {i} has an empty path"))
            continue
        raw_path = raw_path.strip().removeprefix("file://")
        if "://" in raw_path:
            detail = f"row {i}: {raw_path!r}; only local paths are read (download first)"
            yield Item(raw_path, caption=caption, error=("unsupported_uri", detail))
            continue
        if "\x00" in raw_path:
            detail = f"row {i}: path {raw_path!r} holds a NUL byte"
            yield Item(f"{shard.path}#row={i}", caption=caption, error=("bad_file_name", detail))
            continue
        p = Path(raw_path)
        resolved = os.path.realpath(p if p.is_absolute() else base / p)
        if not _inside(resolved, roots):
            detail = f"row {i}: " + _outside_detail(repr(raw_path), resolved, roots)
            yield Item(resolved, caption=caption, error=("outside_root", detail))
            continue
        read = _read_file(resolved, max_bytes, roots)
        yield Item(resolved, data=read.data, caption=caption, error=read.error, notes=notes)


def iter_items(
    shard: ShardInfo,
    *,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    max_caption_bytes: int = DEFAULT_MAX_CAPTION_BYTES,
    allowed_roots: Iterable[str | os.PathLike[str]] = (),
) -> Iterator[Item]:
    """Enumerate every input of a shard in a deterministic order.

    Every input yields exactly one :class:`Item`, including inputs that cannot be used
    (missing files, orphan sidecars, a truncated tar, FIFOs, paths outside the root, bad file
    names), which carry ``error``. Memory: one item's bytes at a time (plus one sample's
    sidecars for tars). Never blocks on a FIFO and never reads more than ``max_file_bytes + 1``
    bytes of a file.

    Args:
        shard: The shard.
        max_file_bytes: Files (and ``.json`` sidecars) larger than this are ``too_large_file``.
        max_caption_bytes: Captions are truncated to this many UTF-8 bytes (noted on the item).
        allowed_roots: Folders besides the shard's root (the folder of a folder shard, the
            folder holding a manifest) that inputs may resolve into: absolute manifest paths
            and symlink targets elsewhere are ``outside_root`` unless under one of these.

    Raises:
        ShardError: If the shard as a whole cannot be read (bad manifest, not a regular file).
    """
    if shard.kind == "folder":
        roots = _resolve_roots(shard.path, allowed_roots)
        yield from _iter_folder(shard, max_file_bytes, max_caption_bytes, roots)
    elif shard.kind == "tar":
        yield from _iter_tar(shard, max_file_bytes, max_caption_bytes)
    else:
        roots = _resolve_roots(manifest_root(shard), allowed_roots)
        yield from _iter_manifest(shard, max_file_bytes, max_caption_bytes, roots)
