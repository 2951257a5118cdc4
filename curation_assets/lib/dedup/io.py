"""The dedup stage's name and tables in ``stage_commits``: what it reads and what it writes.

* Inputs (their versions are recorded with each commit; the next run redoes the shards that
  changed since): ``filtered_images``, ``image_embeddings``, ``raw_images``, every
  ``cluster_centroids_<c>`` and ``cluster_assignments_<c>``.
* Outputs: ``dedup_members`` (the bucketed layout, :mod:`.layout`), ``duplicate_pairs``,
  ``candidate_pairs``, ``duplicate_members`` and ``duplicate_vectors`` (the pair graph,
  :mod:`.merge`), ``deduplicated_images`` (per shard) and ``dedup_runs``.
"""

import logging
from collections.abc import Callable, Iterator, Mapping

import polars as pl
import pyarrow as pa
from deltalake import DeltaTable

from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import (
    CANDIDATE_PAIRS,
    DEDUP_MEMBERS,
    DEDUP_RUNS,
    DEDUPLICATED_IMAGES,
    DUPLICATE_MEMBERS,
    DUPLICATE_PAIRS,
    DUPLICATE_VECTORS,
    FILTERED_IMAGES,
    IMAGE_EMBEDDINGS,
    RAW_IMAGES,
    TableSpec,
    assignments_spec,
    centroids_spec,
)
from curation_assets.lib.vectors import vector_batches

logger = logging.getLogger(__name__)

#: Stage name of dedup's commit records (:mod:`curation_assets.lib.commits`).
DEDUP_STAGE = "dedup"
DEDUP_OUTPUTS = (
    DEDUP_MEMBERS,
    DUPLICATE_PAIRS,
    CANDIDATE_PAIRS,
    DUPLICATE_MEMBERS,
    DUPLICATE_VECTORS,
    DEDUPLICATED_IMAGES,
    DEDUP_RUNS,
)


def table_version(store: DeltaStore, spec: TableSpec) -> int:
    """The table's current version; an empty table is created when none was written yet."""
    version = store.version(spec.name)
    return store.replace_table(spec, spec.empty()) if version is None else version


def input_tables(n_clusterings: int) -> list[str]:
    """The tables a dedup run reads (their Delta versions are recorded with its commit)."""
    return [
        FILTERED_IMAGES.name,
        IMAGE_EMBEDDINGS.name,
        RAW_IMAGES.name,
        *(centroids_spec(c).name for c in range(n_clusterings)),
        *(assignments_spec(c).name for c in range(n_clusterings)),
    ]


def stored_pairs(store: DeltaStore, outputs: Mapping[str, int]) -> pl.DataFrame:
    """Every stored pair (``duplicate_pairs`` and ``candidate_pairs``) as of a commit's outputs.

    Sorted by (image_id_a, image_id_b). Commits made before τ_min stored no band.
    """
    pairs = [store.read(DUPLICATE_PAIRS, version=outputs[DUPLICATE_PAIRS.name])]
    if CANDIDATE_PAIRS.name in outputs:
        pairs.append(store.read(CANDIDATE_PAIRS, version=outputs[CANDIDATE_PAIRS.name]))
    return pl.concat(pairs).sort("image_id_a", "image_id_b")


def committed_vectors(
    store: DeltaStore, outputs: Mapping[str, int] | None
) -> Callable[[pl.Series], pl.DataFrame]:
    """Reads the committed ``duplicate_vectors`` rows of some image ids (one row per id).

    The table is scanned as of the commit with the ids as a filter, so what is held is the
    rows asked for, not the table (∝ the images ever on a pair).
    """

    def read(ids: pl.Series) -> pl.DataFrame:
        if outputs is None or DUPLICATE_VECTORS.name not in outputs or not ids.len():
            return DUPLICATE_VECTORS.empty()
        rows = store.scan(DUPLICATE_VECTORS, version=outputs[DUPLICATE_VECTORS.name])
        return rows.filter(pl.col("image_id").is_in(ids.implode())).unique("image_id").collect()

    return read


#: An update rewrites ``duplicate_vectors`` with only the rows a later run may read once more
#: than this share of its rows are stale (images on neither the new graph nor the committed
#: one) and at least :data:`COMPACT_MIN_ROWS` are: the table stays within ~2× the graph, and a
#: rewrite follows as many stale rows appended (O(1) a row, amortized).
STALE_SHARE = 0.5
COMPACT_MIN_ROWS = 100_000

#: Rows a compaction streams at a time (~1 KB each at d = 512: ~16 MB).
COMPACT_BATCH_ROWS = 16_384


