"""Ingest: hash, safely decode and account for every input of a shard.

Every enumerated input ends in exactly one of three places:

* ``raw_images`` — the first decodable copy of a sha256;
* ``quarantine`` — unusable, with a reason code from ``tables.REASON_CODES``;
* ``exact_duplicates`` — bytes equal to an image kept earlier in this shard or in another shard.

so ``enumerated == ingested + quarantined + exact_duplicates`` holds by construction and is
re-checked on the written tables by an asset check. No input can sink its shard: a file name
that is not UTF-8 is quarantined as ``bad_file_name`` (shown with backslash escapes) instead of
failing the Delta write, and every string written is valid UTF-8.

Captions are capped at ``DecodeLimits.max_caption_bytes`` (truncated at a character boundary).
``raw_images`` has no column for per-row remarks, so truncations and unusable sidecars of kept
images come back as :attr:`IngestResult.notes` (``source_uri``, ``image_id``, ``note``).
"""

import dataclasses
import hashlib
import io
import logging
import os
import re
import sqlite3
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from curation_assets.lib.checks import Check
from curation_assets.lib.idindex import IdIndex
from curation_assets.lib.parallel import ordered_map
from curation_assets.lib.quality.signals import measure, quality_frame
from curation_assets.lib.shards import (
    DEFAULT_MAX_CAPTION_BYTES,
    DEFAULT_MAX_FILE_BYTES,
    Item,
    ShardInfo,
    cap_caption,
    escape_text,
    is_utf8,
    iter_items,
)
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import (
    DUPLICATE_FILES,
    INGEST_NOTES,
    QUARANTINE,
    RAW_IMAGES,
    TableSpec,
)
from curation_assets.lib.tables.quality import IMAGE_QUALITY

logger = logging.getLogger(__name__)

# Never decode partial data as if it were whole: a truncated file is quarantined.
ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclass(frozen=True)
class DecodeLimits:
    """Safety limits for decoding.

    Attributes:
        max_pixels: Declared width*height above which an image is a decompression bomb.
        min_side: Shorter side (after orientation) below which an image is ``too_small``.
        max_file_bytes: Files larger than this are quarantined (at most this many bytes + 1
            are read, whatever the file system reports).
        max_caption_bytes: Captions longer than this (UTF-8 bytes) are truncated at a character
            boundary; the truncation is recorded in :attr:`IngestResult.notes`.
    """

    max_pixels: int = 64_000_000
    min_side: int = 1
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    max_caption_bytes: int = DEFAULT_MAX_CAPTION_BYTES


