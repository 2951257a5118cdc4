"""Merge-on-read for per-shard tables whose rows change in place.

Those tables: ``deduplicated_images`` (decisions that flip) and ``sample_weights`` (rows of
images dedup now removes, deleted).

Delta Lake changes rows copy-on-write: deltalake rewrites every file that holds a changed row,
and writes no deletion vectors (delta-rs issue 4512). A dedup update flips the decisions of a
few hundred old images spread over nearly every old shard, so copy-on-write would rewrite
nearly the whole table for them. A table with ``TableSpec.revision_key`` instead takes the
changed rows as an append, the pattern Delta's maintainers give for merge-on-read (a table of
changes beside the base rows, merged by readers):

* Change rows live in the partition ``shard = _changes`` (:data:`CHANGES`; a shard key starts
  with a letter or digit, so no real shard has that name), with the image's own shard in
  :data:`CHANGED_SHARD`. One update appends one file there, whatever the number of shards it
  touches: no small file per shard.
* Every row carries :data:`REVISION`, the Delta version that wrote it (null in rows written
  before the table had the column: older than any change). A base row is superseded by its
  key's newest change row if that change is newer than it; a shard rewritten later (its
  rows stamped with that later version) supersedes its older changes, so a change row never
  needs deleting for the table to read right, and every state between two commits reads
  consistently.
* A change row whose key has no base row is ignored (its image left with its shard). A
  change row with :data:`DELETED` set deletes its key's row (a tombstone), as long as it is
  newer than that row.

Readers go through :meth:`~curation_assets.lib.storage.DeltaStore.scan` / ``read``, which
apply :func:`merged`; they see the table's own columns, one row per key. The log-only helpers
(``shard_files``, ``shard_row_counts``) leave the changes partition out (so a row deleted by a
tombstone is still counted there until a fold). A reader of the Delta
table outside this package must apply the same rule (see the table's description in the UI).

Folding (:func:`~curation_assets.lib.compaction.fold`): once the change rows reach
:data:`FOLD_SHARE` of the base rows, the shards with changes are rewritten with their merged
rows and the changes partition is emptied: copy-on-write paid once per many updates, not on
every one.
"""

from collections.abc import Iterable, Sequence

import polars as pl
import pyarrow as pa

#: Partition value (of ``shard``) that holds the change rows.
CHANGES = "_changes"
#: Delta version that wrote the row (null: written before the table had the column).
REVISION = "revision"
#: The shard of the image a change row is for (null in base rows).
CHANGED_SHARD = "changed_shard"
#: True in a change row that deletes its key's row (a tombstone); null elsewhere.
DELETED = "deleted"
#: Columns a revision table has beyond its spec; readers do not see them.
HIDDEN = (REVISION, CHANGED_SHARD, DELETED)
#: Change rows, as a share of the base rows, at which the changes are folded into the shards.
FOLD_SHARE = 0.05


def visible_columns(names: Sequence[str], order: Sequence[str]) -> list[str]:
    """The raw table's columns less :data:`HIDDEN`: those of ``order`` first, in its order."""
    visible = [c for c in names if c not in HIDDEN]
    return [c for c in order if c in visible] + [c for c in visible if c not in order]


def newest_per_key(lf: pl.LazyFrame, keys: Sequence[str]) -> pl.LazyFrame:
    """Each key's row with the highest :data:`REVISION` (change rows: the one readers apply)."""
    return lf.group_by(list(keys)).agg(pl.all().sort_by(REVISION).last())


def merged(
    lf: pl.LazyFrame,
    key: str,
    names: Sequence[str],
    shards: Iterable[str] | None = None,
    keys: Iterable[str] | None = None,
    order: Sequence[str] = (),
) -> pl.LazyFrame:
    """The table as readers see it: one row per key, the newest revision's values.

    Args:
        lf: The raw scan of the table (every partition, the hidden columns included).
        key: The row key (``image_id``).
        names: The raw table's column names (its Delta schema).
        shards: Only these shards' rows (and only their change rows), or every shard.
        keys: Only the rows of these keys (filtered in the scan, before the merge: memory ∝
            the matches), or every key.
        order: The columns' order (the spec's; a schema merge moves the partition column
            last); columns not in it follow in schema order.

    Returns:
        The merged rows, with the table's columns less :data:`HIDDEN`.
    """
    visible = visible_columns(names, order)
    wanted = None if shards is None else list(shards)
    if keys is not None:
        lf = lf.filter(pl.col(key).is_in([str(k) for k in keys]))
    if REVISION not in names:  # never changed in place
        out = lf if wanted is None else lf.filter(pl.col("shard").is_in(wanted))
        return out.select(visible)
    base = lf.filter(pl.col("shard") != CHANGES)
    changes = lf.filter(pl.col("shard") == CHANGES)
    if wanted is not None:
        base = base.filter(pl.col("shard").is_in(wanted))
        changes = changes.filter(pl.col(CHANGED_SHARD).is_in(wanted))
    values = [c for c in visible if c not in (key, "shard")]
    deleted = pl.col(DELETED) if DELETED in names else pl.lit(None, pl.Boolean)
    latest = (
        changes.select(key, REVISION, deleted.fill_null(False).alias(DELETED), *values)
        .pipe(newest_per_key, [key])
        .rename({c: f"{c}__new" for c in (REVISION, DELETED, *values)})
    )
    newer = (pl.col(f"{REVISION}__new") > pl.col(REVISION).fill_null(-1)).fill_null(False)
    return (
        base.join(latest, on=key, how="left", maintain_order="left")
        .filter(~(newer & pl.col(f"{DELETED}__new")))
        .select(
            [
                pl.when(newer).then(pl.col(f"{c}__new")).otherwise(pl.col(c)).alias(c)
                if c in values
                else pl.col(c)
                for c in visible
            ]
        )
    )


