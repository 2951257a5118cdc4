"""Bounded, shard-pruned reads of the label queue and of training."""

import numpy as np
import polars as pl
import pytest

from curation_assets.lib.classify.active import build_label_queues
from curation_assets.lib.classify.pool import (
    POOL_SHARE,
    candidate_pool,
    check_labelled_fit,
    labelled_shards,
    pool_bytes_per_row,
    pool_rows_for,
    read_labelled,
)
from curation_assets.lib.classify.probe import train_probe
from curation_assets.lib.classify.train import labelled_embeddings
from curation_assets.lib.errors import ConfigError
from curation_assets.lib.memory import MemoryBudget
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import IMAGE_EMBEDDINGS
from curation_assets.lib.vectors import embedding_matrix
from curation_assets_tests.lib.classify.helpers import DIM, unit

N_SHARDS, PER_SHARD = 10, 40


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """10 shards × 40 images: positives around +e0, negatives around -e0."""
    store = DeltaStore(str(tmp_path_factory.mktemp("pool") / "delta"))
    rng = np.random.default_rng(0)
    ids_by_shard = {}
    for s in range(N_SHARDS):
        key = f"shard-{s:02d}"
        v = rng.normal(scale=0.5, size=(PER_SHARD, DIM))
        v[:, 0] += np.where(np.arange(PER_SHARD) % 2 == 0, 1.0, -1.0)
        ids = [f"{rng.integers(1 << 60):016x}" for _ in range(PER_SHARD)]
        ids_by_shard[key] = ids
        store.replace_shard(
            IMAGE_EMBEDDINGS,
            key,
            pl.DataFrame(
                {
                    "image_id": ids,
                    "shard": key,
                    "embedding": pl.Series(unit(v).tolist(), dtype=pl.List(pl.Float32)),
                    "model_id": "m",
                    "dim": pl.Series([DIM] * PER_SHARD, dtype=pl.Int32),
                }
            ),
        )
    return store, ids_by_shard


class ReadLog:
    """Wraps ``store.read`` and records the shards each call asked for."""

    def __init__(self, store: DeltaStore, monkeypatch) -> None:
        self.calls: list[list[str] | None] = []
        original = store.read

        def read(spec, *, shards=None, columns=None, version=None):
            self.calls.append(None if shards is None else sorted(shards))
            return original(spec, shards=shards, columns=columns, version=version)

        monkeypatch.setattr(store, "read", read)


def test_labelled_images_are_read_from_their_shards_only(corpus, monkeypatch):
    store, ids_by_shard = corpus
    wanted = [ids_by_shard["shard-03"][0], ids_by_shard["shard-07"][5], "not-embedded"]
    assert labelled_shards(store, wanted) == {
        "shard-03": [ids_by_shard["shard-03"][0]],
        "shard-07": [ids_by_shard["shard-07"][5]],
    }
    log = ReadLog(store, monkeypatch)
    got = labelled_embeddings(store, wanted)
    assert log.calls == [["shard-03", "shard-07"]]
    assert got["image_id"].to_list() == sorted(wanted[:2])
    assert got.columns == ["image_id", "embedding", "model_id", "dim"]
    assert read_labelled(store, [], ["embedding"]).is_empty()


def test_the_pool_is_bounded_seeded_and_holds_every_labelled_image(corpus, monkeypatch):
    store, ids_by_shard = corpus
    labelled = [ids_by_shard[k][1] for k in sorted(ids_by_shard)]  # one in every shard
    log = ReadLog(store, monkeypatch)
    pool = candidate_pool(store, labelled, max_rows=100, seed=3)
    sampled_call = log.calls[0]
    assert sampled_call is not None and len(sampled_call) == 3  # 3 shards of 40 ≥ 100
    assert pool.sampled_rows == 100 and pool.subsampled and not pool.covers_corpus
    assert set(labelled) <= set(pool.ids)
    assert pool.ids == sorted(set(pool.ids)) and pool.x.shape == (len(pool.ids), DIM)
    assert 100 <= len(pool.ids) <= 100 + len(labelled)
    figures = pool.summary()
    assert figures["corpus_rows"] == N_SHARDS * PER_SHARD and figures["shards_sampled"] == 3
    again = candidate_pool(store, labelled, max_rows=100, seed=3)
    assert again.ids == pool.ids and np.array_equal(again.x, pool.x)
    other = candidate_pool(store, labelled, max_rows=100, seed=4)
    assert other.ids != pool.ids
    with pytest.raises(ValueError, match="max_rows"):
        candidate_pool(store, labelled, max_rows=0)