def write_vectors(
    store: DeltaStore,
    rows: pl.DataFrame,
    *,
    full: bool,
    outputs: Mapping[str, int] | None,
    live: pl.Series | None = None,
    live_count: int | None = None,
) -> int:
    """Write a merge's new ``duplicate_vectors`` rows: the whole table (full), else appended.

    ``live``: image ids of the new graph's members, at least those not on the committed graph
    (``live_count``: how many images the new graph has; default ``live``'s count). An update
    then compacts the table when
    its stale rows are due (:data:`STALE_SHARE`): it keeps the rows of the new graph's members
    and of the committed graph's (which a run killed before its commit reads back), one per
    image, streamed from the table's files into one overwrite. Memory: the kept ids and a
    batch of rows.

    Returns:
        The table's Delta version to commit (the committed one when nothing is written).
    """
    if full or outputs is None or DUPLICATE_VECTORS.name not in outputs:
        return store.replace_table(DUPLICATE_VECTORS, rows)
    version = outputs[DUPLICATE_VECTORS.name]
    if rows.height:
        appended = store.append(DUPLICATE_VECTORS, rows)
        assert appended is not None  # rows were written
        version = appended
    if live is None:
        return version
    table = DeltaTable(
        store.uri(DUPLICATE_VECTORS.name),
        version=version,
        storage_options=store.storage_options or None,
    )
    total = table_rows(table)
    due = max(COMPACT_MIN_ROWS, STALE_SHARE * total)
    on_graph = live.n_unique() if live_count is None else live_count
    if total - on_graph <= due:  # cheap bound first: the kept rows are ≥ the new graph's
        return version
    committed = store.scan(DUPLICATE_MEMBERS, version=outputs[DUPLICATE_MEMBERS.name])
    keep = pl.concat([live, committed.select("image_id").collect()["image_id"]]).unique()
    if total - keep.len() <= due:
        return version
    compacted = store.replace_table(
        DUPLICATE_VECTORS, _kept_rows(table.file_uris(), store.storage_options, keep)
    )
    logger.info(
        "duplicate_vectors: %d rows, %d of images on the graph now or as committed: compacted",
        total,
        keep.len(),
    )
    return compacted


def table_rows(table: DeltaTable) -> int:
    """Rows of a Delta table: from its log's file statistics, else counted."""
    counts = pa.table(table.get_add_actions(flatten=True)).column("num_records").to_pylist()
    if None in counts:  # a file written without statistics
        return int(pl.scan_delta(table).select(pl.len()).collect().item())
    return int(sum(counts))


def _kept_rows(
    uris: list[str], options: Mapping[str, str], keep: pl.Series
) -> Iterator[pl.DataFrame]:
    """The ``duplicate_vectors`` rows of ``keep`` in ``uris``, one per image, batch by batch."""
    seen = keep.head(0)
    wanted = keep.implode()
    batches = vector_batches(
        uris, options, None, ("image_id", "vector"), batch_rows=COMPACT_BATCH_ROWS
    )
    for frame, _ in batches:
        rows = frame.filter(
            pl.col("image_id").is_in(wanted) & ~pl.col("image_id").is_in(seen.implode())
        )
        rows = rows.unique("image_id", keep="first", maintain_order=True)
        seen = pl.concat([seen, rows["image_id"]])
        yield rows.select(DUPLICATE_VECTORS.column_names)


def committed_graph(
    store: DeltaStore, outputs: Mapping[str, int] | None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The committed pair graph as of a commit's outputs (empty without one: a full run).

    Returns every stored pair (``duplicate_pairs`` and ``candidate_pairs``) and the members
    (without their vectors: :func:`committed_vectors` reads those a merge needs).
    """
    if outputs is None:
        return DUPLICATE_PAIRS.empty(), DUPLICATE_MEMBERS.empty()
    return (
        stored_pairs(store, outputs),
        store.read(DUPLICATE_MEMBERS, version=outputs[DUPLICATE_MEMBERS.name]),
    )


def write_run_log(store: DeltaStore, run: pl.DataFrame, outputs: Mapping[str, int] | None) -> int:
    """``dedup_runs`` as committed (``outputs``) with ``run`` added: its Delta version."""
    log = DEDUP_RUNS.empty()
    if outputs is not None and DEDUP_RUNS.name in outputs:
        old = store.read(DEDUP_RUNS, version=outputs[DEDUP_RUNS.name])
        log = old.with_columns(  # runs logged before a column existed: null there
            [
                pl.lit(None).cast(c.dtype).alias(c.name)
                for c in DEDUP_RUNS.columns
                if c.name not in old
            ]
        )
    return store.replace_table(
        DEDUP_RUNS, pl.concat([DEDUP_RUNS.conform(log), run], how="vertical_relaxed")
    )