def changes_since(
    lf: pl.LazyFrame,
    key: str,
    since: int,
    shards: Iterable[str],
    columns: Sequence[str],
) -> pl.LazyFrame:
    """The newest change row per key of ``shards`` written after version ``since``.

    What changed in place since a reader's version, without reading a base row: ``columns``
    of the table (``shard`` is the image's shard), then :data:`DELETED` (False for an update,
    True for a tombstone) and :data:`REVISION`. ``lf`` is the raw scan of a table that has the
    hidden columns. A key whose shard was rewritten after ``since`` may have a change row here
    that readers no longer apply: callers check that the shards' base files are the ones of
    ``since`` (``DeltaStore.shard_files``).

    Memory: the matching change rows only (the changes partition is read with a filter).
    """
    values = [c for c in columns if c not in (key, "shard")]
    return (
        lf.filter(
            (pl.col("shard") == CHANGES)
            & (pl.col(REVISION) > since)
            & pl.col(CHANGED_SHARD).is_in(list(shards))
        )
        .select(
            key,
            pl.col(CHANGED_SHARD).alias("shard"),
            *values,
            pl.col(DELETED).fill_null(False),
            REVISION,
        )
        .pipe(newest_per_key, [key])
        .select(*columns, DELETED, REVISION)
    )


def stamp(table: pa.Table, revision: int, *, change: bool, deleted: bool = False) -> pa.Table:
    """Rows of the table's own columns with the hidden ones added, stamped ``revision``.

    ``change``: as change rows (moved to the :data:`CHANGES` partition, their shard kept in
    :data:`CHANGED_SHARD`; ``deleted``: tombstones of their keys' rows); else as base rows,
    which supersede every older change of their keys.
    """
    n = table.num_rows
    shard = table.column("shard")
    if change:
        where = table.schema.get_field_index("shard")
        table = table.set_column(where, "shard", pa.repeat(pa.scalar(CHANGES, shard.type), n))
    return (
        table.append_column(REVISION, pa.repeat(pa.scalar(revision, pa.int64()), n))
        .append_column(CHANGED_SHARD, shard if change else pa.nulls(n, shard.type))
        .append_column(
            DELETED,
            pa.repeat(pa.scalar(deleted, pa.bool_()), n) if change else pa.nulls(n, pa.bool_()),
        )
    )


def fold_due(base: int, changes: int) -> bool:
    """Whether the change rows have reached :data:`FOLD_SHARE` of the base rows."""
    return changes > 0 and changes >= FOLD_SHARE * base


# -- unpartitioned tables changed by appended rows (``TableSpec.change_key``) -----------------
#
# The dedup's pair graph (``duplicate_pairs``, ``candidate_pairs``, ``duplicate_members``) is
# not per shard: an update re-decides a few components whose rows are spread over every file.
# Its changed rows are appended instead, each stamped with :data:`REVISION` (the Delta version
# that wrote it) and :data:`DELETED` (False: the key's new row; True: a tombstone). Base rows
# (a whole write: a full run, a retune, a fold) have neither column (null). Every change row is
# newer than every base row (a whole write drops the changes), so a reader keeps the base rows
# whose key has no change row, plus each changed key's newest change row unless it is a
# tombstone. Folding rewrites the table whole once the change rows reach
# :data:`GRAPH_FOLD_SHARE` of the base rows (``lib/dedup/localgraph.py``).

#: Change rows, as a share of the base rows, at which a graph table is rewritten whole: an
#: update then costs its own rows plus, amortized, 1 / GRAPH_FOLD_SHARE times them; a reader
#: holds at most that share of the table's keys (the join of base rows against the changes).
GRAPH_FOLD_SHARE = 0.1


def graph_merged(
    lf: pl.LazyFrame, key: Sequence[str], names: Sequence[str], order: Sequence[str] = ()
) -> pl.LazyFrame:
    """An unpartitioned table with change rows as readers see it: one row per ``key``.

    Args:
        lf: The raw scan (the hidden columns included when the table has them).
        key: The columns that key a row.
        names: The raw table's column names.
        order: The columns' order (the spec's).

    Returns:
        The base rows whose key has no change row, then the newest live change row of each
        changed key; the table's columns less :data:`HIDDEN`. Memory: the change rows' keys.
    """
    visible = visible_columns(names, order)
    if DELETED not in names:  # never changed in place since its last whole write
        return lf.select(visible)
    keys = list(key)
    latest = lf.filter(pl.col(DELETED).is_not_null()).pipe(newest_per_key, keys)
    base = lf.filter(pl.col(DELETED).is_null()).join(latest.select(keys), on=keys, how="anti")
    live = latest.filter(~pl.col(DELETED)).select(visible)
    return pl.concat([base.select(visible), live], how="vertical")
