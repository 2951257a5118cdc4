"""The dedup tables and the dedup run's inputs, read and converted over Delta.

* ``deduplicated_images``: one row per filtered image with ``kept``, ``duplicate_of``, ...
* ``duplicate_pairs``: every pair at cosine ≥ τ found inside a cluster, and by which
  clusterings.
* ``dedup_runs``: one row per run (full or incremental, why, τ, policy, centroid versions,
  counts, recall), the state an incremental run checks itself against.

:func:`load_inputs` joins the filtered images, their embeddings, ingest metadata and every
clustering's assignments (:mod:`curation_assets.lib.cluster`); the other functions convert
between these tables and the arrays of :mod:`curation_assets.lib.dedup.full`.
"""

from dataclasses import dataclass

import numpy as np
import polars as pl

from curation_assets.lib.cluster import filtered_embeddings, load_centroids
from curation_assets.lib.dedup.full import DedupResult
from curation_assets.lib.dedup.keep import ImageMeta
from curation_assets.lib.dedup.pairs import Pairs
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import (
    DEDUP_RUNS,
    DEDUPLICATED_IMAGES,
    DUPLICATE_PAIRS,
    FILTERED_IMAGES,
    IMAGE_EMBEDDINGS,
    N_CLUSTERINGS,
    RAW_IMAGES,
    assignments_spec,
    centroids_spec,
)
from curation_assets.lib.vectors import embedding_matrix, single_model

#: Stage name of dedup's commit records (:mod:`curation_assets.lib.commits`).
DEDUP_STAGE = "dedup"
DEDUP_OUTPUTS = (DUPLICATE_PAIRS, DEDUPLICATED_IMAGES, DEDUP_RUNS)


@dataclass
class DedupInputs:
    """Everything a dedup run reads, in row order (shard, image_id).

    Attributes:
        frame: image_id, shard, source_uri, width, height, ingested_at, one cluster column per
            clustering (``c0``..), of every filtered image with all assignments.
        x: (n, d) float32 embeddings aligned with ``frame``.
        model_id: The embedding model.
        versions: Centroid version per clustering.
        pending: Filtered images not deduplicated in this run (assignments missing or made
            with other centroids): image_id, shard, why.
    """

    frame: pl.DataFrame
    x: np.ndarray
    model_id: str
    versions: list[str]
    pending: pl.DataFrame


def load_inputs(store: DeltaStore, n_clusterings: int = N_CLUSTERINGS) -> DedupInputs:
    """Join filtered images, embeddings, ingest metadata and every clustering's assignments.

    Raises:
        ValueError: If a clustering has no centroids, or the embeddings mix models.
    """
    versions = []
    for c in range(n_clusterings):
        cent = load_centroids(store, c)
        if cent is None:
            msg = f"cluster_centroids_{c} was never materialized; train the centroids first"
            raise ValueError(msg)
        versions.append(cent.version)
    emb = filtered_embeddings(store)
    raw = store.scan(RAW_IMAGES).select(
        "image_id", "shard", "source_uri", "width", "height", "ingested_at"
    )
    frame = emb.lazy().join(raw, on=["image_id", "shard"], how="left")
    missing_exprs = []
    for c in range(n_clusterings):
        a = (
            store.scan(assignments_spec(c))
            .select("image_id", "shard", pl.col("cluster").alias(f"c{c}"), "centroids_version")
            .rename({"centroids_version": f"v{c}"})
        )
        frame = frame.join(a, on=["image_id", "shard"], how="left")
        missing_exprs.append(
            pl.when(pl.col(f"c{c}").is_null())
            .then(pl.lit(f"no cluster_assignments_{c}"))
            .when(pl.col(f"v{c}") != versions[c])
            .then(pl.lit(f"cluster_assignments_{c} made with older centroids"))
        )
    # joins do not keep row order (polars' maintain_order defaults to none): make it canonical,
    # the keep policy's last tie-break and the incremental state's `row` depend on it
    frame = frame.with_columns(why=pl.coalesce(missing_exprs)).sort("shard", "image_id").collect()
    pending = frame.filter(pl.col("why").is_not_null()).select("image_id", "shard", "why")
    ready = frame.filter(pl.col("why").is_null()).drop(
        "why", *[f"v{c}" for c in range(n_clusterings)]
    )
    which = ready if ready.height else emb
    model_id = (
        single_model(which, before="deduplicating", source="the filtered embeddings")
        if which.height
        else ""
    )
    x = embedding_matrix(ready["embedding"]) if ready.height else np.zeros((0, 0), np.float32)
    return DedupInputs(ready.drop("embedding", "model_id"), x, model_id, versions, pending)


