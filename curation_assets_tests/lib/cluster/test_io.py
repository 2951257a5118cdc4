"""Cluster tables over Delta: centroids round trip, per-shard assignment, the assets' figures."""

from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest

from curation_assets.lib.cluster.io import (
    CentroidsError,
    assign_streamed,
    assignment_check,
    assignment_figures,
    assignments_frame,
    centroids_frame,
    centroids_version,
    cluster_size_bars,
    clustering_figures,
    load_centroids,
    stored_centroids,
)
from curation_assets.lib.cluster.kmeans import train_kmeans
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import N_CLUSTERINGS, assignments_spec, centroids_spec
from curation_assets.tools.synthetic import clip_like_embeddings

MODEL = "test:model@none"


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return clip_like_embeddings(300, 16, seed=2)[0]


@pytest.fixture
def store(tmp_path) -> DeltaStore:
    return DeltaStore(str(tmp_path / "delta"))


def _train(store: DeltaStore, x: np.ndarray, c: int = 0, *, model_id: str = MODEL):
    model = train_kmeans(x, 4, seed=c, niter=3)
    store.replace_table(centroids_spec(c), centroids_frame(model, model_id, datetime.now(UTC)))
    return model


def test_centroids_round_trip_with_a_content_version(store, x):
    assert load_centroids(store, 0) is None  # never trained
    model = _train(store, x)
    cent = load_centroids(store, 0)
    assert cent is not None and cent.model_id == MODEL
    np.testing.assert_array_equal(cent.matrix, model.centroids)
    assert cent.version == centroids_version(model.centroids)
    assert centroids_version(model.centroids * 0.5) != cent.version
    assert centroids_spec(3).name == "cluster_centroids_3"
    assert assignments_spec(3).name == "cluster_assignments_3"


def _shard_with_centroids(store: DeltaStore, x: np.ndarray, other: int | None = None) -> None:
    """Shard ``a`` holds ``x``; every clustering is trained (``other`` on another model)."""
    from curation_assets_tests.lib.dedup.helpers import add_shard

    for c in range(N_CLUSTERINGS):
        _train(store, x, c, model_id="other:model@x" if c == other else MODEL)
    add_shard(store, "a", x, assign_rows=False)


def test_assign_streamed_uses_the_nearest_stored_centroid(store, x):
    _shard_with_centroids(store, x)
    centroids = [stored_centroids(store, c) for c in range(N_CLUSTERINGS)]
    cent = centroids[1]
    frame = assign_streamed(store, "a", centroids).frame(1, "a", cent.version)
    assert frame.height == x.shape[0] and frame.schema == assignments_spec(1).schema
    np.testing.assert_array_equal(frame["cluster"].to_numpy(), (x @ cent.matrix.T).argmax(axis=1))
    np.testing.assert_allclose(frame["distance"] + frame["cosine"], 1.0, atol=1e-6)
    assert frame["centroids_version"].unique().to_list() == [cent.version]
    assert frame["shard"].unique().to_list() == ["a"]
    empty = assign_streamed(store, "b", centroids).frame(1, "b", cent.version)
    assert empty.is_empty() and empty.schema == assignments_spec(1).schema


def test_assign_streamed_without_centroids_or_with_another_model_says_what_to_do(store, x):
    with pytest.raises(CentroidsError, match="cluster_centroids_2 has never been materialized"):
        stored_centroids(store, 2)
    _shard_with_centroids(store, x, other=2)
    centroids = [stored_centroids(store, c) for c in range(N_CLUSTERINGS)]
    with pytest.raises(CentroidsError, match="retrain the centroids"):
        assign_streamed(store, "a", centroids)


def test_figures_and_check_the_assets_report(x):
    model = train_kmeans(x, 4, seed=0, niter=3)
    figures = clustering_figures(model, version="v", model_id=MODEL, n_images=x.shape[0])
    assert list(figures)[:5] == ["k", "seed", "version", "model_id", "n_images"]
    assert figures["largest_cluster"] == int(model.sizes.max()) and figures["k"] == 4
    labels, counts = cluster_size_bars(model.sizes, bins=3)
    assert len(labels) == len(counts) == 4 and sum(counts) == 4 and labels[0] == "0–1"

    frame = pl.DataFrame({"cluster": [0, 0, 2], "cosine": [0.5, 0.7, 0.9]})
    assert assignment_figures(frame, "v") == {
        "centroids_version": "v",
        "clusters_used": 2,
        "mean_cosine": pytest.approx(0.7),
    }
    assert assignment_figures(frame.head(0), "v")["mean_cosine"] == 0.0
    assert assignment_check([3, 3], 3, 3) == (
        True,
        {"filtered_images": 3, "embedded": 3, "assigned": [3, 3]},
    )
    assert assignment_check([3, 2], 3, 3)[0] is False
    assert assignment_check([2, 2], 3, 2)[0] is False  # an image without an embedding


