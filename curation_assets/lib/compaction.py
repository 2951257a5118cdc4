"""Keeping tables' files few: compaction of append-only logs, folding of in-place changes.

* :func:`compact`: every append to ``stage_commits`` writes one small file, and every read
  opens each live file, so without compaction reading the latest commit costs ∝ the commits
  ever made (measured: 111 ms at 2,000 commits against 13 ms at 10; a global update reads it
  ~5 times a stage). It rewrites the files into one (Delta OPTIMIZE) once there are
  ``min_files`` of them.
* :func:`fold`: a table changed in place (:mod:`~curation_assets.lib.revisions`) gathers change
  rows that every read merges; once they reach a share of the table
  (:func:`~curation_assets.lib.revisions.fold_due`), the shards they touch are rewritten with
  their merged rows and the changes are dropped.
* :func:`changes_since`: what changed in place after a version, read from the change rows
  alone (a reader that knows the table as of that version updates its view at the cost of
  the changes, not of the table); :func:`left_since`: the rows of a table downstream that
  such changes take out (dedup's kept images that are now removed).
"""

import logging
from collections.abc import Callable, Iterable

import polars as pl
import pyarrow as pa
from deltalake import DeltaTable
from deltalake.transaction import CommitProperties

from curation_assets.lib import revisions
from curation_assets.lib.deltawrite import writer_identity
from curation_assets.lib.memory import shard_batches
from curation_assets.lib.revisions import CHANGED_SHARD, CHANGES, DELETED, REVISION, fold_due
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import TableSpec

logger = logging.getLogger(__name__)


def compact(store: DeltaStore, table: str, *, min_files: int) -> int:
    """Rewrite ``table``'s data files into one once it holds ``min_files`` or more (OPTIMIZE).

    The rows stay as they are; Delta records the rewrite as no data change
    (:data:`~curation_assets.lib.deltalog.MAINTENANCE_OPERATIONS`), so an append committed
    meanwhile is kept (tested). Two compactions at once are not safe in deltalake (both
    commit, and the rows of the files both rewrote are then there twice: seen with 1.6), so a
    compaction holds the root's lock ``compact-<table>`` and counts the files again under it.
    The replaced files go at the next vacuum. A failed compaction raises and leaves the table
    as it was (the caller decides what that costs: :func:`~.commits.record_commit` logs it).

    Returns:
        Files rewritten (0 when below ``min_files``).
    """
    if live_files(store, table) < min_files:  # the common case: no lock taken
        return 0
    with store.lock(f"compact-{table}"):
        dt = store._table(table)  # the store's opener: its storage options
        if dt is None or _count(dt) < min_files:  # another process compacted it meanwhile
            return 0
        props = CommitProperties(
            custom_metadata={"curation.writer": writer_identity(), "curation.table": table}
        )
        metrics = dt.optimize.compact(commit_properties=props)
    removed = int(metrics.get("numFilesRemoved", 0))
    logger.info(
        "delta %s: compacted %d files into %s", table, removed, metrics.get("numFilesAdded")
    )
    return removed


#: Rows one fold commit rewrites at most (a bigger shard alone): ~150 bytes a merged row of
#: ``deduplicated_images`` in memory, so ~150 MB.
FOLD_ROWS = 1_000_000


def fold(store: DeltaStore, spec: TableSpec, *, force: bool = False) -> list[str]:
    """Fold a table's change rows into its shards, when due (or ``force``).

    Due: :func:`~curation_assets.lib.revisions.fold_due` on the Delta log's row counts. The
    shards with change rows are rewritten with their rows as read (merged), in commits of at
    most :data:`FOLD_ROWS` rows, the last of which also empties the changes partition. The
    rewritten rows are stamped newer than every change, so the table reads the same after
    every commit, and a fold killed half-way leaves nothing to repair (the next fold redoes
    it). No row changes as read, so the commits name no shard: no stage redoes a shard for a
    fold.

    Memory: one commit's rows.

    Returns:
        The shards rewritten (none when not due).
    """
    base = store.shard_row_counts(spec.name, changes=True)  # one pass over the log
    changes = base.pop(CHANGES, 0)
    if not force and not fold_due(sum(base.values()), changes):
        return []
    dt = store._table(spec.name)
    if dt is None:
        return []
    touched = (
        pl.scan_delta(dt)
        .filter(pl.col("shard") == CHANGES)
        .select(CHANGED_SHARD)
        .unique()
        .collect()[CHANGED_SHARD]
    )
    shards = sorted(s for s in touched.to_list() if s in base)
    groups = shard_batches(base, shards, FOLD_ROWS) or [[]]
    for i, group in enumerate(groups):
        rows = store.read(spec, shards=group) if group else spec.empty()
        last = [CHANGES] if i == len(groups) - 1 else []
        store.replace_rows(spec, "shard", [*group, *last], rows, named=[])
    logger.info("delta %s: folded changes into %d shards", spec.name, len(shards))
    return shards


