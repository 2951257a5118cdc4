import os

import numpy as np
import pytest

from curation_assets.lib.cluster import kmeans
from curation_assets.lib.cluster.kmeans import (
    KMeansModel,
    assign,
    cluster_size_histogram,
    configure_blas,
    default_k,
    train_clusterings,
    train_kmeans,
)
from curation_assets.tools.synthetic import clip_like_embeddings


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return clip_like_embeddings(4000, 32, seed=3)[0]


def test_default_k_scales_with_sqrt_n_and_matches_the_dalle2_seed_at_1m():
    assert default_k(1_000_000) == 1024
    assert default_k(100_000) == 256
    assert default_k(1) == 1
    assert default_k(3) <= 3
    ks = [default_k(n) for n in (10, 1_000, 100_000, 10_000_000)]
    assert ks == sorted(ks)
    with pytest.raises(ValueError, match="n=0"):
        default_k(0)


def test_configure_blas_respects_a_user_choice_and_only_sets_on_avx512(monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "HASWELL")
    assert configure_blas() == {"OPENBLAS_CORETYPE": "HASWELL", "action": "kept"}
    monkeypatch.delenv("OPENBLAS_CORETYPE")
    out = configure_blas()
    if out["action"] == "set":
        assert os.environ["OPENBLAS_CORETYPE"] == "SKYLAKEX"
        with open("/proc/cpuinfo") as fh:
            assert "avx512f" in fh.read()
    else:
        assert out["action"].startswith("skipped") and "OPENBLAS_CORETYPE" not in os.environ


def test_train_kmeans_is_seeded_normalized_and_reports_statistics(x):
    a = train_kmeans(x, 16, seed=7, niter=5)
    b = train_kmeans(x, 16, seed=7, niter=5)
    c = train_kmeans(x, 16, seed=8, niter=5)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert not np.array_equal(a.centroids, c.centroids)
    assert a.centroids.dtype == np.float32 and a.centroids.shape == (16, 32)
    np.testing.assert_allclose(np.linalg.norm(a.centroids, axis=1), 1.0, atol=1e-5)
    assert a.sizes.sum() == a.n_train == 4000 and a.imbalance >= 1.0
    stats = a.stats()
    assert stats["seed"] == 7 and 0.0 < stats["mean_cosine_to_centroid"] <= 1.0


def test_train_kmeans_samples_and_rejects_bad_configuration(x):
    m = train_kmeans(x, 8, seed=0, niter=3, sample_size=1000)
    assert m.n_train == 1000 and m.sizes.sum() == 1000
    capped = train_kmeans(x, 8, seed=0, niter=3, max_points_per_centroid=50)
    assert capped.n_train == 400
    with pytest.raises(ValueError, match="k=5000"):
        train_kmeans(x, 5000, seed=0)
    if kmeans.faiss.get_num_gpus() == 0:
        with pytest.raises(ValueError, match="gpu=True"):
            train_kmeans(x, 8, seed=0, gpu=True)


def test_train_clusterings_gives_one_distinct_model_per_seed(x):
    models = train_clusterings(x, 8, seeds=(0, 1, 2), niter=3)
    assert [m.seed for m in models] == [0, 1, 2]
    assert not np.array_equal(models[0].centroids, models[1].centroids)
    with pytest.raises(ValueError, match="repeat a seed"):
        train_clusterings(x, 8, seeds=(1, 1))


def test_assign_returns_nearest_centroids_in_bounded_batches(x):
    m = train_kmeans(x, 16, seed=0, niter=5)
    ids, sims = assign(x, m.centroids, top=2, batch_size=333)
    assert ids.shape == sims.shape == (4000, 2)
    assert ids.dtype == np.int32 and sims.dtype == np.float32
    brute = x @ m.centroids.T
    np.testing.assert_array_equal(ids[:, 0], brute.argmax(axis=1))
    np.testing.assert_allclose(sims[:, 0], brute.max(axis=1), atol=1e-5)
    assert (sims[:, 0] >= sims[:, 1]).all() and (ids[:, 0] != ids[:, 1]).all()
    ids_one, _ = assign(x, m.centroids)
    np.testing.assert_array_equal(ids_one[:, 0], ids[:, 0])
    with pytest.raises(ValueError, match="centroids are"):
        assign(x[:, :16], m.centroids)


def test_kmeans_model_safetensors_round_trip(x, tmp_path):
    m = train_kmeans(x, 8, seed=5, niter=3)
    path = tmp_path / "centroids.safetensors"
    m.to_safetensors(path)
    back = KMeansModel.from_safetensors(path)
    np.testing.assert_array_equal(back.centroids, m.centroids)
    np.testing.assert_array_equal(back.sizes, m.sizes)
    assert back.stats() == m.stats() and back.extra == m.extra
    assert not path.read_bytes().startswith(b"\x80")  # not a pickle


def test_cluster_size_histogram_counts_every_cluster():
    sizes = np.array([0, 1, 3, 10, 10, 250])
    edges, counts = cluster_size_histogram(sizes, bins=5)
    assert edges[0] == 0.0 and edges[1] == 1.0 and edges.size == 7
    assert counts.sum() == sizes.size and counts[0] == 1
