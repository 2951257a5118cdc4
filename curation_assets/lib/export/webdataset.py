"""WebDataset shards of the curated images (stage 8, optional).

:func:`write_webdataset` writes ``.tar`` shards (``KEY.<ext>`` original bytes, ``KEY.txt``
caption, ``KEY.json`` metadata), atomically and deterministically; a row whose bytes cannot be
read is reported with its reason (:class:`ExportFailure`), never silently dropped.
:func:`image_extension` names the true format of the bytes.
"""

import io
import json
import logging
import math
import os
import re
import tarfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from curation_assets.lib.images import SourceReader

logger = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 10_000
DEFAULT_PREFIX = "curated"
TAR_MTIME = 0
"""Modification time written into every tar header (fixed, so shards are byte-reproducible)."""


# --------------------------------------------------------------------------------------------
# Reading source bytes
# --------------------------------------------------------------------------------------------


_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "jpg"),
    (b"\x89PNG\r\n\x1a\n", 0, "png"),
    (b"GIF87a", 0, "gif"),
    (b"GIF89a", 0, "gif"),
    (b"WEBP", 8, "webp"),
    (b"BM", 0, "bmp"),
    (b"II*\x00", 0, "tiff"),
    (b"MM\x00*", 0, "tiff"),
)
"""Magic numbers: (bytes, offset, extension); WEBP also needs ``RIFF`` at offset 0."""

_EXT_ALIASES = {"jpeg": "jpg", "jpe": "jpg", "tif": "tiff"}
IMAGE_EXTENSIONS = frozenset({"jpg", "png", "gif", "webp", "bmp", "tiff"})


def image_extension(data: bytes, source_uri: str = "") -> str | None:
    """The true file extension of image bytes (from their magic number, else the uri's suffix).

    Returns:
        ``jpg``, ``png``, ``gif``, ``webp``, ``bmp`` or ``tiff``; None when neither the bytes
        nor the uri say which.
    """
    for magic, offset, ext in _MAGIC:
        if data[offset : offset + len(magic)] == magic and (ext != "webp" or data[:4] == b"RIFF"):
            return ext
    suffix = source_uri.rpartition("/")[2].rpartition(".")[2].lower()
    suffix = _EXT_ALIASES.get(suffix, suffix)
    return suffix if suffix in IMAGE_EXTENSIONS else None


# --------------------------------------------------------------------------------------------
# WebDataset writer
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportFailure:
    """A row that could not be exported.

    Attributes:
        image_id: The row's id.
        source_uri: Where its bytes should have been.
        reason: ``read_error``, ``zero_byte`` or ``unknown_format``.
        detail: The error message.
    """

    image_id: str
    source_uri: str
    reason: str
    detail: str


@dataclass
class WebDatasetExport:
    """What :func:`write_webdataset` wrote.

    Attributes:
        shards: ``(path, n_samples)`` per shard written, in order.
        failures: Rows not written, each with its reason.
        removed_stale: Old shards of the same prefix beyond the new last one, deleted.
    """

    shards: list[tuple[Path, int]] = field(default_factory=list)
    failures: list[ExportFailure] = field(default_factory=list)
    removed_stale: list[Path] = field(default_factory=list)

    @property
    def n_written(self) -> int:
        """Samples written over all shards."""
        return sum(n for _, n in self.shards)

    def failures_frame(self) -> pl.DataFrame:
        """The failures as a frame (image_id, source_uri, reason, detail)."""
        return pl.DataFrame(
            {
                "image_id": [f.image_id for f in self.failures],
                "source_uri": [f.source_uri for f in self.failures],
                "reason": [f.reason for f in self.failures],
                "detail": [f.detail for f in self.failures],
            },
            schema={c: pl.String for c in ("image_id", "source_uri", "reason", "detail")},
        )


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = TAR_MTIME
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _shard_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}.tar"