@dataclass
class Decoded:
    """Result of :func:`decode_image`.

    Attributes:
        image: RGB image (EXIF orientation applied, frame 0, alpha composited on white), or
            None on failure.
        width: Width after orientation (0 on failure).
        height: Height after orientation (0 on failure).
        format: Container format reported by Pillow.
        n_frames: Number of frames in the file.
        error: ``(reason_code, detail)`` on failure.
    """

    image: Image.Image | None
    width: int = 0
    height: int = 0
    format: str = ""
    n_frames: int = 1
    error: tuple[str, str] | None = None


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of ``data`` (the image_id)."""
    return hashlib.sha256(data).hexdigest()


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB.

    Transparent pixels are composited on white (not black, which ``convert('RGB')`` gives);
    16-bit and float images are rescaled to 8 bits instead of clipped.
    """
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16"):
            arr = arr / 257.0
        else:
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(data: bytes, limits: DecodeLimits = DecodeLimits()) -> Decoded:  # noqa: B008
    """Decode image bytes safely.

    Checks the declared size against ``limits.max_pixels`` before any pixel is decoded,
    decodes fully (so truncation is detected), keeps the first frame of animations, applies
    EXIF orientation and converts to RGB. Never raises for bad data: failures come back as
    ``Decoded.error``.
    """
    if not data:
        return Decoded(None, error=("zero_byte", "file is empty"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > limits.max_pixels:
                detail = f"declared {w}x{h} = {w * h} px > max_pixels={limits.max_pixels}"
                return Decoded(None, w, h, img.format or "", error=("decompression_bomb", detail))
            fmt = img.format or ""
            n_frames = int(getattr(img, "n_frames", 1) or 1)
            if n_frames > 1:
                img.seek(0)
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return Decoded(None, error=("decompression_bomb", str(exc)))
    except UnidentifiedImageError as exc:
        # PIL's message names the BytesIO by memory address: drop it, the detail stays the same
        # from run to run
        detail = re.sub(r" <[^<>]* at 0x[0-9a-fA-F]+>", "", str(exc))
        return Decoded(None, error=("not_an_image", detail))
    except Exception as exc:  # decoders raise OSError, SyntaxError, ValueError, struct.error...
        return Decoded(None, error=("truncated", f"{type(exc).__name__}: {exc}"))
    try:
        oriented = ImageOps.exif_transpose(img)
        if oriented is not None:
            img = oriented
    except Exception as exc:  # a broken EXIF block must not lose a decodable image
        logger.debug("ignoring unreadable EXIF orientation: %s", exc)
    try:
        rgb = to_rgb(img)
    except Exception as exc:
        return Decoded(None, error=("truncated", f"cannot convert {img.mode} to RGB: {exc}"))
    w, h = rgb.size
    if min(w, h) < limits.min_side:
        detail = f"{w}x{h} has a side < min_side={limits.min_side}"
        return Decoded(None, w, h, fmt, n_frames, error=("too_small", detail))
    return Decoded(rgb, w, h, fmt, n_frames)


@dataclass
class _Probe:
    item: Item
    image_id: str | None
    decoded: Decoded | None
    n_bytes: int
    quality: dict[str, float | int] | None = None


def _probe(item: Item, limits: DecodeLimits) -> _Probe:
    if item.error is None and not is_utf8(item.source_uri):
        shown = escape_text(item.source_uri)
        detail = f"file name {shown} is not valid UTF-8 (undecodable bytes shown as \\xNN)"
        item = dataclasses.replace(item, error=("bad_file_name", detail))
    if item.error is not None or item.data is None:
        image_id = sha256_hex(item.data) if item.data else None
        return _Probe(item, image_id, None, len(item.data or b""))
    decoded = decode_image(item.data, limits)
    # the pixel-quality signals come from this decode (a 256 px reduction of it), never a second
    quality = measure(decoded.image) if decoded.image is not None else None
    decoded.image = None  # ingest only needs the verdict, the dimensions and the signals
    return _Probe(item, sha256_hex(item.data), decoded, len(item.data), quality)


@dataclass
class IngestResult:
    """Frames for one shard, ready to write, plus counts.

    Attributes:
        raw: Rows for ``raw_images``.
        quarantine: Rows for ``quarantine`` (stage ``ingest``).
        duplicates: Rows for ``exact_duplicates``.
        n_enumerated: Inputs enumerated in the shard.
        reasons: Quarantine count per reason code.
        notes: Non-fatal remarks on rows of ``raw`` (``source_uri``, ``image_id``, ``note``):
            a truncated caption, a sidecar that was unreadable, not UTF-8 or not JSON.
        quality: ``image_quality`` rows, one per row of ``raw`` (quarantined inputs and exact
            duplicates have none).
    """

    raw: pl.DataFrame
    quarantine: pl.DataFrame
    duplicates: pl.DataFrame
    n_enumerated: int
    reasons: dict[str, int] = field(default_factory=dict)
    notes: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=NOTES_SCHEMA))
    quality: pl.DataFrame = field(default_factory=IMAGE_QUALITY.empty)

    @property
    def n_duplicates_within(self) -> int:
        """Duplicates whose kept copy is in the same shard."""
        return self.duplicates.filter(pl.col("kept_shard") == pl.col("shard")).height


NOTES_SCHEMA = pl.Schema({"source_uri": pl.String, "image_id": pl.String, "note": pl.String})
"""Schema of :attr:`IngestResult.notes`."""

ExistingLookup = Callable[[list[str]], pl.DataFrame]
"""Given image_ids, returns ``image_id, shard, source_uri`` of those already kept elsewhere."""


