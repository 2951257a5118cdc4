"""The cluster-bucketed layout: what makes the pair search a set of independent work units.

Pair search needs, per clustering, the vectors of one cluster together. ``dedup_members`` holds
every deduplicated image once, in clustering 0's buckets (a bucket is a contiguous range of
that clustering's clusters, one Delta partition), with its vector as float16, its cluster in
every clustering (``clusters``) and the keep-policy fields. A work unit ``(0, b)`` reads one
partition and nothing else (:func:`read_unit`), so its memory is the rows of one bucket, and the
number of buckets is chosen from the memory budget (:func:`choose_layout`): at any N a unit
holds about a quarter of the budget.

The units of another clustering ``c`` read a scratch folder beside the tables
(:data:`SCRATCH_FOLDER`): :func:`stage` writes clustering ``c``'s buckets there as plain parquet
files from ``dedup_members`` (one bucket of clustering 0 in memory at a time) when a run is
about to search them, and :func:`clear_scratch` deletes them once searched. So at rest the
layout is one copy of each vector (2·d bytes, beside ``image_embeddings``' 4·d), and a full run
peaks at two: 10M × 512 needs 10 GB at rest and 20 GB while searching, not the 50 GB of a copy
per clustering. An incremental run's one-pass search reads only ``dedup_members``
(:mod:`.newrows`).

Rows are written one shard at a time (:func:`shard_rows` reads a shard's filtered embeddings,
its ingest fields and its five assignments, shard-pruned; :func:`lay_out`), so building the
layout streams the corpus with one shard in memory, and a new shard costs its own rows. The
layout is derived data: a full run rebuilds it.
"""

import functools
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import polars as pl
from deltalake import DeltaTable

from curation_assets.lib import objectstore as ost
from curation_assets.lib.cluster import filtered_embeddings
from curation_assets.lib.dedup.readyids import ReadyIds, ready_ids
from curation_assets.lib.memory import MemoryBudget
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import DEDUP_MEMBERS, RAW_IMAGES, assignments_spec
from curation_assets.lib.vectors import (
    embedding_matrix,
    half_bytes,
    half_parts,
    rows_in_order,
    single_model,
)

#: Bytes one member row costs a unit beside its vector copies: ids, meta.
_ROW_OVERHEAD = 160


def unit_row_bytes(dim: int) -> int:
    """Working bytes of one member row inside a unit, as the layout is sized.

    The search holds 2·d bytes of float16 a row, and while it reads a unit, the rows as read
    and stacked (2·d each) before they are put in cluster order; its float32 rows are one
    cluster at a time.
    """
    return 6 * dim + _ROW_OVERHEAD


#: Version of the layout's rows. 2: each row carries its cluster in every clustering
#: (``clusters``), which the one-pass incremental search (:mod:`.newrows`) needs. 3: only
#: clustering 0's rows are kept (the others are staged per search: :func:`stage`). A commit
#: whose layout is older is followed by a full run (it lays the corpus out anew).
LAYOUT_FORMAT = 3


