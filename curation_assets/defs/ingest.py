"""Ingest stage, per shard: raw_images, quarantine, exact_duplicates, notes, image_quality."""

import time
from datetime import UTC, datetime
from typing import Any, Literal

import dagster as dg
from pydantic import Field

from curation_assets.defs.metadata import (
    check_result,
    markdown_preview,
    table_metadata,
    table_schema,
)
from curation_assets.defs.partitions import ShardLoop, shard_backfill_policy, shards_partitions
from curation_assets.defs.resources import DeltaStorage, ShardSource
from curation_assets.defs.retries import fail_fast, transient_retry
from curation_assets.lib.images import SourceReader
from curation_assets.lib.ingest import (
    DecodeLimits,
    IngestResult,
    collapse_existing,
    existing_since,
    ingest_checks,
    ingest_shard,
    lookup_now,
    quality_check,
    write_ingest,
)
from curation_assets.lib.quality.report import quantile_markdown, stats_markdown, worst_markdown
from curation_assets.lib.quality.signals import quality_stats
from curation_assets.lib.shards import source_fingerprint
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import (
    DUPLICATE_FILES,
    INGEST_NOTES,
    QUARANTINE,
    RAW_IMAGES,
    REASON_CODES,
)
from curation_assets.lib.tables.quality import IMAGE_QUALITY

GROUP = "ingest"
ASSET_KEYS = ["raw_images", "quarantine", "exact_duplicates", "ingest_notes", "image_quality"]