def ingest_items(
    shard: str,
    items: Iterable[Item],
    *,
    existing: ExistingLookup | None,
    limits: DecodeLimits = DecodeLimits(),  # noqa: B008
    workers: int = 2,
    now: datetime | None = None,
) -> IngestResult:
    """Hash, decode and sort every item of a shard into raw / quarantine / duplicates.

    The first decodable copy of each sha256 (in enumeration order) is kept unless
    ``existing`` reports it kept in another shard (:func:`collapse_existing`; None: look
    within the shard only, and collapse later). Captions are capped at
    ``limits.max_caption_bytes``. Strings that are not valid UTF-8 (file names from undecodable
    bytes) never reach a row: an item named so is quarantined as ``bad_file_name``. Memory:
    per-row metadata of the shard plus ``2 * workers`` items' bytes in flight.
    """
    now = now or datetime.now(UTC)
    raw_rows: list[dict[str, object]] = []
    q_rows: list[dict[str, object]] = []
    dup_rows: list[dict[str, object]] = []
    note_rows: list[dict[str, object]] = []
    quality_rows: list[dict[str, object]] = []
    kept_here: dict[str, str] = {}
    n = 0
    probes = ordered_map(
        lambda it: _probe(it, limits), items, workers=workers, prefetch=4 * workers
    )
    for p in probes:
        n += 1
        uri = escape_text(p.item.source_uri)
        error = p.item.error or (p.decoded.error if p.decoded else None)
        if error is not None:
            q_rows.append(
                {
                    "shard": shard,
                    "source_uri": uri,
                    "stage": "ingest",
                    "reason": escape_text(error[0]),
                    "detail": escape_text(error[1]),
                    "image_id": p.image_id,
                    "quarantined_at": now,
                }
            )
            continue
        assert p.image_id is not None and p.decoded is not None
        if p.image_id in kept_here:
            dup_rows.append(
                {
                    "shard": shard,
                    "source_uri": uri,
                    "image_id": p.image_id,
                    "kept_shard": shard,
                    "kept_source_uri": kept_here[p.image_id],
                }
            )
            continue
        kept_here[p.image_id] = uri
        caption, notes = p.item.caption, [escape_text(x) for x in p.item.notes]
        if caption is not None:
            caption, note = cap_caption(caption, limits.max_caption_bytes)
            notes += [note] if note else []
        note_rows.extend({"source_uri": uri, "image_id": p.image_id, "note": x} for x in notes)
        quality_rows.append({"image_id": p.image_id, "shard": shard, **(p.quality or {})})
        raw_rows.append(
            {
                "image_id": p.image_id,
                "shard": shard,
                "source_uri": uri,
                "caption": caption,
                "width": p.decoded.width,
                "height": p.decoded.height,
                "format": p.decoded.format,
                "n_bytes": p.n_bytes,
                "n_frames": p.decoded.n_frames,
                "ingested_at": now,
            }
        )
    raw = pl.DataFrame(raw_rows, schema=RAW_IMAGES.schema)
    quarantine = pl.DataFrame(q_rows, schema=QUARANTINE.schema)
    reasons = dict(quarantine.group_by("reason").len().sort("reason").iter_rows())
    result = IngestResult(
        raw,
        quarantine,
        pl.DataFrame(dup_rows, schema=DUPLICATE_FILES.schema),
        n,
        {str(k): int(v) for k, v in reasons.items()},
        pl.DataFrame(note_rows, schema=NOTES_SCHEMA),
        quality_frame(quality_rows),
    )
    if existing is None or not raw.height:
        return result
    return collapse_existing(result, shard, existing(raw["image_id"].to_list()))


