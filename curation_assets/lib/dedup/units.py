"""One work unit of the pair search: a (clustering, bucket) of the bucketed layout.

:func:`search_unit` reads one partition of the layout (:func:`.layout.read_unit`: ``dedup_members``
for clustering 0, the scratch folder as staged for the others), finds
every pair with cosine ≥ τ inside each cluster of the bucket (blockwise, never an n×n matrix;
:func:`~curation_assets.lib.dedup.pairs.within_clusters`) and returns the pairs by image_id,
with the rows on them (their vectors and keep-policy fields: all the merge will need).

With ``query_shards`` (an incremental run) only pairs touching a row of those shards are
searched: each new row against every row of its cluster. Units are independent of each
other: run them in any order, in one process or on many workers, and the union of their
pairs is the same. A unit is a plain function of the Delta tables (picklable inputs), so an
engine can dispatch it as it is.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from curation_assets.lib.dedup.layout import read_unit
from curation_assets.lib.dedup.pairs import Rows, within_clusters
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.vectors import half_bytes

#: Columns of a unit's pairs (one row per pair and clustering that found it).
UNIT_PAIR_SCHEMA = pl.Schema(
    {
        "image_id_a": pl.String,
        "image_id_b": pl.String,
        "shard_a": pl.String,
        "shard_b": pl.String,
        "similarity": pl.Float32,
        "clustering": pl.Int32,
    }
)
#: Columns of the rows on a unit's pairs.
ENDPOINT_SCHEMA = pl.Schema(
    {
        "image_id": pl.String,
        "shard": pl.String,
        "vector": pl.Binary,
        "width": pl.Int32,
        "height": pl.Int32,
        "ingested_at": pl.Datetime("us", "UTC"),
    }
)


@dataclass
class UnitResult:
    """What one unit found.

    Attributes:
        clustering: The clustering.
        bucket: The bucket.
        pairs: :data:`UNIT_PAIR_SCHEMA` rows, ``image_id_a < image_id_b``.
        endpoints: :data:`ENDPOINT_SCHEMA` rows of every image on a pair.
        stats: rows, queries, clusters_searched, largest_cluster, comparisons, pairs, seconds.
    """

    clustering: int
    bucket: int
    pairs: pl.DataFrame
    endpoints: pl.DataFrame
    stats: dict[str, Any] = field(default_factory=dict)


def search_unit(
    store: DeltaStore,
    c: int,
    b: int,
    tau: float,
    *,
    query_shards: set[str] | None = None,
    block: int = 2048,
    version: int | None = None,
) -> UnitResult:
    """Every pair with cosine ≥ ``tau`` inside the clusters of unit ``(c, b)``.

    Args:
        store: Where the layout lives.
        c: Clustering.
        b: Bucket.
        tau: Cosine threshold.
        query_shards: Only pairs touching a row of these shards (None = all pairs).
        block: Tile edge of the within-cluster search.
        version: Clustering 0: read ``dedup_members`` as of this Delta version (None =
            latest). The others read their staged files (:func:`.layout.stage`).

    Returns:
        A :class:`UnitResult`.

    Memory: the bucket's rows (float16, 2·d bytes a row; three copies while
    :func:`~.layout.read_unit` puts them in cluster order) + one cluster's rows as float32 +
    one ``block × block`` Gram tile + the pairs.
    """
    t0 = time.perf_counter()
    rows = read_unit(store, c, b, version=version)
    n = rows.frame.height
    is_query = None
    if query_shards is not None:
        is_query = rows.frame["shard"].is_in(sorted(query_shards)).to_numpy()
    stats: dict[str, Any] = {
        "rows": n,
        "queries": n if is_query is None else int(is_query.sum()),
    }
    if n < 2 or (is_query is not None and not is_query.any()):
        stats.update(comparisons=0, pairs=0, seconds=time.perf_counter() - t0)
        return UnitResult(
            c, b, pl.DataFrame(schema=UNIT_PAIR_SCHEMA), pl.DataFrame(schema=ENDPOINT_SCHEMA), stats
        )
    src = Rows([rows.x])
    found = within_clusters(
        src, rows.frame["cluster"].to_numpy()[:, None], tau, block=block, is_query=is_query
    )
    ids = rows.frame["image_id"].to_numpy()
    shards = rows.frame["shard"].to_numpy()
    pairs = oriented_pairs(
        (ids[found.i], shards[found.i]),
        (ids[found.j], shards[found.j]),
        found.sim,
        np.full(len(found), c, np.int32),
    )
    on_pair = np.unique(np.concatenate([found.i, found.j]))
    endpoints = (
        rows.frame[on_pair]
        .select("image_id", "shard", "width", "height", "ingested_at")
        .with_columns(vector=half_bytes(rows.x[on_pair]))
        .select(list(ENDPOINT_SCHEMA))
        .sort("image_id", "shard")
    )
    s = found.stats or {}
    stats.update(
        clusters_searched=int(s.get("clusters_searched", 0)),
        largest_cluster=int(s.get("largest_cluster", 0)),
        comparisons=int(s.get("comparisons", 0)),
        pairs=len(found),
        seconds=time.perf_counter() - t0,
    )
    return UnitResult(c, b, pairs, endpoints, stats)


def oriented_pairs(
    a: tuple[np.ndarray, np.ndarray],
    b: tuple[np.ndarray, np.ndarray],
    sim: np.ndarray,
    clustering: np.ndarray,
) -> pl.DataFrame:
    """:data:`UNIT_PAIR_SCHEMA` rows of pairs ``(image_id, shard)`` a–b, canonically oriented.

    Rows come in file order, so each pair is turned to put the smaller (image_id, shard)
    first; rows are sorted, whichever search found them.
    """
    (a_id, a_sh), (b_id, b_sh) = a, b
    swap = (a_id > b_id) | ((a_id == b_id) & (a_sh > b_sh))
    return pl.DataFrame(
        {
            "image_id_a": np.where(swap, b_id, a_id),
            "image_id_b": np.where(swap, a_id, b_id),
            "shard_a": np.where(swap, b_sh, a_sh),
            "shard_b": np.where(swap, a_sh, b_sh),
            "similarity": np.asarray(sim, np.float32),
            "clustering": np.asarray(clustering, np.int32),
        },
        schema=UNIT_PAIR_SCHEMA,
    ).sort("image_id_a", "image_id_b", "shard_a", "shard_b", "clustering")


def unit_key(c: int, b: int) -> str:
    """The engine key of unit ``(c, b)``: ``"c:b"``."""
    return f"{c}:{b}"


@dataclass(frozen=True)
class UnitWork:
    """One unit's search as engine work: ``work("c:b", progress)`` → :class:`UnitResult`.

    Plain values only (picklable), so :mod:`curation_assets.lib.engine` runs it in this
    process or as a Ray task on any node that reaches the Delta root; the result travels back
    (pairs and the rows on them: small beside the unit's vectors).

    Attributes:
        root_uri: Delta root.
        storage_options: Its storage options (the step's effective ones).
        tau: Similarity floor of the search.
        query_shards: Incremental runs: only pairs touching these shards; None: all.
        block: Tile edge of the within-cluster search.
        version: The ``dedup_members`` version clustering 0's units read (None: the latest);
            the others read their staged files (:func:`.layout.stage`).
    """

    root_uri: str
    storage_options: dict[str, str]
    tau: float
    query_shards: frozenset[str] | None
    block: int = 2048
    version: int | None = None

    def __call__(self, key: str, progress: Callable[[str], None]) -> UnitResult:
        """Search unit ``key`` (``"c:b"``)."""
        c, b = (int(part) for part in key.split(":"))
        store = DeltaStore(self.root_uri, self.storage_options)
        query = set(self.query_shards) if self.query_shards is not None else None
        result = search_unit(
            store, c, b, self.tau, query_shards=query, block=self.block, version=self.version
        )
        progress(f"unit {key}: {result.pairs.height} pairs")
        return result
