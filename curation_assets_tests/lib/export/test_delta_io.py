"""Delta I/O the export relies on: per-shard figures from the log, shards replaced at once."""

from dataclasses import replace

import polars as pl
import pytest

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


def test_replace_shards_is_one_commit_for_several_shards(tmp_path):
    store = DeltaStore(str(tmp_path))
    store.replace_shard(CURATED_DATASET, "a", _rows("a", 3))
    store.replace_shard(CURATED_DATASET, "c", _rows("c", 2))
    before = store.version(CURATED_DATASET.name)
    version = store.replace_shards(
        CURATED_DATASET, ["a", "b", "x"], pl.concat([_rows("a", 1), _rows("b", 4)])
    )
    assert before is not None and version == before + 1
    assert rows_per_shard(store, CURATED_DATASET.name) == {"a": 1, "b": 4, "c": 2}
    store.replace_shards(CURATED_DATASET, ["a"], CURATED_DATASET.empty())  # emptied
    assert rows_per_shard(store, CURATED_DATASET.name) == {"b": 4, "c": 2}
    with pytest.raises(ValueError, match="unlisted shards"):
        store.replace_shards(CURATED_DATASET, ["a"], _rows("b", 1))
    with pytest.raises(ValueError, match=">= 1 shard"):
        store.replace_shards(CURATED_DATASET, [], CURATED_DATASET.empty())