def test_training_matrix_is_a_seeded_bounded_sample_of_few_shards(tmp_path):
    from curation_assets.lib.cluster import filtered_count, filtered_embeddings, training_matrix
    from curation_assets.lib.vectors import embedding_matrix
    from curation_assets_tests.lib.dedup.helpers import DIM, add_shard, vectors

    store = DeltaStore(str(tmp_path / "delta"))
    for s in range(8):
        add_shard(store, f"s{s}", vectors(250, 0, seed=s), assign_rows=False)
    assert filtered_count(store) == 2000
    pool = training_matrix(store, 300, seed=3)
    assert 200 <= len(pool.image_ids) <= 400  # ~300: a hash share of two or three shards' rows
    assert pool.shards_read <= 3  # shards are sampled: the read is ∝ the pool
    assert pool.image_ids == sorted(pool.image_ids)
    assert pool.x.dtype == np.float32 and pool.x.shape == (len(pool.image_ids), DIM)
    every = filtered_embeddings(store)
    # each row is its image's embedding, bit for bit
    rows = pl.DataFrame({"image_id": pool.image_ids}).join(every, on="image_id", how="left")
    assert rows["shard"].null_count() == 0
    assert np.array_equal(pool.x, embedding_matrix(rows["embedding"]))
    assert rows["shard"].n_unique() == pool.shards_read
    assert pool.model_id == every["model_id"][0]
    again = training_matrix(store, 300, seed=3)
    assert again.image_ids == pool.image_ids and np.array_equal(again.x, pool.x)
    assert training_matrix(store, 300, seed=4).image_ids != pool.image_ids
    whole = training_matrix(store, 5000)  # small corpus: every row
    assert whole.image_ids == sorted(every["image_id"].to_list())
    assert whole.shards_read == 8
    empty = training_matrix(DeltaStore(str(tmp_path / "none")), 300)
    assert empty.image_ids == [] and empty.x.size == 0 and empty.model_id == ""


def test_training_matrix_refuses_two_embedding_models(tmp_path):
    from curation_assets.lib.cluster import training_matrix
    from curation_assets.lib.errors import ConfigError
    from curation_assets.lib.tables import IMAGE_EMBEDDINGS
    from curation_assets_tests.lib.dedup.helpers import add_shard, vectors

    store = DeltaStore(str(tmp_path / "delta"))
    add_shard(store, "s0", vectors(20, 0, seed=0), assign_rows=False)
    add_shard(store, "s1", vectors(20, 0, seed=1), assign_rows=False)
    other = store.read(IMAGE_EMBEDDINGS, shards=["s1"]).with_columns(model_id=pl.lit("other"))
    store.replace_shard(IMAGE_EMBEDDINGS, "s1", other)
    with pytest.raises(ConfigError, match="other"):
        training_matrix(store, 1000)


def _streamed_shard(store: DeltaStore, models=None) -> pl.DataFrame:
    """Shard ``a``: 50 rows, its embeddings stored shuffled, 45 of them filtered in.

    ``models``: the model of each embedding row, in stored order (default: all the helpers').
    """
    from curation_assets.lib.tables import FILTERED_IMAGES, IMAGE_EMBEDDINGS
    from curation_assets_tests.lib.dedup.helpers import add_shard, vectors, write_centroids

    write_centroids(store)
    add_shard(store, "a", vectors(50, 0, seed=1), assign_rows=False)
    emb = store.read(IMAGE_EMBEDDINGS, shards=["a"]).sample(fraction=1.0, shuffle=True, seed=4)
    if models is not None:
        emb = emb.with_columns(model_id=pl.Series(models))
    store.replace_shard(IMAGE_EMBEDDINGS, "a", emb)
    kept = store.read(FILTERED_IMAGES, shards=["a"]).filter(~pl.col("image_id").str.ends_with("3"))
    store.replace_shard(FILTERED_IMAGES, "a", kept)
    return kept


def test_a_shard_is_assigned_a_batch_at_a_time_as_it_would_be_whole(store, monkeypatch):
    from curation_assets.lib.cluster import io as cluster_io
    from curation_assets.lib.cluster.io import filtered_embeddings
    from curation_assets.lib.vectors import embedding_matrix
    from curation_assets_tests.lib.dedup.helpers import MODEL as HELPER_MODEL

    kept = _streamed_shard(store)
    assert 0 < kept.height < 50
    held: list[int] = []
    real = cluster_io.assign

    def counted(x, centroids, **kwargs):
        held.append(x.shape[0])
        return real(x, centroids, **kwargs)

    monkeypatch.setattr(cluster_io, "assign", counted)
    centroids = [stored_centroids(store, c) for c in range(N_CLUSTERINGS)]
    got = assign_streamed(store, "a", centroids, batch_rows=8)
    assert max(held) <= 8 and sum(held) == kept.height * N_CLUSTERINGS
    assert got.filtered == kept.height and got.model_id == HELPER_MODEL
    emb = filtered_embeddings(store, ["a"])
    x = embedding_matrix(emb["embedding"])
    for c, cent in enumerate(centroids):
        cluster, cos = real(x, cent.matrix, top=1)  # the whole shard in one search
        whole = assignments_frame(emb["image_id"], "a", cluster[:, 0], cos[:, 0], cent.version)
        assert got.frame(c, "a", cent.version).equals(whole)


def test_a_streamed_assignment_refuses_mixed_or_foreign_models(tmp_path):
    from curation_assets.lib.errors import ConfigError
    from curation_assets_tests.lib.dedup.helpers import MODEL as HELPER_MODEL

    for name, models, error, message in [
        # one foreign row in a later batch than the first: every batch's model is compared
        ("mixed", [HELPER_MODEL] * 40 + ["x:y@z"] * 10, ConfigError, "2 models"),
        ("foreign", ["x:y@z"] * 50, CentroidsError, "retrain the centroids"),
    ]:
        store = DeltaStore(str(tmp_path / name))
        _streamed_shard(store, models)
        centroids = [stored_centroids(store, c) for c in range(N_CLUSTERINGS)]
        with pytest.raises(error, match=message):
            assign_streamed(store, "a", centroids, batch_rows=8)