def drop_changes(store: DeltaStore, spec: TableSpec) -> None:
    """Empty a table's changes partition, once every shard it touches has been rewritten."""
    if store.change_row_count(spec.name):
        store.replace_rows(spec, "shard", [CHANGES], [], named=[])


def live_files(store: DeltaStore, table: str) -> int:
    """Data files of ``table``'s current version (0 when it does not exist): log only."""
    dt = store._table(table)
    return 0 if dt is None else _count(dt)


def _count(dt: DeltaTable) -> int:
    return pa.table(dt.get_add_actions(flatten=True)).num_rows


def changes_since(
    store: DeltaStore, spec: TableSpec, *, since: int, shards: list[str], columns: list[str]
) -> pl.DataFrame:
    """The newest change row per key of ``shards`` after version ``since`` (no base row read).

    ``columns`` of ``spec`` (``shard``: the image's), then ``deleted`` and ``revision``
    (:func:`~curation_assets.lib.revisions.changes_since`); empty for a table never changed in
    place. Memory: the matching change rows.
    """
    dt = store._table(spec.name)  # the store's opener: its storage options
    names = [] if dt is None else [f.name for f in dt.schema().fields]
    if dt is None or REVISION not in names or not shards:
        empty = spec.empty().select(columns)
        return empty.with_columns(pl.lit(False).alias(DELETED), pl.lit(0, pl.Int64).alias(REVISION))
    key = spec.revision_key or "image_id"
    return revisions.changes_since(pl.scan_delta(dt), key, since, shards, columns).collect()


def same_base(store: DeltaStore, table: str, since: int, shards: Iterable[str]) -> set[str]:
    """The ``shards`` whose base files are the ones of version ``since`` (log only).

    Their rows changed only by change rows since, if at all: :func:`changes_since` says how.
    (``DeltaStore.changed_shards`` counts a shard named by a change-row commit as changed.)
    """
    before, now = store.shard_files(table, since), store.shard_files(table)
    return {s for s in shards if before.get(s) is not None and before.get(s) == now.get(s)}


def left_since(
    store: DeltaStore,
    spec: TableSpec,
    *,
    since: int,
    shards: list[str],
    flag: str,
    listed: Callable[[list[str]], pl.DataFrame],
) -> tuple[pl.DataFrame, set[str]]:
    """Rows of a downstream table whose key's ``flag`` was turned off in place after ``since``.

    The downstream table lists the keys of ``spec`` that had ``flag`` set (dedup's ``kept``)
    as of ``since``; ``listed(keys)`` returns its rows of those keys. Read from the change rows
    alone (:func:`changes_since`). A change that leaves a listed key flagged, or an unlisted
    one unflagged, takes nothing out.

    Returns:
        ``(rows, bad)``: the listed rows whose key's newest change turned ``flag`` off (they
        leave the downstream table), and the shards with a change that is no such removal
        (a tombstone, a null ``flag``, a newly flagged key): those need their rows redone.
    """
    key = spec.revision_key or "image_id"
    flips = changes_since(store, spec, since=since, shards=shards, columns=[key, "shard", flag])
    rows = listed(flips[key].to_list())
    flips = flips.join(
        rows.select(key, pl.lit(True).alias("_listed")), on=key, how="left"
    ).with_columns(pl.col("_listed").fill_null(False))
    other = pl.col(DELETED) | pl.col(flag).is_null() | (pl.col(flag) & ~pl.col("_listed"))
    bad = set(flips.filter(other)["shard"].to_list())
    gone = rows.join(flips.filter(~pl.col(flag)).select(key), on=key, how="semi")
    return gone, bad


def live_row_counts(store: DeltaStore, spec: TableSpec) -> dict[str, int]:
    """Rows of each shard as readers see them: the log's counts less its live tombstones.

    A shard's base rows all carry the revision of the write that made them (a shard is always
    written whole), read from the files' statistics (``max.revision``); a tombstone newer than
    that deletes a row (:mod:`~curation_assets.lib.revisions`: its key has a base row, as every
    writer of tombstones here ensures). Reads the log and the tombstones' three columns, not
    the base rows. Shards left without rows are absent.
    """
    counts = store.shard_row_counts(spec.name, changes=True)  # one pass over the log
    changes = counts.pop(CHANGES, 0)
    dt = store._table(spec.name)  # the store's opener: its storage options
    names = [] if dt is None else [f.name for f in dt.schema().fields]
    if dt is None or DELETED not in names or not changes:
        return {s: n for s, n in counts.items() if n}
    base: dict[str, int] = {}
    for shard, rev in store._shard_actions(spec.name, None, f"max.{REVISION}"):
        base[shard] = max(base.get(shard, -1), -1 if rev is None else int(rev))
    key = spec.revision_key or "image_id"
    tombs = (
        pl.scan_delta(dt)
        .filter((pl.col("shard") == CHANGES) & pl.col(DELETED).fill_null(False))
        .select(key, pl.col(CHANGED_SHARD).alias("shard"), REVISION)
        .collect()
    )
    bases = pl.DataFrame(
        {"shard": list(base), "base": list(base.values())},
        schema={"shard": pl.String, "base": pl.Int64},
    )
    live = tombs.join(bases, on="shard").filter(pl.col(REVISION) > pl.col("base"))
    for shard, n in live.unique(key).group_by("shard").len().iter_rows():
        counts[shard] -= n
    return {s: n for s, n in counts.items() if n}


