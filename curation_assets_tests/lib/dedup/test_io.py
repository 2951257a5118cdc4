"""The dedup run's inputs from Delta, and conversions between results and the dedup tables."""

import numpy as np
import polars as pl
import pytest

from curation_assets.lib.dedup import dedup, load_inputs
from curation_assets.lib.dedup.io import images_frame, input_tables, pairs_frame, pairs_from_table
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import DUPLICATE_PAIRS, N_CLUSTERINGS
from curation_assets_tests.lib.dedup.helpers import (
    MODEL,
    TAU,
    add_shard,
    assign_shard_rows,
    chain,
    vectors,
    write_centroids,
)


@pytest.fixture
def store(tmp_path) -> DeltaStore:
    s = DeltaStore(str(tmp_path / "delta"))
    write_centroids(s)
    return s


def test_load_inputs_needs_trained_centroids(tmp_path):
    with pytest.raises(ValueError, match="train the centroids first"):
        load_inputs(DeltaStore(str(tmp_path / "empty")))


def test_ready_rows_are_aligned_sorted_and_the_rest_waits_with_why(store):
    xb = vectors(4, 0, seed=2)
    add_shard(store, "b", xb)
    xa = vectors(6, 0, seed=1)
    add_shard(store, "a", xa)
    add_shard(store, "c", vectors(3, 0, seed=3), assign_rows=False)
    inputs = load_inputs(store)
    frame = inputs.frame
    assert frame["shard"].to_list() == ["a"] * 6 + ["b"] * 4
    assert frame["image_id"].to_list() == sorted(frame["image_id"].to_list())
    assert {f"c{c}" for c in range(N_CLUSTERINGS)} <= set(frame.columns)
    np.testing.assert_array_equal(inputs.x, np.concatenate([xa, xb]))
    assert inputs.model_id == MODEL and len(inputs.versions) == N_CLUSTERINGS
    assert inputs.pending["shard"].unique().to_list() == ["c"]
    assert inputs.pending["why"].unique().to_list() == ["no cluster_assignments_0"]

    write_centroids(store, seed=7)  # retrained: every assignment is now stale
    assign_shard_rows(store, "c", [f"c-{i:04d}" for i in range(3)], vectors(3, 0, seed=3))
    stale = load_inputs(store)
    assert stale.frame.height == 3 and stale.frame["shard"].unique().to_list() == ["c"]
    whys = set(stale.pending["why"].to_list())
    assert whys == {"cluster_assignments_0 made with older centroids"}


def test_input_tables_name_every_table_read():
    names = input_tables(N_CLUSTERINGS)
    assert names[:3] == ["filtered_images", "image_embeddings", "raw_images"]
    assert len(names) == 3 + 2 * N_CLUSTERINGS and "cluster_assignments_4" in names


def test_results_round_trip_through_the_tables():
    x = chain()
    meta = {"width": [1000, 200, 200, 50], "height": [1000, 200, 200, 50], "ingested_at": [0] * 4}
    zeros = np.zeros(4, np.int32)
    result = dedup(x, ["c", "b", "a", "d"], meta, [zeros, zeros], TAU)
    pairs = pairs_frame(result)
    assert pairs.schema == DUPLICATE_PAIRS.schema
    assert pairs.select("image_id_a", "image_id_b").rows() == [("a", "b"), ("b", "c")]
    assert pairs["clusterings"].to_list() == ["0,1", "0,1"]
    back = pairs_from_table(pairs, {s: r for r, s in enumerate(["c", "b", "a", "d"])})
    np.testing.assert_array_equal(back.keys(), result.pairs.keys())
    np.testing.assert_array_equal(back.sim, result.pairs.sim)
    np.testing.assert_array_equal(back.found_by, result.pairs.found_by)

    frame = result.images_frame().select("image_id").with_columns(shard=pl.lit("s"))
    images = images_frame(result, frame)
    assert images["component_id"].to_list() == ["c", "c", "c", "d"]
    assert images["row"].to_list() == [0, 1, 2, 3]
    assert images["duplicate_of"].to_list() == [None, "c", "c", None]
    empty = pairs_from_table(pairs.head(0), {})
    assert len(empty) == 0 and empty.found_by is not None