class _Shards:
    """Tar shards of ``shard_size`` samples, each written to ``NAME.tmp`` and renamed when done.

    Finished shards go to ``result.shards``; :meth:`abort` deletes an unfinished one.
    """

    def __init__(self, out: Path, prefix: str, shard_size: int, result: WebDatasetExport) -> None:
        self.out, self.prefix, self.shard_size, self.result = out, prefix, shard_size, result
        self.tar: tarfile.TarFile | None = None
        self.tmp: Path | None = None
        self.in_shard = 0

    def sample(self) -> None:
        """Start a sample (in a new shard when the current one is full)."""
        if self.in_shard == self.shard_size:
            self.finish()
        if self.tar is None:
            self.tmp = self.out / (_shard_name(self.prefix, len(self.result.shards)) + ".tmp")
            self.tar = tarfile.open(self.tmp, mode="w", format=tarfile.PAX_FORMAT)
        self.in_shard += 1

    def add(self, name: str, data: bytes) -> None:
        """A member of the current sample."""
        assert self.tar is not None, "sample() first"
        _add_member(self.tar, name, data)

    def finish(self) -> None:
        """Close the current shard and rename it into place."""
        if self.tar is None or self.tmp is None:
            return
        self.tar.close()
        final = self.tmp.with_suffix("")  # drop ".tmp"
        os.replace(self.tmp, final)
        self.result.shards.append((final, self.in_shard))
        self.tar, self.tmp, self.in_shard = None, None, 0

    def abort(self) -> None:
        """Close and delete an unfinished shard (after an error)."""
        if self.tar is not None:
            self.tar.close()
        if self.tmp is not None and self.tmp.exists():
            self.tmp.unlink()


