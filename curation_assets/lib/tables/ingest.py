"""Ingest's tables: the images of a shard, what was quarantined and why, exact duplicates, notes.

Written by :mod:`curation_assets.lib.ingest` (``raw_images`` asset and its side tables).
:data:`REASON_CODES` documents the values of ``quarantine.reason``.
"""

import polars as pl

from curation_assets.lib.tables.spec import UTC_TIMESTAMP, Column, TableSpec

RAW_IMAGES = TableSpec(
    name="raw_images",
    description="One row per distinct decodable image of a shard (exact duplicates collapsed).",
    columns=(
        Column("image_id", pl.String, "sha256 of the file's bytes (hex); stable id end to end."),
        Column("shard", pl.String, "Shard (dynamic partition key) the image was ingested from."),
        Column("source_uri", pl.String, "Where the bytes were read: path, or tar path#member."),
        Column("caption", pl.String, "Caption from a sidecar .txt / .json or a manifest column."),
        Column("width", pl.Int32, "Width in pixels after EXIF orientation."),
        Column("height", pl.Int32, "Height in pixels after EXIF orientation."),
        Column("format", pl.String, "Decoded container format (JPEG, PNG, WEBP, GIF, ...)."),
        Column("n_bytes", pl.Int64, "File size in bytes."),
        Column("n_frames", pl.Int32, "Frames in the file; animated images keep frame 0."),
        Column("ingested_at", UTC_TIMESTAMP, "When this shard was ingested (UTC)."),
    ),
)

QUARANTINE = TableSpec(
    name="quarantine",
    description="Inputs that could not be used, with the stage and the reason.",
    columns=(
        Column("shard", pl.String, "Shard the input belongs to."),
        Column("source_uri", pl.String, "Location of the input (path, or tar path#member)."),
        Column("stage", pl.String, "Stage that quarantined it (ingest, embed)."),
        Column("reason", pl.String, "Machine-readable reason code, e.g. truncated, zero_byte."),
        Column("detail", pl.String, "Human-readable detail (the decoder's message)."),
        Column("image_id", pl.String, "sha256 of the bytes when they could be read, else null."),
        Column("quarantined_at", UTC_TIMESTAMP, "When the row was written (UTC)."),
    ),
)

DUPLICATE_FILES = TableSpec(
    name="exact_duplicates",
    description="Input files whose bytes equal an image already kept; traced to its image_id.",
    columns=(
        Column("shard", pl.String, "Shard of the collapsed file."),
        Column("source_uri", pl.String, "Location of the collapsed file."),
        Column("image_id", pl.String, "sha256 shared with the kept image."),
        Column("kept_shard", pl.String, "Shard whose raw_images row holds the image."),
        Column("kept_source_uri", pl.String, "Location of the kept copy."),
    ),
)

INGEST_NOTES = TableSpec(
    name="ingest_notes",
    description="Non-fatal remarks on ingested images (a caption truncated or unreadable).",
    columns=(
        Column("shard", pl.String, "Shard of the image."),
        Column("source_uri", pl.String, "Location of the input the note is about."),
        Column("image_id", pl.String, "sha256 of the image (a row of raw_images)."),
        Column("note", pl.String, "What happened, e.g. caption truncated to N bytes."),
    ),
)

REASON_CODES: dict[str, str] = {
    "zero_byte": "The file is empty.",
    "missing_file": "The file a manifest or sidecar refers to does not exist.",
    "orphan_sidecar": "A caption/metadata sidecar without an image of the same key.",
    "read_error": "The bytes could not be read (permissions, I/O error).",
    "not_an_image": "No image decoder recognises the bytes.",
    "truncated": "The image data ends early or is corrupt.",
    "decompression_bomb": "Declared pixel count above the configured cap.",
    "too_small": "Shorter side below the configured minimum.",
    "too_large_file": "File larger than the configured byte cap (enforced while reading).",
    "not_regular_file": "A FIFO, device, socket or folder where a file was expected; never opened.",
    "outside_root": (
        "A manifest path or symlink that resolves outside the shard's root (the folder of a "
        "folder shard, the folder holding a manifest) and every allowed root; never read."
    ),
    "bad_file_name": (
        "A file name that is not valid UTF-8 (shown with backslash escapes) or holds a NUL "
        "byte; never read, the rest of the shard is ingested."
    ),
    "unsupported_uri": "A manifest path with a scheme the reader does not support.",
    "tar_truncated": "The tar archive ends inside a member; the rest of the tar is unreadable.",
    "embed_failed": "The image decoded at ingest but could not be embedded.",
}
