"""Pair search inside clusters and the union of clusterings."""

import numpy as np
import pytest

from curation_assets.lib.cluster import assign, train_kmeans
from curation_assets.lib.dedup import Pairs, exhaustive_pairs, pairs_within_clusters, union_pairs
from curation_assets.lib.dedup.pairs import Rows, exact_sims
from curation_assets_tests.lib.dedup.helpers import TAU, clustered_data, pair_set


@pytest.fixture(scope="module")
def data():
    return clustered_data()


def test_one_cluster_is_exhaustive(data):
    x, _, _ = data
    one = np.zeros(len(x), dtype=np.int32)
    found = pairs_within_clusters(x, one, TAU, block=256)  # several tiles per cluster
    assert pair_set(found) == pair_set(exhaustive_pairs(x, TAU))


def test_same_seed_same_centroids_and_pairs(data):
    x, _, _ = data
    runs = []
    for _ in range(2):
        m = train_kmeans(x, 16, seed=4, niter=5)
        p = pairs_within_clusters(x, assign(x, m.centroids)[0], TAU)
        runs.append((m.centroids, p))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1].keys(), runs[1][1].keys())
    np.testing.assert_array_equal(runs[0][1].sim, runs[1][1].sim)


def test_union_records_which_clusterings_found_each_pair():
    a = Pairs(np.array([0, 1]), np.array([5, 2]), np.array([0.99, 0.97], np.float32))
    b = Pairs(np.array([0, 3]), np.array([5, 4]), np.array([0.99, 0.96], np.float32))
    u = union_pairs([a, b])
    assert list(zip(u.i.tolist(), u.j.tolist(), u.found_by.tolist(), strict=True)) == [
        (0, 5, 0b11),
        (1, 2, 0b01),
        (3, 4, 0b10),
    ]
    assert u.stats["found_by_count"] == [2, 1]


def test_two_nearest_centroids_find_a_superset_of_pairs(data):
    x, _, _ = data
    m = train_kmeans(x, 16, seed=0, niter=5)
    ids, _ = assign(x, m.centroids, top=2)
    one = pairs_within_clusters(x, ids[:, 0], TAU)
    two = pairs_within_clusters(x, ids, TAU)
    assert pair_set(one) <= pair_set(two) and len(two) >= len(one)


def test_exact_sims_of_repeated_unordered_pairs_are_each_pairs_own_dot_product():
    """A pair found in several clusterings is computed once; each entry gets its own value."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 24)).astype(np.float16)
    parts = [x[:100], x[100:250], x[250:]]  # rows gathered across parts
    i = rng.integers(0, 300, 500)
    j = rng.integers(0, 300, 500)
    i, j = np.concatenate([i, i[:200], j[:50]]), np.concatenate([j, j[:200], i[:50]])
    got = exact_sims(Rows(parts), i, j, batch=64)
    f = x.astype(np.float32)
    want = np.array([np.dot(f[a], f[b]) for a, b in zip(i, j, strict=True)], np.float32)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    # one pair, either orientation, any batch: the same bits
    np.testing.assert_array_equal(got[500:700], got[:200])
    np.testing.assert_array_equal(got[700:], got[:50])
    np.testing.assert_array_equal(got, exact_sims(Rows([x]), i, j, batch=7))
