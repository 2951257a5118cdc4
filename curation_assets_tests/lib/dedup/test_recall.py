"""Exhaustive ground truth and pair recall of 1..C clusterings."""

import json

import numpy as np
import pytest

from curation_assets.lib.dedup import exhaustive_pairs, recall_by_num_clusterings
from curation_assets.lib.dedup import recall as recall_module
from curation_assets.lib.tables import N_CLUSTERINGS
from curation_assets.lib.vectors import rows_in_order
from curation_assets.tools.synthetic import clip_like_embeddings
from curation_assets_tests.lib.dedup.helpers import TAU, brute_pairs, clustered_data, pair_set


@pytest.fixture(scope="module")
def data():
    return clustered_data()


@pytest.mark.parametrize("gram_max_queries", [1024, 0], ids=["sgemm-blocks", "faiss"])
def test_exhaustive_pairs_matches_numpy_brute_force(monkeypatch, gram_max_queries):
    """Both candidate searches (sgemm blocks for few queries, faiss above) give the truth."""
    monkeypatch.setattr(recall_module, "GRAM_MAX_QUERIES", gram_max_queries)
    x = clip_like_embeddings(400, 16, seed=2, dup_fraction=0.3, dup_noise=0.3)[0]
    tau = 0.9
    brute = brute_pairs(x, tau)
    assert len(brute) > 20
    assert pair_set(exhaustive_pairs(x, tau, query_batch=64, db_chunk=100)) == brute
    q = np.arange(0, 400, 3)
    sub = {p for p in brute if p[0] % 3 == 0 or p[1] % 3 == 0}
    assert pair_set(exhaustive_pairs(x, tau, query_idx=q, db_chunk=128)) == sub


def test_a_float16_reference_gives_the_pairs_of_its_float32_copy():
    """The recall sample holds its reference as float16; the truth must not change."""
    x = clip_like_embeddings(3000, 32, seed=5, dup_fraction=0.2, dup_noise=0.1)[0]
    half = x.astype(np.float16)
    q = np.arange(0, 3000, 7)
    want = exhaustive_pairs(half.astype(np.float32), 0.9, query_idx=q, db_chunk=700)
    got = exhaustive_pairs(half, 0.9, query_idx=q, db_chunk=700)
    assert len(want) > 20
    np.testing.assert_array_equal(got.i, want.i)
    np.testing.assert_array_equal(got.j, want.j)
    np.testing.assert_array_equal(got.sim, want.sim)
    # the sample puts the rows as read (file parts) in canonical order without stacking them
    order = np.random.default_rng(1).permutation(3000)
    parts = [half[:1000], half[1000:2999], half[2999:]]
    np.testing.assert_array_equal(rows_in_order(parts, order), half[order])


def test_recall_by_num_clusterings_is_non_decreasing_and_exact_with_one_cluster(data):
    x, _, assignments = data
    out = recall_by_num_clusterings(x, assignments, TAU, sample_size=800, seed=1)
    r = out["recall"]
    assert len(r) == N_CLUSTERINGS and all(b >= a for a, b in zip(r, r[1:], strict=False))
    assert out["true_pairs"] > 50 and 0.5 < r[0] <= r[-1] <= 1.0
    json.dumps(out)
    ones = [np.zeros(len(x), np.int32)] * 2
    assert recall_by_num_clusterings(x, ones, TAU, sample_size=500)["recall"] == [1.0, 1.0]


def test_pooled_recall_sums_samples_and_never_claims_zero_error():
    from curation_assets.lib.dedup.recall import pooled_recall

    a = {"true_pairs": 41, "found": [30, 38, 41, 41, 41], "queries": 100}
    b = {"true_pairs": 9, "found": [9, 9, 9, 9, 9], "queries": 50}
    one = pooled_recall([a], 5)
    assert one["recall"][-1] == 1.0 and 0.02 < one["stderr"][-1] < 0.05  # 41/41: not ±0
    both = pooled_recall([a, b], 5)
    assert both["true_pairs"] == 50 and both["queries"] == 150 and both["samples"] == 2
    assert both["recall"][0] == round(39 / 50, 4) and both["stderr"][0] > both["stderr"][-1]
    assert pooled_recall([{"true_pairs": 0, "found": []}], 5)["recall"] == []
