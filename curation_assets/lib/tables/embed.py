"""Embed's table: one L2-normalized vector per ingested image (``image_embeddings``).

Written by :mod:`curation_assets.lib.embed`; read by every later stage through
:func:`curation_assets.lib.vectors.embedding_matrix`.
"""

import polars as pl

from curation_assets.lib.tables.spec import Column, TableSpec

IMAGE_EMBEDDINGS = TableSpec(
    name="image_embeddings",
    description="One L2-normalized float32 embedding per ingested image.",
    columns=(
        Column("image_id", pl.String, "sha256 of the image bytes (joins raw_images)."),
        Column("shard", pl.String, "Shard (dynamic partition key)."),
        Column("embedding", pl.List(pl.Float32), "L2-normalized float32 vector of length dim."),
        Column("model_id", pl.String, "Embedding model: backend:model@weights."),
        Column("dim", pl.Int32, "Embedding dimension."),
    ),
)