#: Columns of :func:`flag_counts`.
FLAG_COUNTS_SCHEMA = {"shard": pl.String, "n_true": pl.Int64, "n_false": pl.Int64}


def flag_counts(
    store: DeltaStore, spec: TableSpec, shards: Iterable[str], flag: str
) -> pl.DataFrame:
    """Rows of each of ``shards`` whose ``flag`` is true, and false, as readers see the table.

    What ``store.scan(spec)`` grouped by shard would count (``sum(flag)``, ``sum(~flag)``;
    a null counts in neither) without the key merge a read does: the base files' ``flag``
    column counted per shard (no key read), then corrected by the change rows that readers
    apply (:mod:`~curation_assets.lib.revisions`): for each such key, its base row's ``flag``
    (read by key) out, its newest change's in (none for a tombstone).

    Memory: the shards' change rows and the base rows of their keys, not the shards' rows
    (reading ``deduplicated_images`` merged for 14 shards of a 1M corpus cost +46 MB; this
    reads a boolean column and the few hundred changes).

    Returns:
        ``shard, n_true, n_false`` for each of ``shards`` with a live row, sorted by shard.
    """
    wanted = sorted(set(shards))
    dt = store._table(spec.name)  # the store's opener: its storage options
    if dt is None or not wanted:
        return pl.DataFrame(schema=FLAG_COUNTS_SCHEMA)
    names = [f.name for f in dt.schema().fields]
    lf = pl.scan_delta(dt)
    base = (
        lf.filter((pl.col("shard") != CHANGES) & pl.col("shard").is_in(wanted))
        .group_by("shard")
        .agg(
            pl.col(flag).sum().cast(pl.Int64).alias("n_true"),
            (~pl.col(flag)).sum().cast(pl.Int64).alias("n_false"),
            pl.len().alias("_n"),
        )
        .collect(engine="streaming")
    )
    delta = _flag_moves(lf, spec, names, wanted, flag)
    return (
        base.join(delta, on="shard", how="left")
        .with_columns(pl.col("d_true", "d_false", "d_n").fill_null(0))
        .select(
            "shard",
            (pl.col("n_true") + pl.col("d_true")).alias("n_true"),
            (pl.col("n_false") + pl.col("d_false")).alias("n_false"),
            (pl.col("_n") - pl.col("d_n")).alias("_n"),
        )
        .filter(pl.col("_n") > 0)
        .drop("_n")
        .sort("shard")
    )


def _flag_moves(
    lf: pl.LazyFrame, spec: TableSpec, names: list[str], wanted: list[str], flag: str
) -> pl.DataFrame:
    """``shard, d_true, d_false, d_n``: what the change rows readers apply move in each count."""
    moves = pl.DataFrame(
        schema={"shard": pl.String, "d_true": pl.Int64, "d_false": pl.Int64, "d_n": pl.Int64}
    )
    if REVISION not in names:  # never changed in place
        return moves
    key = spec.revision_key or "image_id"
    latest = revisions.changes_since(lf, key, -1, wanted, [key, flag]).collect()
    if latest.is_empty():
        return moves
    old = (
        lf.filter(
            (pl.col("shard") != CHANGES)
            & pl.col("shard").is_in(wanted)
            & pl.col(key).is_in(latest[key].to_list())
        )
        .select(
            key, "shard", pl.col(flag).alias("_old"), pl.col(REVISION).fill_null(-1).alias("_rev")
        )
        .collect()
    )
    # a change applies where it is newer than its key's base row (a later rewrite wins)
    live = latest.join(old, on=key, how="inner").filter(pl.col(REVISION) > pl.col("_rev"))
    new = pl.when(pl.col(DELETED)).then(None).otherwise(pl.col(flag))  # a tombstone: no row
    old_flag = pl.col("_old")

    def moved(now: pl.Expr, before: pl.Expr) -> pl.Expr:
        return (now.fill_null(False).cast(pl.Int64) - before.fill_null(False).cast(pl.Int64)).sum()

    return live.group_by("shard").agg(
        moved(new, old_flag).alias("d_true"),
        moved(~new, ~old_flag).alias("d_false"),
        pl.col(DELETED).cast(pl.Int64).sum().alias("d_n"),
    )
