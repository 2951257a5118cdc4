"""Compaction of an append-only Delta log (``stage_commits``): its reads stay ∝ its live files.

Every append writes one small file, and every read opens each live file, so without
compaction reading the latest commit costs ∝ the commits ever made (measured: 111 ms at 2,000
commits against 13 ms at 10; a global update reads it ~5 times a stage). :func:`compact`
rewrites the files into one (Delta OPTIMIZE) once there are ``min_files`` of them.
"""

import logging

import pyarrow as pa
from deltalake import DeltaTable
from deltalake.transaction import CommitProperties

from curation_assets.lib.storage import DeltaStore, writer_identity

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


def live_files(store: DeltaStore, table: str) -> int:
    """Data files of ``table``'s current version (0 when it does not exist): log only."""
    dt = store._table(table)
    return 0 if dt is None else _count(dt)


def _count(dt: DeltaTable) -> int:
    return pa.table(dt.get_add_actions(flatten=True)).num_rows