def collapse_existing(result: IngestResult, shard: str, elsewhere: pl.DataFrame) -> IngestResult:
    """``result`` with the images another shard already keeps moved to ``duplicates``.

    ``elsewhere``: ``image_id, shard, source_uri`` of the other shards' rows holding this
    shard's ids (:func:`lookup_elsewhere`, brought up to date under the ingest lock by
    :func:`existing_since`). Such an image's row leaves ``raw`` (with its notes and quality
    row) and becomes an ``exact_duplicates`` row naming the other shard's copy; files of this
    shard that duplicated it follow it.
    """
    raw, duplicates = result.raw, result.duplicates
    if elsewhere.height:
        elsewhere = elsewhere.unique("image_id", keep="first").rename(
            {"shard": "kept_shard", "source_uri": "kept_source_uri"}
        )
        moved = raw.join(elsewhere, on="image_id", how="inner")
        # Files of this shard that duplicated a now-moved image follow it.
        followers = duplicates.join(
            elsewhere, on="image_id", how="left", suffix="_else"
        ).with_columns(
            kept_shard=pl.coalesce("kept_shard_else", "kept_shard"),
            kept_source_uri=pl.coalesce("kept_source_uri_else", "kept_source_uri"),
        )
        duplicates = pl.concat(
            [
                DUPLICATE_FILES.conform(moved.with_columns(shard=pl.lit(shard))),
                DUPLICATE_FILES.conform(followers),
            ]
        )
        raw = raw.join(elsewhere.select("image_id"), on="image_id", how="anti")
    notes = result.notes.join(
        raw.select("image_id", "source_uri"), on=["image_id", "source_uri"], how="semi"
    )
    quality = result.quality.join(raw.select("image_id"), on="image_id", how="semi")
    return IngestResult(
        raw,
        result.quarantine,
        duplicates,
        result.n_enumerated,
        result.reasons,
        notes,
        quality,
    )


def ingest_shard(
    shard: ShardInfo,
    *,
    existing: ExistingLookup | None,
    limits: DecodeLimits = DecodeLimits(),  # noqa: B008
    workers: int = 2,
    now: datetime | None = None,
    allowed_roots: Iterable[str | os.PathLike[str]] = (),
) -> IngestResult:
    """Enumerate and ingest one shard (see :func:`ingest_items`).

    ``allowed_roots``: folders besides the shard's own root that its inputs may resolve into
    (see :func:`~curation_assets.lib.shards.iter_items`); none by default.

    Raises:
        ShardError: If the shard as a whole cannot be read (bad manifest, not a regular file).
    """
    items = iter_items(
        shard,
        max_file_bytes=limits.max_file_bytes,
        max_caption_bytes=limits.max_caption_bytes,
        allowed_roots=allowed_roots,
    )
    return ingest_items(
        shard.key, items, existing=existing, limits=limits, workers=workers, now=now
    )


def keep_first_ingested_at(raw: pl.DataFrame, previous: pl.DataFrame) -> pl.DataFrame:
    """``raw`` with the ``ingested_at`` of images the shard already held before this run.

    Re-ingesting an unchanged shard then gives identical rows, and the keep policy's
    ``earliest`` criterion keeps meaning "arrived first", not "re-read last".
    """
    if previous.is_empty():
        return raw
    first = previous.select("image_id", pl.col("ingested_at").alias("_first"))
    return (
        raw.join(first, on="image_id", how="left", maintain_order="left")
        .with_columns(ingested_at=pl.coalesce("_first", "ingested_at"))
        .drop("_first")
        .select(raw.columns)
    )


# --------------------------------------------------------------------------------------------
# The ingest stage over Delta: what the asset calls
# --------------------------------------------------------------------------------------------


ELSEWHERE_COLUMNS = ["image_id", "shard", "source_uri"]


def lookup_elsewhere(
    store: DeltaStore, shard: str, image_ids: list[str], version: int | None = None
) -> pl.DataFrame:
    """``image_id, shard, source_uri`` of the rows of *other* shards holding ``image_ids``.

    As of ``raw_images`` version ``version`` (None: now). This shard's own rows are left out:
    they are being replaced. Cost: a scan of every shard's ``image_id`` column (O(corpus));
    ingest runs it before it takes the lock, and :func:`existing_since` brings it up to date
    under the lock for the cost of the shards written since.
    """
    if not image_ids:
        return pl.DataFrame(schema={c: pl.String for c in ELSEWHERE_COLUMNS})
    return (
        store.scan(RAW_IMAGES, version=version)
        .filter((pl.col("shard") != shard) & pl.col("image_id").is_in(image_ids))
        .select(ELSEWHERE_COLUMNS)
        .collect(engine="streaming")  # batch by batch: memory ∝ the ids asked, not the corpus
    )