class IngestConfig(dg.Config):
    """Decoding limits and parallelism of ingest.

    File-size, caption and root limits belong to the ``shard_source`` resource: every stage
    that reads the shard uses the same ones.
    """

    max_pixels: int = Field(
        default=64_000_000,
        description="Declared width*height above which an image is quarantined as a "
        "decompression bomb (checked before decoding).",
    )
    min_side: int = Field(
        default=1, description="Images whose shorter side is below this are quarantined."
    )
    decode_workers: int = Field(default=2, description="Threads hashing and decoding images.")
    duplicate_lookup: Literal["index", "scan"] = Field(
        default="index",
        description="How a shard's images are looked up in the other shards (exact "
        "duplicates, and the image_ids_unique check): 'index' asks the image-id index kept "
        "beside the tables (cost of the shard and of the shards written since the last "
        "lookup; rebuilt by itself when missing), 'scan' reads every shard's ids (cost of "
        "the corpus). Both give the same rows.",
    )
    quality_examples: int = Field(
        default=4,
        description="Most extreme images shown per quality check (thumbnails) in "
        "image_quality's metadata; 0 shows none (no image is read back).",
    )


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "raw_images",
            description=(
                "Every distinct, decodable image of a shard: content hash (image_id), where it "
                "came from, caption, size and format. Unusable inputs go to `quarantine`, "
                "byte-identical copies to `exact_duplicates`."
            ),
            kinds={"deltalake", "polars"},
            group_name=GROUP,
            partitions_def=shards_partitions,
            metadata={"dagster/column_schema": table_schema(RAW_IMAGES)},
        ),
        dg.AssetSpec(
            "quarantine",
            description=(
                "Inputs that could not be used, one row each with a reason code: "
                + ", ".join(REASON_CODES)
                + ". Rows of stage 'embed' are written by image_embeddings."
            ),
            kinds={"deltalake", "polars"},
            group_name=GROUP,
            partitions_def=shards_partitions,
            metadata={"dagster/column_schema": table_schema(QUARANTINE)},
        ),
        dg.AssetSpec(
            "exact_duplicates",
            description=(
                "Input files whose bytes equal an image already kept (in this shard or an "
                "earlier one): traces every such file to its image_id and the kept copy."
            ),
            kinds={"deltalake", "polars"},
            group_name=GROUP,
            partitions_def=shards_partitions,
            metadata={"dagster/column_schema": table_schema(DUPLICATE_FILES)},
        ),
        dg.AssetSpec(
            "ingest_notes",
            description=(
                "Remarks on images that were ingested but not exactly as found: a caption "
                "truncated at the shard_source's max_caption_bytes, a sidecar that could not be "
                "parsed. One row per remark, joined to raw_images by image_id."
            ),
            kinds={"deltalake", "polars"},
            group_name=GROUP,
            partitions_def=shards_partitions,
            metadata={"dagster/column_schema": table_schema(INGEST_NOTES)},
        ),
        dg.AssetSpec(
            "image_quality",
            description=(
                "Pixel-quality signals of every ingested image, measured on the image ingest "
                "decoded (no second decode): sharpness (variance of Laplacian), brightness, "
                "entropy, chroma, aspect ratio, shorter side. The metadata shows their "
                "distribution, how many images each check flags at its default threshold "
                "(blurry, too_dark, too_bright, low_entropy, odd_aspect, tiny, grayscale) and "
                "the most extreme images as thumbnails. Reported always; the filter drops on a "
                "check only when its config enables it (filter_shard: quality_drop)."
            ),
            kinds={"deltalake", "polars"},
            group_name=GROUP,
            partitions_def=shards_partitions,
            metadata={"dagster/column_schema": table_schema(IMAGE_QUALITY)},
        ),
    ],
    check_specs=[
        dg.AssetCheckSpec(
            "every_image_measured",
            asset="image_quality",
            blocking=True,
            description="One row of finite signals per raw_images row of the shard, no other.",
        ),
        dg.AssetCheckSpec(
            "every_input_accounted_for",
            asset="raw_images",
            blocking=True,
            description="enumerated = ingested + quarantined + exact duplicates, on the tables.",
        ),
        dg.AssetCheckSpec(
            "image_ids_unique",
            asset="raw_images",
            blocking=True,
            description="No image_id twice in the shard, nor in any other shard.",
        ),
    ],
    retry_policy=transient_retry,
    backfill_policy=shard_backfill_policy,
)
@fail_fast
def ingest(
    context: dg.AssetExecutionContext,
    config: IngestConfig,
    delta: DeltaStorage,
    shard_source: ShardSource,
):
    """Enumerate each shard of the run, hash and safely decode every input, write the tables."""
    store = delta.store()
    limits = DecodeLimits(
        config.max_pixels,
        config.min_side,
        shard_source.max_file_bytes,
        shard_source.max_caption_bytes,
    )
    shards = ShardLoop(context, ASSET_KEYS)
    yield from shards.run(
        lambda key: _ingest_shard(context, delta, shard_source, store, limits, config, shards, key)
    )


