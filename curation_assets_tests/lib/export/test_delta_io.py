"""Delta I/O the export relies on: per-shard figures from the log, shards replaced at once."""

from dataclasses import replace

import polars as pl

from curation_assets.lib.export.run import partitioned_by_shard, rows_per_shard
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import CURATED_DATASET


def _rows(shard: str, n: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "image_id": [f"{shard}-{i}" for i in range(n)],
            "source_uri": ["x"] * n,
            "caption": [None] * n,
            "weight": [1.0] * n,
            "shard": [shard] * n,
            "width": [1] * n,
            "height": [1] * n,
        }
    )


def test_rows_per_shard_follow_replacements_and_removals(tmp_path):
    store = DeltaStore(str(tmp_path))
    assert rows_per_shard(store, CURATED_DATASET.name) == {}
    assert not partitioned_by_shard(store, CURATED_DATASET.name)
    store.replace_shard(CURATED_DATASET, "a", _rows("a", 3))
    store.replace_shard(CURATED_DATASET, "b", _rows("b", 5))
    assert partitioned_by_shard(store, CURATED_DATASET.name)
    assert rows_per_shard(store, CURATED_DATASET.name) == {"a": 3, "b": 5}
    store.replace_shard(CURATED_DATASET, "a", _rows("a", 1))
    store.replace_shard(CURATED_DATASET, "b", CURATED_DATASET.empty())
    assert rows_per_shard(store, CURATED_DATASET.name) == {"a": 1}


def test_an_unpartitioned_table_has_no_shard_figures(tmp_path):
    store = DeltaStore(str(tmp_path))
    flat = replace(CURATED_DATASET, partition_by=())
    store.replace_table(flat, _rows("a", 2))
    assert not partitioned_by_shard(store, CURATED_DATASET.name)
    assert rows_per_shard(store, CURATED_DATASET.name) == {}


def test_several_shards_replaced_in_one_commit(tmp_path):
    """The export replaces a batch of shards with ``replace_rows`` (one commit)."""
    store = DeltaStore(str(tmp_path))
    store.replace_shard(CURATED_DATASET, "a", _rows("a", 3))
    store.replace_shard(CURATED_DATASET, "c", _rows("c", 2))
    before = store.version(CURATED_DATASET.name)
    version = store.replace_rows(
        CURATED_DATASET, "shard", ["a", "b", "x"], [_rows("a", 1), _rows("b", 4)]
    )
    assert before is not None and version == before + 1
    assert rows_per_shard(store, CURATED_DATASET.name) == {"a": 1, "b": 4, "c": 2}
    assert set(store.shard_files(CURATED_DATASET.name)) == {"a", "b", "c"}