def existing_since(
    store: DeltaStore,
    shard: str,
    image_ids: list[str],
    seen: pl.DataFrame,
    version: int | None,
) -> pl.DataFrame:
    """``seen`` (:func:`lookup_elsewhere` at ``version``) brought up to the current version.

    The rows of shards written, replaced or removed since ``version`` are dropped from
    ``seen`` and those shards are read again (a pruned read of just them): the cost is the
    Delta log and the shards ingested meanwhile, not the corpus. Call it under the ingest lock,
    so that no shard commits between this read and this shard's write.
    """
    changed = sorted(store.changed_shards(RAW_IMAGES.name, version) - {shard})
    if not changed or not image_ids:
        return seen
    recent = (
        store.read(RAW_IMAGES, shards=changed, columns=ELSEWHERE_COLUMNS)
        .filter(pl.col("image_id").is_in(image_ids))
        .select(ELSEWHERE_COLUMNS)
    )
    return pl.concat([seen.filter(~pl.col("shard").is_in(changed)), recent])


#: How ingest finds the other shards' copies: ``index`` (:mod:`~curation_assets.lib.idindex`,
#: cost ∝ the ids asked and the shards written since) or ``scan`` (every shard's ids read).
LOOKUP_METHODS = ("index", "scan")


@dataclass(frozen=True)
class Elsewhere:
    """What :func:`lookup_now` found, and how.

    Attributes:
        rows: ``image_id, shard, source_uri`` of the other shards' rows holding the ids asked.
        version: The ``raw_images`` version ``rows`` are exact at.
        method: ``index`` or ``scan`` (``scan`` also when the index could not be used).
        metadata: How the lookup went (method, seconds, the index's refresh), for the UI.
    """

    rows: pl.DataFrame
    version: int | None
    method: str
    metadata: dict[str, Any]


def lookup_now(
    store: DeltaStore, shard: str, image_ids: list[str], *, method: str = "index"
) -> Elsewhere:
    """The other shards' rows holding ``image_ids``, as of a recent ``raw_images`` version.

    ``method="index"`` asks the image-id index (:class:`~curation_assets.lib.idindex.IdIndex`:
    exact, at the cost of the ids asked and of the shards written since it last answered);
    when the index cannot be used (an unwritable folder, a damaged file) the lookup scans
    instead, with a warning. ``method="scan"`` is :func:`lookup_elsewhere` at the current
    version (every shard's ids).
    """
    if method not in LOOKUP_METHODS:
        msg = f"duplicate lookup method {method!r}: expected one of {LOOKUP_METHODS}"
        raise ValueError(msg)
    t0 = time.perf_counter()
    if not image_ids:  # nothing to look up (a shard of unusable files): no index built
        version = store.version(RAW_IMAGES.name)
        return Elsewhere(lookup_elsewhere(store, shard, [], version), version, method, {})
    if method == "index":
        index = IdIndex(store)
        try:
            rows, version, refreshed = index.lookup(image_ids, exclude_shard=shard)
        except (sqlite3.Error, OSError) as exc:
            logger.warning(
                "image-id index %s could not be used (%s): scanning raw_images instead",
                index.path,
                exc,
            )
        else:
            metadata = {
                "method": "index",
                "seconds": round(time.perf_counter() - t0, 4),
                "index_version": version,
                "index_shards_refreshed": refreshed.shards,
                "index_rows_refreshed": refreshed.rows,
                "index_rebuilt": refreshed.reason or False,
                "index_refresh_seconds": round(refreshed.seconds, 4),
            }
            return Elsewhere(rows, version, "index", metadata)
    version = store.version(RAW_IMAGES.name)
    rows = lookup_elsewhere(store, shard, image_ids, version)
    metadata = {"method": "scan", "seconds": round(time.perf_counter() - t0, 4)}
    return Elsewhere(rows, version, "scan", metadata)


def existing_lookup(store: DeltaStore, shard: str) -> ExistingLookup:
    """image_ids already kept by *other* shards, now (:func:`lookup_now`)."""
    return lambda image_ids: lookup_now(store, shard, image_ids).rows