@dataclass(frozen=True)
class Layout:
    """How clusters map to buckets, per clustering.

    Attributes:
        ks: Clusters of each clustering (from its centroids).
        buckets: Buckets of each clustering; bucket of cluster ``q`` = ``q · B // k``.
        format: :data:`LAYOUT_FORMAT` of the rows it was written with.
    """

    ks: tuple[int, ...]
    buckets: tuple[int, ...]
    format: int = LAYOUT_FORMAT

    def bucket_of(self, c: int, cluster: np.ndarray) -> np.ndarray:
        """(n,) int32 bucket of each cluster id of clustering ``c``."""
        return (np.asarray(cluster, np.int64) * self.buckets[c] // self.ks[c]).astype(np.int32)

    def units(self) -> list[tuple[int, int]]:
        """Every (clustering, bucket)."""
        return [(c, b) for c, n in enumerate(self.buckets) for b in range(n)]

    def key(self) -> str:
        """A stable text form (recorded with the commit; a change means a full rebuild)."""
        return json.dumps(
            {"ks": list(self.ks), "buckets": list(self.buckets), "format": self.format}
        )

    @classmethod
    def from_key(cls, key: str) -> "Layout":
        """Inverse of :meth:`key` (a key without ``format`` is format 1)."""
        raw = json.loads(key)
        return cls(tuple(raw["ks"]), tuple(raw["buckets"]), int(raw.get("format", 1)))


def choose_layout(n_rows: int, dim: int, ks: list[int], budget: MemoryBudget) -> Layout:
    """Buckets per clustering so that a unit holds about a quarter of ``budget``.

    A quarter leaves room for cluster-size imbalance (a bucket of large clusters), for the
    corpus to double before the next retrain of the centroids (which rebuilds the layout), and
    for the search's Gram blocks and pairs.

    Args:
        n_rows: Images to lay out (the filtered set, counted from the Delta log).
        dim: Embedding dimension.
        ks: Clusters per clustering.
        budget: The step's memory budget.
    """
    per_unit = budget.rows(unit_row_bytes(max(dim, 1)), share=0.25, minimum=64)
    wanted = max(1, math.ceil(n_rows / per_unit))
    return Layout(tuple(ks), tuple(min(k, wanted) for k in ks))


@dataclass
class ShardRows:
    """One shard's deduplicated images, ready to lay out (or why it is not ready).

    Attributes:
        shard: The shard.
        frame: image_id, shard, width, height, ingested_at, ``c0``..``c{C-1}`` cluster ids,
            sorted by image_id (empty when not ready).
        x: (n, d) float16 embeddings aligned with ``frame`` (the layout's own values: the
            float32 ones are not held past :func:`shard_rows`).
        model_id: Embedding model ('' when the shard has no filtered image).
        why: None when ready; otherwise why the shard waits (missing or stale assignments).
    """

    shard: str
    frame: pl.DataFrame
    x: np.ndarray
    model_id: str
    why: str | None = None


def shard_rows(store: DeltaStore, shard: str, versions: list[str]) -> ShardRows:
    """Read one shard's filtered embeddings, ingest fields and assignments (shard-pruned).

    A shard is ready when every filtered image with an embedding has an assignment in every
    clustering, made with the centroids in force (``versions``); otherwise it waits whole
    (``why``), and a later run picks it up once it is assigned.

    Memory: one shard's rows, their vectors as float16 (twice while they become a matrix).
    """
    emb = filtered_embeddings(store, [shard], half=True)
    empty = np.zeros((0, 0), np.float16)
    if emb.is_empty():
        return ShardRows(shard, pl.DataFrame(), empty, "")
    model_id = single_model(emb, before="deduplicating", source=f"shard {shard}'s embeddings")
    raw = store.read(
        RAW_IMAGES, shards=[shard], columns=["image_id", "width", "height", "ingested_at"]
    ).unique("image_id", keep="first")
    # joins do not keep row order (maintain_order defaults to none): _r restores emb's order
    frame = emb.select("image_id", "shard").with_row_index("_r")
    frame = frame.join(raw, on="image_id", how="left")
    for c, version in enumerate(versions):
        a = store.read(
            assignments_spec(c),
            shards=[shard],
            columns=["image_id", "cluster", "centroids_version"],
        )
        frame = frame.join(
            a.rename({"cluster": f"c{c}", "centroids_version": f"v{c}"}), on="image_id", how="left"
        )
        missing = frame.filter(pl.col(f"c{c}").is_null()).height
        if missing:
            why = f"{missing} images lack cluster_assignments_{c}"
            return ShardRows(shard, pl.DataFrame(), empty, model_id, why)
        stale = frame.filter(pl.col(f"v{c}") != version).height
        if stale:
            why = f"cluster_assignments_{c} made with older centroids ({stale} images)"
            return ShardRows(shard, pl.DataFrame(), empty, model_id, why)
        frame = frame.drop(f"v{c}")
    x = embedding_matrix(emb["embedding"], np.float16)  # as read: what half_bytes stores
    return ShardRows(shard, frame.sort("_r").drop("_r"), x, model_id)


def member_frame(rows: ShardRows, layout: Layout) -> pl.DataFrame:
    """``dedup_members`` rows of a ready shard: one per image, in clustering 0's buckets."""
    n_c = len(layout.ks)
    return DEDUP_MEMBERS.conform(
        rows.frame.select(
            pl.lit(0, pl.Int32).alias("clustering"),
            pl.Series("bucket", layout.bucket_of(0, rows.frame["c0"].to_numpy())),
            pl.col("c0").cast(pl.Int32).alias("cluster"),
            pl.concat_list([pl.col(f"c{c}").cast(pl.Int32) for c in range(n_c)]).alias("clusters"),
            "image_id",
            "shard",
            half_bytes(rows.x).alias("vector"),
            "width",
            "height",
            "ingested_at",
        )
    ).sort("bucket", "cluster")


def units_of(rows: ShardRows, layout: Layout) -> set[tuple[int, int]]:
    """The units (clustering, bucket) a ready shard's rows fall in, in every clustering."""
    return {
        (c, int(b))
        for c in range(len(layout.ks))
        for b in np.unique(layout.bucket_of(c, rows.frame[f"c{c}"].to_numpy()))
    }


@dataclass
class LaidOut:
    """What :func:`lay_out` did.

    Attributes:
        ready: The ready shards' image counts; their ids spilled (:class:`~.readyids.ReadyIds`).
        waiting: Why each waiting shard waits.
        touched: The units (clustering, bucket) the ready shards' rows fall in.
        new_rows: The ready shards' ``dedup_members`` rows (with ``clusters``), kept while they
            stay under ``keep_bytes``; None when they outgrew it (or it is 0).
    """

    ready: ReadyIds
    waiting: dict[str, str]
    touched: set[tuple[int, int]]
    new_rows: pl.DataFrame | None

    def take_new_rows(self) -> pl.DataFrame | None:
        """The kept new rows, handed over once: this no longer holds them.

        The one-pass search converts them to its own arrays (:meth:`.newrows.NewRows.of`); the
        run that holds this object then does not keep a second copy of every new row (~1.1 KB
        a row at d = 512) through the search, the merge and the recall.
        """
        rows, self.new_rows = self.new_rows, None
        return rows


def lay_out(
    store: DeltaStore,
    shards: list[str],
    versions: list[str],
    model_id: str,
    layout: Layout,
    *,
    max_bytes: int = 128 * 2**20,
    max_shards: int = 256,
    keep_bytes: int = 0,
) -> LaidOut:
    """Replace the ``dedup_members`` rows of ``shards``: ready shards laid out, others removed.

    Shards are gathered into one Delta commit until their rows reach ``max_bytes`` or
    ``max_shards`` shards, so laying out 10⁵ small shards costs hundreds of commits, not 10⁵.
    With ``keep_bytes``, the ready rows are also returned (an incremental run
    searches them against the layout in one pass: :mod:`.newrows`) unless they outgrow it.

    Memory: one group of shards' member rows (≤ ``max_bytes``, or one shard if larger) and
    their Arrow copy while Delta writes them, + the kept rows (≤ ``keep_bytes``).
    """
    ready = ready_ids(store)
    group_ids: dict[str, pl.Series] = {}
    waiting: dict[str, str] = {}
    touched: set[tuple[int, int]] = set()
    kept: list[pl.DataFrame] | None = [] if keep_bytes > 0 else None
    kept_size = 0
    group: list[str] = []
    frames: list[pl.DataFrame] = []
    size = 0

    def flush() -> None:
        nonlocal size
        if group:
            store.replace_rows(DEDUP_MEMBERS, "shard", group, frames)
            ready.add(group_ids)
        group.clear()
        group_ids.clear()
        frames.clear()
        size = 0

    for shard in shards:
        rows = shard_rows(store, shard, versions)
        why = rows.why
        if why is None and rows.frame.height and rows.model_id != model_id:
            why = f"embedded with {rows.model_id}; the centroids are in {model_id}"
        group.append(shard)
        if why is not None:
            waiting[shard] = why
        if why is None and rows.frame.height:
            frame = member_frame(rows, layout)
            touched |= units_of(rows, layout)
            group_ids[shard] = rows.frame["image_id"]
            frames.append(frame)
            size += int(frame.estimated_size())
            if kept is not None:
                kept.append(frame)
                kept_size += int(kept[-1].estimated_size())
                if kept_size > keep_bytes:  # too many for the one-pass search: none kept
                    kept = None
        del rows  # not held while the next shard is read
        if size >= max_bytes or len(group) >= max_shards:
            flush()
    flush()
    new_rows = None
    if kept is not None:
        new_rows = pl.concat(kept) if kept else DEDUP_MEMBERS.empty()
    return LaidOut(ready, waiting, touched, new_rows)


def reset(store: DeltaStore) -> None:
    """Empty ``dedup_members`` and the scratch (a full run lays the corpus out anew)."""
    store.replace_table(DEDUP_MEMBERS, DEDUP_MEMBERS.empty())
    clear_scratch(store)


@dataclass
class UnitRows:
    """The rows of one work unit.

    Attributes:
        frame: cluster, image_id, shard, width, height, ingested_at, sorted by cluster (the
            pair search's result does not depend on row order).
        x: (n, d) float16 vectors aligned with ``frame`` (no float32 copy of the unit: the
            search converts one cluster's rows at a time).
    """

    frame: pl.DataFrame
    x: np.ndarray


@functools.lru_cache(maxsize=4)
def _open_snapshot(uri: str, options: tuple[tuple[str, str], ...], version: int) -> DeltaTable:
    return DeltaTable(uri, version=version, storage_options=dict(options) or None)


def _snapshot(uri: str, options: Mapping[str, str], version: int) -> DeltaTable:
    """``uri`` as of ``version``, opened once per process (a layout's log is long: ~30 ms).

    A version never changes, so the cached table is always right; the units of one run share
    it, whichever engine worker runs them.
    """
    return _open_snapshot(uri, tuple(sorted(options.items())), version)


def read_unit(store: DeltaStore, c: int, b: int, *, version: int | None = None) -> UnitRows:
    """Rows of unit ``(c, b)``: one bucket (:func:`read_parts`).

    Rows come sorted by cluster (stable: within a cluster, in the order the files hold them).

    Memory: the bucket's rows, 2·d bytes of vector each, twice while they are put in cluster
    order (:func:`~curation_assets.lib.vectors.rows_in_order`; the layout is sized for three:
    :func:`unit_row_bytes`).
    """
    frame, parts = read_parts(store, c, b, version=version)
    if not parts:
        return UnitRows(frame, np.zeros((0, 0), np.float16))
    # one order by cluster (a unit gathers from every shard's file): each cluster's rows are
    # then one slice, converted to float32 in one pass when the search takes them
    order = np.argsort(frame["cluster"].to_numpy(), kind="stable")
    x = rows_in_order(parts, order)
    del parts  # (views of polars' buffers, which the frame no longer holds)
    return UnitRows(frame[order], x)


def read_parts(
    store: DeltaStore, c: int, b: int, *, version: int | None = None
) -> tuple[pl.DataFrame, list[np.ndarray]]:
    """Rows of unit ``(c, b)`` in file order: the frame, and its float16 vectors as read.

    Clustering 0's units read ``dedup_members`` (as of ``version``; None = latest); another
    clustering's read its bucket's files in the scratch folder, as :func:`stage` left them
    (``version`` does not apply).

    The vectors are one (n_file, d) array per chunk read, viewed over polars' buffers (no copy,
    no sort: :func:`~curation_assets.lib.vectors.half_parts`); their rows follow the frame's.

    Memory: the bucket's rows, 2·d bytes of vector each.
    """
    unit = _unit_rows(store, c, b, version)
    first = unit.select(pl.col("vector").bin.size()).head(1).collect()
    if first.is_empty():
        return unit.drop("vector").collect(), []
    return half_parts(unit, "vector", int(first.item()) // 2)


def iter_parts(
    store: DeltaStore, b: int, *, dim: int, rows: int, version: int | None = None
) -> Iterator[tuple[pl.DataFrame, list[np.ndarray]]]:
    """:func:`read_parts` of unit ``(0, b)`` streamed: at most ``2 · rows`` rows at a time.

    For a search that takes a bucket's rows one block at a time (the incremental one-pass
    search: :mod:`.newrows`), so its memory is one batch, not the bucket: a bucket is sized
    from the full run's budget and grows with N until the layout is rebuilt. The bucket's
    files (as of ``version``) are read a group at a time: consecutive files of at most
    ``2 · rows`` rows together (a bucket at 3M is many small files, one per group of shards
    the full run laid out, and a block per file made many small searches), a larger file
    one slice of ``rows`` at a time (polars skips the row groups outside a slice; a whole
    file reads faster: 0.47 s against 0.58–0.68 s for the 900k rows of a 1M layout).
    Measured on a 143k-row bucket at 1M: +138 MB over the scan, against +388 MB for polars'
    ``collect_batches`` (it read the whole bucket before its first batch) and more through an
    Arrow dataset scanner.

    Raises:
        ValueError: If a row's vector is not ``2 · dim`` bytes of float16.
    """
    dt = (
        store._table(DEDUP_MEMBERS.name)
        if version is None
        else _snapshot(store.uri(DEDUP_MEMBERS.name), store.storage_options, version)
    )
    if dt is None:
        return
    options = dict(store.storage_options) if not store.is_local else None
    step = max(1, rows)
    where = [("clustering", "=", "0"), ("bucket", "=", str(b))]
    group: list[str] = []
    held = 0
    for uri in dt.file_uris(file_pruning_predicate=where):
        n = int(_parquet_rows([uri], options).select(pl.len()).collect().item())
        if group and held + n > 2 * step:
            yield half_parts(_parquet_rows(group, options), "vector", dim)
            group, held = [], 0
        if n <= 2 * step:  # small files (a layout group's rows of one bucket) read together
            group.append(uri)
            held += n
            continue
        rows_of = _parquet_rows([uri], options)
        for start in range(0, n, step):
            yield half_parts(rows_of.slice(start, step), "vector", dim)
    if group:
        yield half_parts(_parquet_rows(group, options), "vector", dim)


def _parquet_rows(uris: list[str], options: dict[str, str] | None) -> pl.LazyFrame:
    """The rows of some of ``dedup_members``' files, without its partition columns."""
    rows_of = pl.scan_parquet(uris, storage_options=options, hive_partitioning=False)
    names = rows_of.collect_schema().names()
    # the files hold no partition column (Delta keeps them in the log)
    return rows_of.drop([c for c in ("clustering", "bucket") if c in names])


def _unit_rows(store: DeltaStore, c: int, b: int, version: int | None) -> pl.LazyFrame:
    """The rows of unit ``(c, b)``, unread (see :func:`read_parts` for where they are)."""
    if c == 0:
        source = (
            store.scan(DEDUP_MEMBERS)
            if version is None
            else pl.scan_delta(
                _snapshot(store.uri(DEDUP_MEMBERS.name), store.storage_options, version)
            )
        )
        unit = source.filter((pl.col("clustering") == 0) & (pl.col("bucket") == b))
    else:
        folder = ost.join(scratch_uri(store, c), f"bucket={b}")
        files = [ost.join(folder, name) for name in ost.list_names(folder, store.storage_options)]
        files = [f for f in files if f.endswith(".parquet")]
        unit = (
            pl.scan_parquet(
                files,
                hive_partitioning=False,
                storage_options=dict(store.storage_options) if not store.is_local else None,
            )
            if files
            else DEDUP_MEMBERS.empty().lazy()
        )
    return unit.drop("clustering", "bucket")


#: Folder under the Delta root where a search stages the other clusterings' buckets.
SCRATCH_FOLDER = "_scratch/dedup"


def scratch_uri(store: DeltaStore, c: int) -> str:
    """Folder of clustering ``c``'s staged buckets: ``bucket=<b>/part-<group>.parquet``."""
    return ost.join(store.uri(SCRATCH_FOLDER), f"clustering={c}")


def stage(
    store: DeltaStore,
    layout: Layout,
    c: int,
    *,
    version: int,
    buckets: set[int] | None = None,
    max_bytes: int = 128 * 2**20,
) -> int:
    """Write clustering ``c``'s buckets (all, or ``buckets``) to its scratch folder.

    Reads ``dedup_members`` as of ``version`` one bucket of clustering 0 at a time, sets each
    row's cluster and bucket in clustering ``c`` (from ``clusters``), and writes each group of
    ``max_bytes`` as one parquet file per bucket of ``c`` it holds (rows put in bucket order
    first; a unit then reads one file per group). Plain files, not a Delta table: the copy
    lives for one search of one run, which the stage's lock makes the only one
    (:mod:`.stage`), so it needs no commit, no log and no vacuum. Whatever the scratch held
    before is deleted first (:func:`clear_scratch`: a killed run's copy too).

    Returns:
        Rows staged.

    Memory: one group (one bucket of clustering 0, or more up to ``max_bytes``) + one file's
    rows.
    """
    if c == 0:
        raise ValueError("clustering 0's units read dedup_members itself; nothing to stage")
    clear_scratch(store)
    members = pl.scan_delta(
        _snapshot(store.uri(DEDUP_MEMBERS.name), store.storage_options, version)
    )
    folder = scratch_uri(store, c)
    group: list[pl.DataFrame] = []
    size = staged = groups = 0

    def flush() -> None:
        nonlocal size, groups
        if group:
            rows = pl.concat(group)
            group.clear()  # the concatenation is held alone
            target = rows["bucket"].to_numpy()
            order = np.argsort(target, kind="stable")
            cuts = np.flatnonzero(np.diff(target[order])) + 1
            for part in np.split(order, cuts):
                b = int(target[part[0]])
                name = f"bucket={b}/part-{groups:05d}.parquet"
                ost.write_parquet(ost.join(folder, name), rows[part], store.storage_options)
            groups += 1
        size = 0

    for b0 in range(layout.buckets[0]):
        rows = members.filter((pl.col("clustering") == 0) & (pl.col("bucket") == b0)).collect()
        if rows.is_empty():
            continue
        cluster = rows["clusters"].list.get(c).to_numpy()
        rows = rows.with_columns(
            clustering=pl.lit(c, pl.Int32),
            cluster=pl.Series(cluster, dtype=pl.Int32),
            bucket=pl.Series(layout.bucket_of(c, cluster)),
        )
        if buckets is not None:
            rows = rows.filter(pl.col("bucket").is_in(sorted(buckets)))
        if rows.is_empty():
            continue
        group.append(rows)
        size += int(rows.estimated_size())
        staged += rows.height
        if size >= max_bytes:
            flush()
    flush()
    return staged


def clear_scratch(store: DeltaStore) -> None:
    """Delete every staged bucket (and the ``dedup_scratch`` Delta table of layout format 3)."""
    ost.delete_tree(store.uri(SCRATCH_FOLDER), store.storage_options)
    ost.delete_tree(store.uri("dedup_scratch"), store.storage_options)
