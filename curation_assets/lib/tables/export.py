"""Export's table: the training manifest (``curated_dataset``).

Written by :mod:`curation_assets.lib.export`.
"""

import polars as pl

from curation_assets.lib.tables.spec import Column, TableSpec

CURATED_DATASET = TableSpec(
    name="curated_dataset",
    description="The training manifest: one row per kept image with its sample weight. Rows of "
    "images that later leave the kept set are deleted by tombstones appended to the partition "
    "shard=_changes (deleted=true, the image's shard in changed_shard, the Delta version in "
    "revision): read through curation_assets' DeltaStore, or drop a row whose image_id has a "
    "newer tombstone. The per-shard parquet files under the export folder are always whole.",
    partition_by=("shard",),
    revision_key="image_id",
    columns=(
        Column("image_id", pl.String, "sha256 of the image bytes; the WebDataset key."),
        Column("source_uri", pl.String, "Where to read the bytes: path, or tar path#member."),
        Column("caption", pl.String, "Caption, if any."),
        Column("weight", pl.Float64, "Sample weight: sample_weights.weight as is."),
        Column("shard", pl.String, "Shard it was ingested from."),
        Column("width", pl.Int32, "Width in pixels."),
        Column("height", pl.Int32, "Height in pixels."),
    ),
)