def write_ingest(store: DeltaStore, shard: str, result: IngestResult) -> pl.DataFrame:
    """Replace the shard's rows of the five ingest tables; returns the notes as written.

    Images the shard already held keep their first ``ingested_at``
    (:func:`keep_first_ingested_at`); quarantine rows of later stages are left alone.
    """
    previous = store.read(RAW_IMAGES, shards=[shard], columns=["image_id", "ingested_at"])
    store.replace_shard(RAW_IMAGES, shard, keep_first_ingested_at(result.raw, previous))
    store.replace_shard(QUARANTINE, shard, result.quarantine, where={"stage": "ingest"})
    store.replace_shard(DUPLICATE_FILES, shard, result.duplicates)
    notes = result.notes.with_columns(shard=pl.lit(shard))
    store.replace_shard(INGEST_NOTES, shard, notes)
    store.replace_shard(IMAGE_QUALITY, shard, result.quality)
    return notes


def _shard_rows(store: DeltaStore, spec: TableSpec, shard: str, **equal: str) -> int:
    cond = pl.col("shard") == shard
    for column, value in equal.items():
        cond &= pl.col(column) == value
    return int(store.scan(spec).filter(cond).select(pl.len()).collect().item())


def ingest_checks(
    store: DeltaStore, shard: str, enumerated: int, *, method: str = "index"
) -> list[Check]:
    """The ingest invariants, re-counted on the written tables.

    ``every_input_accounted_for``: enumerated = ingested + quarantined at ingest + exact
    duplicates. ``image_ids_unique``: no image_id twice in the shard, nor in another shard
    (:func:`lookup_now` with ``method``, as of the version after the write: memory ∝ the
    shard, not the corpus).
    """
    mine = store.read(RAW_IMAGES, shards=[shard], columns=["image_id"])["image_id"]
    counts = {
        RAW_IMAGES.name: mine.len(),
        DUPLICATE_FILES.name: _shard_rows(store, DUPLICATE_FILES, shard),
        QUARANTINE.name: _shard_rows(store, QUARANTINE, shard, stage="ingest"),
    }
    accounted = sum(counts.values())
    repeated = mine.len() - mine.n_unique()
    clash = lookup_now(store, shard, mine.to_list(), method=method).rows.height
    return [
        Check(
            "every_input_accounted_for",
            "raw_images",
            accounted == enumerated,
            metadata={"enumerated": enumerated, "accounted": accounted, **counts},
            description=None
            if accounted == enumerated
            else f"{enumerated - accounted} inputs of shard {shard} are in no table",
        ),
        Check(
            "image_ids_unique",
            "raw_images",
            repeated == 0 and clash == 0,
            metadata={"repeated_within_shard": repeated, "also_in_other_shards": clash},
        ),
    ]


def quality_check(store: DeltaStore, shard: str, n_raw: int) -> Check:
    """``image_quality/every_image_measured``, re-counted on the written tables.

    One row per ``raw_images`` row of the shard (same ids), every signal finite.
    """
    quality = store.read(IMAGE_QUALITY, shards=[shard])
    ids = store.read(RAW_IMAGES, shards=[shard], columns=["image_id"])
    unmatched = quality.join(ids, on="image_id", how="anti").height
    missing = ids.join(quality, on="image_id", how="anti").height
    signals = [c for c in IMAGE_QUALITY.column_names if c not in ("image_id", "shard")]
    not_finite = quality.filter(
        pl.any_horizontal(~pl.col(signals).cast(pl.Float64).is_finite())
    ).height
    passed = quality.height == n_raw == ids.height and not unmatched and not missing
    passed = passed and not not_finite
    return Check(
        "every_image_measured",
        "image_quality",
        passed,
        metadata={
            "raw_images": ids.height,
            "image_quality": quality.height,
            "without_signals": missing,
            "not_in_raw_images": unmatched,
            "not_finite": not_finite,
        },
        description=None
        if passed
        else f"shard {shard}: {missing} images without signals, {unmatched} rows not in "
        f"raw_images, {not_finite} with a signal not finite",
    )
