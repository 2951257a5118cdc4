"""Figures of a shard-partitioned Delta table read from its log alone (no data file).

:func:`rows_per_shard` (the log's per-file record counts, summed per shard) and
:func:`partitioned_by_shard` let a stage size its reads and decide what changed without scanning
rows: cost ∝ the table's files, not its rows. Used by the export (which shards to rewrite, the
row-count check) and by the label queue (the candidate pool's shards).
"""

import pyarrow as pa
from deltalake import DeltaTable

from curation_assets.lib.storage import DeltaStore


def _delta_table(store: DeltaStore, name: str) -> DeltaTable | None:
    if not store.exists(name):
        return None
    return DeltaTable(store.uri(name), storage_options=store.storage_options or None)


def partitioned_by_shard(store: DeltaStore, name: str) -> bool:
    """Whether table ``name`` exists and is Delta-partitioned by ``shard`` (reads the log)."""
    dt = _delta_table(store, name)
    return dt is not None and list(dt.metadata().partition_columns) == ["shard"]


def rows_per_shard(store: DeltaStore, name: str) -> dict[str, int]:
    """Rows of each shard of a shard-partitioned table, from the Delta log's file statistics.

    Empty when the table does not exist or is not partitioned by shard. Shards whose files
    hold no row are left out.
    """
    dt = _delta_table(store, name)
    if dt is None:
        return {}
    actions = pa.table(dt.get_add_actions(flatten=True))
    if "partition.shard" not in actions.column_names:
        return {}
    out: dict[str, int] = {}
    for shard, n in zip(
        actions.column("partition.shard").to_pylist(),
        actions.column("num_records").to_pylist(),
        strict=True,
    ):
        out[shard] = out.get(shard, 0) + int(n or 0)
    return {k: v for k, v in out.items() if v}