def _ingest_shard(
    context: dg.AssetExecutionContext,
    delta: DeltaStorage,
    shard_source: ShardSource,
    store: DeltaStore,
    limits: DecodeLimits,
    config: IngestConfig,
    shards: ShardLoop,
    key: str,
) -> None:
    """Ingest one shard and record its metadata and checks with ``shards``."""
    shard = shard_source.shard(key)
    fingerprint = source_fingerprint(shard.path)
    t0 = time.perf_counter()
    # Decoding, hashing and the quality signals (nearly all the work) need no lock: shards
    # are decoded in parallel, by as many runs as run in parallel.
    result = ingest_shard(
        shard,
        existing=None,
        limits=limits,
        workers=config.decode_workers,
        now=datetime.now(UTC),
        allowed_roots=shard_source.allowed_roots,
    )
    seconds = time.perf_counter() - t0
    # Which shard keeps an image two shards contain is decided, and written, one shard at a
    # time per Delta root, across processes and Dagster instances, so the decision never
    # depends on a race. The lookup of this shard's ids in the other shards (the image-id
    # index, lib/idindex.py) runs before the lock, exact as of one raw_images version; under
    # the lock only the shards written since are read again, then the rows are written: the
    # lock is held for what changed meanwhile, not the corpus.
    ids = result.raw["image_id"].to_list()
    seen = lookup_now(store, key, ids, method=config.duplicate_lookup)
    t1 = time.perf_counter()
    with store.lock("ingest"):
        now = existing_since(store, key, ids, seen.rows, seen.version)
        result = collapse_existing(result, key, now)
        notes = write_ingest(store, key, result)
    locked_s = time.perf_counter() - t1
    context.log.info(
        f"shard {key} ({shard.kind}): {result.n_enumerated} inputs -> {result.raw.height} "
        f"images, {result.quarantine.height} quarantined {result.reasons}, "
        f"{result.duplicates.height} exact duplicates, decoded in {seconds:.1f}s, "
        f"{locked_s:.1f}s under the ingest lock (duplicate lookup and writes)"
    )
    formats = dict(result.raw.group_by("format").len().sort("format").iter_rows())
    raw_meta = table_metadata(
        RAW_IMAGES,
        delta.uri(RAW_IMAGES),
        result.raw.height,
        shard_kind=shard.kind,
        source=str(shard.path),
        source_fingerprint=fingerprint,
        enumerated=result.n_enumerated,
        quarantined=result.quarantine.height,
        exact_duplicates=result.duplicates.height,
        formats=dg.MetadataValue.json(formats),
        seconds=round(seconds, 3),
        seconds_under_lock=round(locked_s, 3),
        duplicate_lookup=dg.MetadataValue.json(seen.metadata),
        inputs_per_s=round(result.n_enumerated / seconds, 1) if seconds else 0.0,
        preview=markdown_preview(
            result.raw.select("image_id", "source_uri", "width", "height", "format", "caption")
        ),
    )
    shards.done(
        key,
        {
            "raw_images": raw_meta,
            "quarantine": table_metadata(
                QUARANTINE,
                delta.uri(QUARANTINE),
                result.quarantine.height,
                reasons=dg.MetadataValue.json(result.reasons),
                preview=markdown_preview(
                    result.quarantine.select("source_uri", "reason", "detail")
                ),
            ),
            "exact_duplicates": table_metadata(
                DUPLICATE_FILES,
                delta.uri(DUPLICATE_FILES),
                result.duplicates.height,
                within_shard=result.n_duplicates_within,
                against_other_shards=result.duplicates.height - result.n_duplicates_within,
            ),
            "ingest_notes": table_metadata(
                INGEST_NOTES,
                delta.uri(INGEST_NOTES),
                notes.height,
                preview=markdown_preview(notes.select("source_uri", "note")),
            ),
            "image_quality": _quality_metadata(delta, shard_source, result, config),
        },
        [
            check_result(c)
            for c in [
                *ingest_checks(store, key, result.n_enumerated, method=config.duplicate_lookup),
                quality_check(store, key, result.raw.height),
            ]
        ],
    )


def _quality_metadata(
    delta: DeltaStorage, shard_source: ShardSource, result: IngestResult, config: IngestConfig
) -> dict[str, Any]:
    """image_quality's metadata: flag counts, distributions and the most extreme images."""
    stats = quality_stats(result.quality, k=config.quality_examples)
    uris = result.raw.select("image_id", "source_uri")
    with SourceReader(max_bytes=shard_source.max_file_bytes) as read:
        worst = worst_markdown(stats.worst, uris, read) if config.quality_examples else ""
    return table_metadata(
        IMAGE_QUALITY,
        delta.uri(IMAGE_QUALITY),
        result.quality.height,
        flagged_at_defaults=dg.MetadataValue.json(stats.flags),
        **{f"flagged_{name}": n for name, n in stats.flags.items()},
        quantiles=dg.MetadataValue.md(quantile_markdown(result.quality)),
        distribution=dg.MetadataValue.md(stats_markdown(stats)),
        worst_examples=dg.MetadataValue.md(worst or "_not shown (quality_examples = 0)_"),
    )


defs = dg.Definitions(assets=[ingest])
