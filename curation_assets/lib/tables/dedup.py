"""Dedup's tables: the keep decision of every filtered image, the pairs, the run log.

Written by :mod:`curation_assets.lib.dedup` (``deduplicated_images``, ``duplicate_pairs``,
``dedup_runs``).
"""

import polars as pl

from curation_assets.lib.tables.spec import UTC_TIMESTAMP, Column, TableSpec

DEDUPLICATED_IMAGES = TableSpec(
    name="deduplicated_images",
    description="Every filtered image: kept, or which kept image it duplicates.",
    columns=(
        Column("image_id", pl.String, "sha256 of the image bytes."),
        Column("shard", pl.String, "Shard it came from."),
        Column("kept", pl.Boolean, "True for the one image kept per near-duplicate group."),
        Column("duplicate_of", pl.String, "image_id of the kept image (null when kept)."),
        Column("similarity", pl.Float32, "Cosine to the kept image (null when kept)."),
        Column("component_id", pl.String, "The group: image_id of its kept image."),
        Column("component_size", pl.Int64, "Images in the group (1 = no near duplicate)."),
        Column("row", pl.Int64, "Position in the incremental state (old rows first)."),
    ),
)

DUPLICATE_PAIRS = TableSpec(
    name="duplicate_pairs",
    description="Pairs of filtered images in one cluster with cosine ≥ τ.",
    partition_by=(),
    columns=(
        Column("image_id_a", pl.String, "The smaller image_id of the pair."),
        Column("image_id_b", pl.String, "The larger image_id of the pair."),
        Column("similarity", pl.Float32, "Cosine similarity (exact per-pair dot product)."),
        Column("found_by", pl.Int32, "Bitmask: bit c set when clustering c found the pair."),
        Column("clusterings", pl.String, "The clusterings that found it, e.g. '0,2,3'."),
    ),
)

DEDUP_RUNS = TableSpec(
    name="dedup_runs",
    description="One row per deduplication run: mode, why, parameters and outcome.",
    partition_by=(),
    columns=(
        Column("run_at", UTC_TIMESTAMP, "When the run finished (UTC)."),
        Column("mode", pl.String, "full or incremental."),
        Column("reason", pl.String, "Why this mode."),
        Column("tau", pl.Float64, "Cosine threshold."),
        Column("policy", pl.String, "Keep policy, criteria in order."),
        Column("centroids_versions", pl.String, "Centroid version of each clustering."),
        Column("model_id", pl.String, "Embedding model."),
        Column("images", pl.Int64, "Images covered."),
        Column("new_images", pl.Int64, "Images searched in this run."),
        Column("pairs", pl.Int64, "Pairs at cosine ≥ τ."),
        Column("removed", pl.Int64, "Images removed as near duplicates."),
        Column("previously_kept_now_removed", pl.Int64, "Kept before, now a duplicate."),
        Column("recall", pl.String, "JSON list: pair recall of 1..C clusterings (sampled)."),
        Column("seconds", pl.Float64, "Wall time of the dedup itself."),
    ),
)
