"""Pixel-quality signals of ingested images: one row per image of ``raw_images``.

Written by :mod:`curation_assets.lib.ingest` in the same step as ``raw_images`` (the signals
come from the image ingest has just decoded; :mod:`curation_assets.lib.quality` computes
them). A separate table rather than new ``raw_images`` columns, so that a home built before the
signals existed keeps working: its old shards simply have no rows here until re-ingested.
Exact duplicates and quarantined inputs have no row (the kept copy of a duplicate has one).
"""

import polars as pl

from curation_assets.lib.tables.spec import Column, TableSpec

IMAGE_QUALITY = TableSpec(
    name="image_quality",
    description="Pixel-quality signals of each ingested image (blur, exposure, entropy, ...).",
    columns=(
        Column("image_id", pl.String, "sha256 of the image bytes (a row of raw_images)."),
        Column("shard", pl.String, "Shard (dynamic partition key)."),
        Column(
            "sharpness",
            pl.Float32,
            "Variance of the 4-neighbour Laplacian of the luma (0-255) on the reduced image; "
            "low = blurry or flat.",
        ),
        Column("brightness", pl.Float32, "Mean luma (BT.601, 0-255) of the reduced image."),
        Column("entropy", pl.Float32, "Shannon entropy of the 256-bin luma histogram, in bits."),
        Column(
            "chroma",
            pl.Float32,
            "Mean of max(R,G,B) - min(R,G,B) (0-255) on the reduced image; ~0 = grayscale.",
        ),
        Column("aspect_ratio", pl.Float32, "Longer side / shorter side of the full image."),
        Column("min_side", pl.Int32, "Shorter side of the full image, in pixels."),
        Column(
            "measured_side",
            pl.Int32,
            "Longer side of the reduced image the pixel signals were measured on.",
        ),
    ),
)