def write_webdataset(
    rows: pl.DataFrame | Iterable[Mapping[str, Any]],
    read_bytes: Callable[[str], bytes] | None,
    out_dir: str | Path,
    *,
    shard_size: int = DEFAULT_SHARD_SIZE,
    prefix: str = DEFAULT_PREFIX,
    overwrite: bool = False,
) -> WebDatasetExport:
    """Write the rows' images, captions and metadata as WebDataset tar shards.

    Each sample ``KEY`` (= ``image_id``) is three members: ``KEY.<ext>`` with the original bytes
    under their true extension (:func:`image_extension`), ``KEY.txt`` with the caption (empty
    when there is none) and ``KEY.json`` with ``image_id``, ``weight``, ``source_uri``,
    ``caption`` and whichever of ``shard``, ``width``, ``height`` the rows have. Rows are
    written sorted by ``image_id`` and tar headers carry fixed times and owners, so the same
    rows and bytes give byte-identical shards. Each shard is written to ``NAME.tmp`` and
    renamed into place when complete. ``shard_size`` counts written samples: a row whose
    bytes cannot be read (the reader raises, the bytes are empty, or they are no known image
    format) is returned in ``failures`` with its reason, and the other rows are written.

    Args:
        rows: :data:`CURATED_DATASET`-like rows (at least ``image_id``, ``source_uri``,
            ``caption``, ``weight``), as a frame or mappings.
        read_bytes: ``source_uri -> bytes``; None uses a :class:`SourceReader` (paths and
            ``tar_path#member``).
        out_dir: Folder for the shards (created).
        shard_size: Samples per shard (the last may be smaller).
        prefix: Shard names are ``{prefix}-{index:06d}.tar``.
        overwrite: Replace shards of this prefix already in ``out_dir`` (and delete old ones
            beyond the new last shard). False: refuse when any exist.

    Returns:
        :class:`WebDatasetExport` with the shard paths and counts and the failures.

    Raises:
        ValueError: On missing columns, duplicate ids, ids unusable as keys, bad settings.
        FileExistsError: If shards of this prefix exist and ``overwrite`` is False.

    Memory: one sample's bytes at a time (plus the rows' metadata).
    """
    if shard_size < 1:
        msg = f"shard_size={shard_size}: expected at least 1 sample per shard"
        raise ValueError(msg)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_\-]*", prefix):
        msg = f"prefix={prefix!r}: use letters, digits, '_' and '-' (no dots or slashes)"
        raise ValueError(msg)
    df: pl.DataFrame = rows if isinstance(rows, pl.DataFrame) else pl.DataFrame(list(rows))
    need = ["image_id", "source_uri", "caption", "weight"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        msg = f"rows lack columns {missing}; they have {df.columns} (pass curated_dataset rows)"
        raise ValueError(msg)
    if df["image_id"].null_count() or df["image_id"].n_unique() != df.height:
        msg = "rows have null or duplicate image_ids; every sample needs a unique key"
        raise ValueError(msg)
    bad_keys = df.filter(~pl.col("image_id").cast(pl.String).str.contains(r"^[A-Za-z0-9_\-]+$"))
    if bad_keys.height:
        msg = (
            f"{bad_keys.height} image_ids cannot be WebDataset keys (e.g. "
            f"{bad_keys['image_id'][0]!r}); keys may hold letters, digits, '_' and '-' only"
        )
        raise ValueError(msg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(rf"^{re.escape(prefix)}-(\d{{6}})\.tar$")
    existing = sorted(p for p in out.iterdir() if pattern.match(p.name))
    if existing and not overwrite:
        msg = (
            f"{out} already holds {len(existing)} shards named {prefix}-NNNNNN.tar; pass "
            "overwrite=True to replace them, or choose another out_dir / prefix"
        )
        raise FileExistsError(msg)
    extra = [c for c in ("shard", "width", "height") if c in df.columns]
    df = df.sort("image_id")

    result = WebDatasetExport()
    own_reader = read_bytes is None
    reader: Callable[[str], bytes] = SourceReader() if read_bytes is None else read_bytes
    shards = _Shards(out, prefix, shard_size, result)
    try:
        for row in df.iter_rows(named=True):
            image_id, uri = str(row["image_id"]), str(row["source_uri"])
            try:
                data = reader(uri)
            except Exception as exc:  # bad data: reported per row, never fatal to the others
                detail = f"{type(exc).__name__}: {exc}"
                result.failures.append(ExportFailure(image_id, uri, "read_error", detail))
                continue
            if not data:
                result.failures.append(ExportFailure(image_id, uri, "zero_byte", "empty bytes"))
                continue
            ext = image_extension(data, uri)
            if ext is None:
                detail = f"bytes start {data[:8]!r}; no known image magic or file suffix"
                result.failures.append(ExportFailure(image_id, uri, "unknown_format", detail))
                continue
            caption = row["caption"]
            meta = {
                "image_id": image_id,
                "weight": _json_value(row["weight"]),
                "source_uri": uri,
                "caption": caption,
                **{c: _json_value(row[c]) for c in extra},
            }
            shards.sample()
            shards.add(f"{image_id}.{ext}", data)
            shards.add(f"{image_id}.txt", (caption or "").encode("utf-8"))
            shards.add(f"{image_id}.json", json.dumps(meta, sort_keys=True).encode())
        shards.finish()
    finally:
        shards.abort()
        if own_reader and isinstance(reader, SourceReader):
            reader.close()
    written = {p.name for p, _ in result.shards}
    for old in existing:
        if old.name not in written:
            old.unlink()
            result.removed_stale.append(old)
    if result.failures:
        logger.warning(
            "webdataset export: %d of %d rows not written (%s)",
            len(result.failures),
            df.height,
            ", ".join(sorted({f.reason for f in result.failures})),
        )
    return result


def copy_webdataset(
    tars: Iterable[str | Path],
    drop: set[str],
    out_dir: str | Path,
    *,
    shard_size: int = DEFAULT_SHARD_SIZE,
    prefix: str = DEFAULT_PREFIX,
) -> WebDatasetExport:
    """Copy the samples of ``tars`` (in order) but those keyed in ``drop`` into new shards.

    The members are copied as they are (no source image is read again) and re-cut into shards
    of ``shard_size`` samples named as :func:`write_webdataset` names them, with the same
    headers: when ``tars`` were written by :func:`write_webdataset` from some rows, the result
    is byte-identical to writing the rows less ``drop`` (their bytes unchanged). A sample's
    key is its members' name up to the first ``.``.

    Raises:
        FileExistsError: If ``out_dir`` already holds shards of this prefix.

    Memory: one member's bytes at a time.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if any(p.name.startswith(f"{prefix}-") and p.name.endswith(".tar") for p in out.iterdir()):
        msg = f"{out} already holds shards named {prefix}-NNNNNN.tar"
        raise FileExistsError(msg)
    result = WebDatasetExport()
    shards = _Shards(out, prefix, shard_size, result)
    current = None
    try:
        for path in tars:
            with tarfile.open(path, mode="r") as src:
                for member in src:
                    key = member.name.split(".", 1)[0]
                    if key in drop or not member.isfile():
                        continue
                    if key != current:  # a new sample
                        current = key
                        shards.sample()
                    data = src.extractfile(member)
                    shards.add(member.name, data.read() if data is not None else b"")
        shards.finish()
    finally:
        shards.abort()
    return result
