"""Cluster's tables: ``cluster_centroids_<c>`` and ``cluster_assignments_<c>`` per clustering.

Each of the :data:`N_CLUSTERINGS` clusterings has its own centroids table (global) and its own
per-shard assignments table; the tables of one kind share their columns and description and
differ only in name. Written by :mod:`curation_assets.lib.cluster`, read by dedup.
"""

import polars as pl

from curation_assets.lib.tables.spec import UTC_TIMESTAMP, Column, TableSpec

#: Number of independent clusterings (DALL·E 2 used five).
N_CLUSTERINGS = 5

_CENTROID_COLUMNS = (
    Column("centroid_id", pl.Int32, "Cluster id 0..K-1."),
    Column("centroid", pl.List(pl.Float32), "L2-normalized centroid (d floats)."),
    Column("train_size", pl.Int64, "Training rows assigned to this centroid."),
    Column("version", pl.String, "Hash of all centroids; assignments record it."),
    Column("seed", pl.Int32, "Seed of the training sample and initialisation."),
    Column("model_id", pl.String, "Embedding model the centroids live in."),
    Column("trained_at", UTC_TIMESTAMP, "When the centroids were trained (UTC)."),
)

_ASSIGNMENT_COLUMNS = (
    Column("image_id", pl.String, "sha256 of the image bytes."),
    Column("shard", pl.String, "Shard (dynamic partition key)."),
    Column("cluster", pl.Int32, "Nearest centroid's id."),
    Column("cosine", pl.Float32, "Cosine similarity to that centroid."),
    Column("distance", pl.Float32, "Cosine distance to that centroid (1 − cosine)."),
    Column("centroids_version", pl.String, "Version of the centroids used."),
)

CLUSTER_CENTROIDS: tuple[TableSpec, ...] = tuple(
    TableSpec(
        name=f"cluster_centroids_{c}",
        description="k-means centroids of one clustering (spherical, cosine).",
        partition_by=(),
        columns=_CENTROID_COLUMNS,
    )
    for c in range(N_CLUSTERINGS)
)
"""``cluster_centroids_<c>`` for c in 0..N_CLUSTERINGS-1 (global tables)."""

CLUSTER_ASSIGNMENTS: tuple[TableSpec, ...] = tuple(
    TableSpec(
        name=f"cluster_assignments_{c}",
        description="Nearest centroid of each filtered image, for one clustering.",
        columns=_ASSIGNMENT_COLUMNS,
    )
    for c in range(N_CLUSTERINGS)
)
"""``cluster_assignments_<c>`` for c in 0..N_CLUSTERINGS-1 (partitioned by shard)."""


def _clustering(c: int) -> int:
    if not 0 <= c < N_CLUSTERINGS:
        msg = (
            f"clustering {c}: expected 0..{N_CLUSTERINGS - 1}; the registry declares "
            f"{N_CLUSTERINGS} clusterings (curation_assets.lib.tables.N_CLUSTERINGS)"
        )
        raise ValueError(msg)
    return c


def centroids_spec(c: int) -> TableSpec:
    """The ``cluster_centroids_<c>`` table.

    Raises:
        ValueError: If ``c`` is not in ``range(N_CLUSTERINGS)``.
    """
    return CLUSTER_CENTROIDS[_clustering(c)]


def assignments_spec(c: int) -> TableSpec:
    """The ``cluster_assignments_<c>`` table.

    Raises:
        ValueError: If ``c`` is not in ``range(N_CLUSTERINGS)``.
    """
    return CLUSTER_ASSIGNMENTS[_clustering(c)]
