"""Filter's tables: the kept images of a shard and one row per removal and reason.

Written by :mod:`curation_assets.lib.filter` (``filtered_images``, ``filter_rejections``).
"""

import polars as pl

from curation_assets.lib.tables.spec import Column, TableSpec

FILTERED_IMAGES = TableSpec(
    name="filtered_images",
    description="Images of a shard that pass every classifier (and the CLIP-score floor).",
    columns=(
        Column("image_id", pl.String, "sha256 of the image bytes."),
        Column("shard", pl.String, "Shard (dynamic partition key)."),
        Column("source_uri", pl.String, "Where the bytes were read."),
        Column("caption", pl.String, "Caption, if any."),
        Column("width", pl.Int32, "Width in pixels."),
        Column("height", pl.Int32, "Height in pixels."),
    ),
)

FILTER_REJECTIONS = TableSpec(
    name="filter_rejections",
    description="One row per removed image and reason: the category, its score and threshold.",
    columns=(
        Column("image_id", pl.String, "sha256 of the image bytes."),
        Column("shard", pl.String, "Shard (dynamic partition key)."),
        Column(
            "category",
            pl.String,
            "Category that removed it, clip_score_floor, or quality_<check> (pixel quality).",
        ),
        Column(
            "score",
            pl.Float32,
            "The score (image-caption cosine for the floor, the signal for quality_*).",
        ),
        Column("threshold", pl.Float64, "The threshold (or the floor) it crossed."),
    ),
)
