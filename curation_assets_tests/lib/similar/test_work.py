"""The similarity steps' engine work: picklable, small outcomes, the quantizer the step read.

Synthetic vectors in real Delta tables; each work object crosses a pickle round trip, as it
does to a Ray worker, and runs with an empty per-process quantizer cache, as a fresh worker.
"""

import pickle
from pathlib import Path

import pytest

from curation_assets.lib.cluster import train_kmeans
from curation_assets.lib.similar import quantizer_frame
from curation_assets.lib.similar.index import SimilarityIndexError
from curation_assets.lib.similar.run import (
    _QUANTIZERS,
    IndexShardWork,
    UniquenessShardWork,
    current_quantizer,
)
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables.similar import IMAGE_UNIQUENESS, SIMILARITY_INDEX
from curation_assets.lib.tables.similar import SIMILARITY_QUANTIZER as QUANTIZER_TABLE
from curation_assets_tests.lib.similar.test_index import MODEL, NOW, _vectors, _write_shard

SHARDS = ["s0", "s1"]


def _in_a_fresh_worker(work, key: str):
    """Run ``work`` after a pickle round trip with nothing cached, as on a new Ray worker."""
    _QUANTIZERS.clear()
    said: list[str] = []
    return pickle.loads(pickle.dumps(work))(key, said.append), said


@pytest.fixture
def step(tmp_path: Path):
    """Two shards of 200 vectors (d = 16), a quantizer of 8 lists; what the step hands on."""
    store = DeltaStore(str(tmp_path / "delta"))
    xs = {s: _vectors(200, 16, i) for i, s in enumerate(SHARDS)}
    for s, x in xs.items():
        _write_shard(store, s, x)
    model = train_kmeans(xs["s0"], 8, seed=0, max_points_per_centroid=64)
    store.replace_table(QUANTIZER_TABLE, quantizer_frame(model, MODEL, NOW))
    stored = current_quantizer(store)
    assert stored is not None
    table_version, quantizer = stored
    index = IndexShardWork(
        root_uri=store.root_uri,
        storage_options={},
        files_root=str(tmp_path / "files"),
        quantizer_table_version=table_version,
        quantizer_version=quantizer.version,
    )
    scores = UniquenessShardWork(
        root_uri=store.root_uri,
        storage_options={},
        quantizer_table_version=table_version,
        quantizer_version=quantizer.version,
        k=5,
        nprobe=8,
        memory_budget_mb=1,
        examples=3,
    )
    return store, index, scores, quantizer


def test_work_writes_its_shard_and_returns_a_small_outcome(step):
    store, index, scores, quantizer = step
    for s in SHARDS:
        out, said = _in_a_fresh_worker(index, s)
        assert out.row.n_vectors == 200 and [c.passed for c in out.checks] == [True]
        assert said == [f"indexed 200 vectors in {out.seconds:.2f}s"]
    out, said = _in_a_fresh_worker(scores, "s1")
    assert out.rows == 200 and out.searched_shards == 2 and out.stale_shards_skipped == 0
    assert [c.passed for c in out.checks] == [True]
    assert out.figures["images"] == 200 and out.figures["index_images"] == 400
    assert sum(out.histogram[1]) == 200
    frame = store.read(IMAGE_UNIQUENESS).sort("uniqueness", "image_id", descending=[True, False])
    assert frame.height == 200
    assert out.most.columns == ["image_id", "shard", "uniqueness"]
    assert out.most["image_id"].to_list() == frame["image_id"].head(3).to_list()
    least = store.read(IMAGE_UNIQUENESS).sort("uniqueness", "image_id").head(3)
    assert out.least["image_id"].to_list() == least["image_id"].to_list()
    # the outcome is the figures and the extreme rows, not the shard's rows
    assert len(pickle.dumps(out)) < len(pickle.dumps(frame)) / 4
    assert store.read(SIMILARITY_INDEX)["quantizer_version"].to_list() == [quantizer.version] * 2


def test_work_uses_the_quantizer_the_step_read_even_after_a_retrain(step):
    store, index, _, quantizer = step
    x = store.read(QUANTIZER_TABLE)  # any other centroids will do: a retrain on other rows
    model = train_kmeans(_vectors(300, 16, 9), 8, seed=1, max_points_per_centroid=64)
    store.replace_table(QUANTIZER_TABLE, quantizer_frame(model, MODEL, NOW))
    assert store.read(QUANTIZER_TABLE)["version"][0] != x["version"][0]
    _in_a_fresh_worker(index, "s0")
    row = store.read(SIMILARITY_INDEX, shards=["s0"])
    assert row["quantizer_version"].to_list() == [quantizer.version]


def test_a_quantizer_table_replaced_under_the_same_version_is_refused(step):
    _, index, _, _ = step
    other = IndexShardWork(
        root_uri=index.root_uri,
        storage_options={},
        files_root=index.files_root,
        quantizer_table_version=index.quantizer_table_version,
        quantizer_version="0" * 16,
    )
    with pytest.raises(SimilarityIndexError, match="re-run the step"):
        _in_a_fresh_worker(other, "s0")