def test_a_pool_that_fits_the_corpus_gives_the_exhaustive_queue(corpus):
    store, ids_by_shard = corpus
    everything = store.read(IMAGE_EMBEDDINGS).sort("image_id")
    x_all = embedding_matrix(everything["embedding"])
    ids = everything["image_id"].to_list()
    y = (x_all[:, 0] > 0).astype(np.int8)
    lab_idx = np.arange(0, len(ids), 4)  # a quarter labelled
    probe = train_probe(
        x_all[lab_idx], y[lab_idx], category="pos", image_ids=[ids[i] for i in lab_idx]
    )
    labels = pl.DataFrame({"image_id": [ids[i] for i in lab_idx], "category": "pos"})
    pool = candidate_pool(store, labels["image_id"].to_list(), max_rows=10_000, seed=0)
    assert pool.covers_corpus and pool.ids == ids
    np.testing.assert_array_equal(pool.x, x_all)
    exhaustive = build_label_queues(x_all, ids, labels, [probe])
    pooled = build_label_queues(pool.x, pool.ids, labels, [probe])
    assert pooled.equals(exhaustive)


def test_uncertainty_sampling_picks_from_the_pool(corpus):
    store, _ = corpus
    everything = store.read(IMAGE_EMBEDDINGS).sort("image_id")
    x_all = embedding_matrix(everything["embedding"])
    ids = everything["image_id"].to_list()
    y = (x_all[:, 0] > 0).astype(np.int8)
    lab_idx = np.arange(0, len(ids), 4)
    labels = pl.DataFrame({"image_id": [ids[i] for i in lab_idx], "category": "pos"})
    probe = train_probe(
        x_all[lab_idx], y[lab_idx], category="pos", image_ids=[ids[i] for i in lab_idx]
    )
    pool = candidate_pool(store, labels["image_id"].to_list(), max_rows=120, seed=1)
    queue = build_label_queues(pool.x, pool.ids, labels, [probe])
    uncertain = queue.filter(pl.col("reason") == "uncertain_near_threshold")
    assert uncertain.height > 0
    assert set(queue["image_id"]) <= set(pool.ids)
    assert not set(queue["image_id"]) & set(labels["image_id"])
    # the most uncertain unlabelled image of the pool is queued (an image is queued once)
    unl = ~np.isin(np.asarray(pool.ids), labels["image_id"].to_numpy())
    s = probe.score(pool.x[unl])
    closest = np.asarray(pool.ids)[unl][int(np.argmin(np.abs(s - probe.threshold)))]
    assert closest in set(queue["image_id"])  # as uncertain, or first as a neighbour


def test_pool_size_follows_the_memory_budget(corpus):
    store, _ = corpus
    assert pool_bytes_per_row(512) == 16 * 512 + 160
    budget = MemoryBudget(64)
    assert pool_rows_for(budget, 512) == int(budget.bytes * POOL_SHARE) // (16 * 512 + 160)
    assert pool_rows_for(budget, 512, max_pool=1000) == 1000
    with pytest.raises(ValueError, match="dim"):
        pool_bytes_per_row(0)
    check_labelled_fit(store, MemoryBudget(1), 10)
    with pytest.raises(ConfigError, match="memory_budget_mb"):
        check_labelled_fit(store, MemoryBudget(1), 10**6)
