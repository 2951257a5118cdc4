"""Similarity search's tables: quantizer, per-shard index manifest, per-image uniqueness.

* ``similarity_quantizer`` (global): the k-means centroids every shard's faiss ``IndexIVFFlat``
  files its vectors under, so that the shard indexes are searchable together.
* ``similarity_index`` (per shard, one row): the manifest of which faiss file is current for
  the shard, and the image ids in the order of the file's ids.
* ``image_uniqueness`` (per shard): each image's cosine distance to its k-th nearest
  neighbour in the index (FiftyOne's uniqueness, fastdup's outliers).

Written by :mod:`curation_assets.lib.similar`.
"""

import polars as pl

from curation_assets.lib.tables.spec import UTC_TIMESTAMP, Column, TableSpec

SIMILARITY_QUANTIZER = TableSpec(
    name="similarity_quantizer",
    description="Coarse quantizer (k-means centroids) shared by every shard's faiss index.",
    partition_by=(),
    columns=(
        Column("centroid_id", pl.Int32, "Inverted list id 0..nlist-1."),
        Column("centroid", pl.List(pl.Float32), "L2-normalized centroid (d floats)."),
        Column("train_size", pl.Int64, "Training rows assigned to this centroid."),
        Column("version", pl.String, "Hash of all centroids; every shard index records it."),
        Column("seed", pl.Int32, "Seed of the training sample and initialisation."),
        Column("model_id", pl.String, "Embedding model the centroids live in."),
        Column("trained_at", UTC_TIMESTAMP, "When the quantizer was trained (UTC)."),
    ),
)

SIMILARITY_INDEX = TableSpec(
    name="similarity_index",
    description="One row per shard: its current faiss index file (the manifest).",
    columns=(
        Column("shard", pl.String, "Shard (dynamic partition key)."),
        Column(
            "file",
            pl.String,
            "The shard's faiss IndexIVFFlat file, relative to <Delta root>/_similarity (an "
            "absolute path or URI when files_root is configured elsewhere).",
        ),
        Column("model_id", pl.String, "Embedding model of the indexed vectors."),
        Column("dim", pl.Int32, "Embedding dimension."),
        Column("quantizer_version", pl.String, "Version of similarity_quantizer used."),
        Column("nlist", pl.Int32, "Inverted lists (centroids of the quantizer)."),
        Column("n_vectors", pl.Int64, "Vectors in the file (= images of the shard embedded)."),
        Column("file_bytes", pl.Int64, "Size of the file in bytes."),
        Column(
            "image_ids",
            pl.List(pl.String),
            "image_id of each vector; faiss id i is image_ids[i].",
        ),
        Column("built_at", UTC_TIMESTAMP, "When the file was written (UTC)."),
    ),
)

IMAGE_UNIQUENESS = TableSpec(
    name="image_uniqueness",
    description="Per image: cosine distance to its k-th nearest neighbour (higher = more unique).",
    columns=(
        Column("image_id", pl.String, "sha256 of the image bytes."),
        Column("shard", pl.String, "Shard (dynamic partition key)."),
        Column(
            "uniqueness",
            pl.Float32,
            "1 − cosine to the k-th nearest other image in the index at scoring time "
            "(0 = k exact copies exist; the filter signal; only decreases as shards arrive).",
        ),
        Column("k", pl.Int32, "Which neighbour the score is measured to."),
        Column("neighbours_found", pl.Int32, "Other images found (< k only in a tiny corpus)."),
        Column("nearest_id", pl.String, "image_id of the nearest other image."),
        Column("nearest_similarity", pl.Float32, "Cosine to the nearest other image."),
        Column("index_images", pl.Int64, "Images in the index when this row was scored."),
        Column("model_id", pl.String, "Embedding model."),
        Column("scored_at", UTC_TIMESTAMP, "When the row was scored (UTC)."),
    ),
)