def input_tables(n_clusterings: int) -> list[str]:
    """The tables a dedup run reads (their Delta versions are recorded with its commit)."""
    return [
        FILTERED_IMAGES.name,
        IMAGE_EMBEDDINGS.name,
        RAW_IMAGES.name,
        *(centroids_spec(c).name for c in range(n_clusterings)),
        *(assignments_spec(c).name for c in range(n_clusterings)),
    ]


def pairs_from_table(df: pl.DataFrame, row_of: dict[str, int]) -> Pairs:
    """``duplicate_pairs`` rows as :class:`Pairs` over the rows ``row_of`` (image_id → row)."""
    if df.is_empty():
        p = Pairs.empty()
        p.found_by = np.empty(0, np.int32)
        return p
    a = np.fromiter((row_of[s] for s in df["image_id_a"]), np.int64, df.height)
    b = np.fromiter((row_of[s] for s in df["image_id_b"]), np.int64, df.height)
    i, j = np.minimum(a, b), np.maximum(a, b)
    order = np.lexsort((j, i))
    return Pairs(
        i[order],
        j[order],
        df["similarity"].to_numpy().astype(np.float32)[order],
        df["found_by"].to_numpy().astype(np.int32)[order],
    )


def frame_meta(frame: pl.DataFrame) -> ImageMeta:
    """The keep-policy fields (width, height, ingested_at) of an inputs frame."""
    return ImageMeta.of(frame.select("width", "height", "ingested_at"))


def assignment_arrays(frame: pl.DataFrame, n_clusterings: int) -> list[np.ndarray]:
    """One (n,) int64 cluster-id array per clustering (columns ``c0``, ``c1``, ...)."""
    return [frame[f"c{c}"].to_numpy().astype(np.int64) for c in range(n_clusterings)]


def images_frame(result: DedupResult, frame: pl.DataFrame) -> pl.DataFrame:
    """``deduplicated_images`` rows of a result whose rows are those of ``frame``."""
    base = result.images_frame()
    n = base.height
    kept_id = result.image_id[np.where(result.kept, np.arange(n), result.duplicate_of)]
    return DEDUPLICATED_IMAGES.conform(
        base.with_columns(
            shard=frame["shard"],
            component_id=pl.Series(kept_id.astype(str)),
            row=pl.Series(np.arange(n, dtype=np.int64)),
        )
    )


def pairs_frame(result: DedupResult) -> pl.DataFrame:
    """``duplicate_pairs`` rows of a result (ids ordered within a pair, sorted)."""
    p = result.pairs
    if len(p) == 0:
        return DUPLICATE_PAIRS.empty()
    ids = result.image_id
    a, b = ids[p.i].astype(str), ids[p.j].astype(str)
    swap = a > b
    lo, hi = np.where(swap, b, a), np.where(swap, a, b)
    bits = p.found_by if p.found_by is not None else np.zeros(len(p), np.int32)
    width = int(bits.max()).bit_length() if len(bits) else 0
    names = [",".join(str(c) for c in range(width) if (v >> c) & 1) for v in bits.tolist()]
    return pl.DataFrame(
        {
            "image_id_a": lo,
            "image_id_b": hi,
            "similarity": p.sim.astype(np.float32),
            "found_by": bits.astype(np.int32),
            "clusterings": names,
        },
        schema=DUPLICATE_PAIRS.schema,
    ).sort("image_id_a", "image_id_b")
