import json

import numpy as np
import pytest

from curation_assets.lib.cluster import assign, train_clusterings, train_kmeans
from curation_assets.lib.dedup import (
    DEFAULT_TAU,
    DedupState,
    ImageMeta,
    Pairs,
    calibrated_tau,
    choose_kept,
    connected_components,
    dedup,
    dedup_incremental,
    exhaustive_pairs,
    pair_recall,
    pairs_within_clusters,
    recall_by_num_clusterings,
    union_pairs,
)
from curation_assets.tools.synthetic import clip_like_embeddings

TAU = 0.95


@pytest.fixture(scope="module")
def data():
    x, group = clip_like_embeddings(3000, 48, seed=11, dup_fraction=0.2)
    models = train_clusterings(x, 16, niter=5)
    assignments = [assign(x, m.centroids)[0] for m in models]
    return x, group, assignments


def _meta(n: int, seed: int) -> ImageMeta:
    rng = np.random.default_rng(seed)
    return ImageMeta(
        width=rng.choice([256, 512, 1024], n).astype(np.int64),
        height=rng.choice([256, 512], n).astype(np.int64),
        ingested_at=rng.integers(0, 10, n).astype(np.int64),
    )


def _ids(n: int) -> np.ndarray:
    return np.array([f"{(i * 7919) % 100003:06d}" for i in range(n)])


def _brute_pairs(x: np.ndarray, tau: float) -> set[tuple[int, int]]:
    s = x @ x.T
    ii, jj = np.nonzero(np.triu(s >= tau, 1))
    return set(zip(ii.tolist(), jj.tolist(), strict=True))


def _pair_set(p: Pairs) -> set[tuple[int, int]]:
    return set(zip(p.i.tolist(), p.j.tolist(), strict=True))


def test_planted_duplicates_are_found_and_no_pair_is_below_tau(data):
    x, group, assignments = data
    result = dedup(x, _ids(len(x)), _meta(len(x), 0), assignments, TAU)
    assert result.pairs.sim.min() >= TAU and (result.pairs.i < result.pairs.j).all()
    truth = exhaustive_pairs(x, TAU)
    assert pair_recall(result.pairs, truth) >= 0.97
    planted = group[truth.i] == group[truth.j]
    assert planted.mean() > 0.99  # the synthetic data has (almost) no accidental pairs
    # Planted groups whose members are all >= tau apart collapse to one kept image.
    one_cluster = dedup(x, _ids(len(x)), _meta(len(x), 0), [np.zeros(len(x), np.int32)], TAU)
    collapsed, exact, tight = 0, 0, 0
    for g in np.unique(group[group >= 0]):
        rows = np.flatnonzero(group == g)
        if (x[rows] @ x[rows].T).min() < TAU:
            continue
        tight += 1
        collapsed += result.kept[rows].sum() == 1 and len(set(result.component_id[rows])) == 1
        exact += one_cluster.kept[rows].sum() == 1
    assert tight > 100 and exact == tight and collapsed >= 0.95 * tight
    assert result.stats["removed"] == len(x) - result.stats["components"]


def test_one_cluster_is_exhaustive(data):
    x, _, _ = data
    one = np.zeros(len(x), dtype=np.int32)
    found = pairs_within_clusters(x, one, TAU, block=256)  # several tiles per cluster
    assert _pair_set(found) == _pair_set(exhaustive_pairs(x, TAU))


def test_exhaustive_pairs_matches_numpy_brute_force():
    x = clip_like_embeddings(400, 16, seed=2, dup_fraction=0.3, dup_noise=0.3)[0]
    tau = 0.9
    brute = _brute_pairs(x, tau)
    assert len(brute) > 20
    assert _pair_set(exhaustive_pairs(x, tau, query_batch=64, db_chunk=100)) == brute
    q = np.arange(0, 400, 3)
    sub = {p for p in brute if p[0] % 3 == 0 or p[1] % 3 == 0}
    assert _pair_set(exhaustive_pairs(x, tau, query_idx=q, db_chunk=128)) == sub


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


def _chain():
    """A~B (14°), B~C (14°), A!~C (28°: cos 0.883 < 0.95), D unrelated; unit vectors."""
    e = np.eye(8, dtype=np.float32)

    def at(deg: float) -> np.ndarray:
        r = np.deg2rad(deg)
        return np.cos(r) * e[0] + np.sin(r) * e[1]

    return np.stack([at(0), at(14), at(28), e[5]]).astype(np.float32)


def test_chain_forms_one_component_with_one_kept_image_and_honest_similarity():
    x = _chain()
    assert x[0] @ x[2] < TAU <= min(x[0] @ x[1], x[1] @ x[2])
    p = pairs_within_clusters(x, np.zeros(4, np.int32), TAU)
    assert _pair_set(p) == {(0, 1), (1, 2)}
    comp = connected_components(4, p)
    assert comp.tolist() == [0, 0, 0, 3]
    meta = {
        "width": [1000, 200, 200, 50],
        "height": [1000, 200, 200, 50],
        "ingested_at": [5, 1, 2, 0],
    }
    result = dedup(x, ["c", "b", "a", "d"], meta, [np.zeros(4, np.int32)], TAU)
    assert result.kept.tolist() == [True, False, False, True]  # highest resolution
    assert result.duplicate_of.tolist() == [-1, 0, 0, -1]
    assert result.similarity[2] == pytest.approx(float(x[2] @ x[0]), abs=1e-6)
    assert result.similarity[2] < TAU and result.stats["removed_below_tau"] == 1
    assert result.component_size.tolist() == [3, 3, 3, 1]
    frame = result.images_frame()
    assert frame["duplicate_of"].to_list() == [None, "c", "c", None]
    assert frame["similarity"].null_count() == 2
    pairs = result.pairs_frame()
    assert pairs["image_id_i"].to_list() == ["c", "b"] and pairs["found_by"].to_list() == [1, 1]


@pytest.mark.parametrize(
    ("width", "ingested_at", "ids", "policy", "kept_row"),
    [
        ([100, 300, 200], [0, 1, 2], ["a", "b", "c"], None, 1),  # highest resolution
        ([100, 100, 100], [5, 3, 4], ["a", "b", "c"], None, 1),  # then earliest
        ([100, 100, 100], [1, 1, 1], ["z", "y", "x"], None, 2),  # then smallest id
        ([100, 300, 200], [0, 1, 2], ["a", "b", "c"], ("earliest", "resolution"), 0),
        ([100, 300, 200], [0, 1, 2], ["b", "c", "a"], ("smallest_id",), 2),
    ],
)
def test_keep_policy_order(width, ingested_at, ids, policy, kept_row):
    x = _chain()[:3]
    kwargs = {} if policy is None else {"policy": policy}
    choice = choose_kept(
        np.zeros(3, np.int64),
        x=x,
        width=np.array(width),
        height=np.ones(3),
        ingested_at=np.array(ingested_at),
        image_id=np.array(ids),
        **kwargs,
    )
    assert np.flatnonzero(choice.kept).tolist() == [kept_row]
    others = [r for r in range(3) if r != kept_row]
    assert (choice.duplicate_of[others] == kept_row).all()
    np.testing.assert_allclose(choice.similarity[others], x[others] @ x[kept_row], atol=1e-6)


def test_bad_policy_and_tau_are_rejected_with_the_fix():
    x = _chain()
    with pytest.raises(ValueError, match="policy="):
        choose_kept(
            np.zeros(4),
            x=x,
            width=np.ones(4),
            height=np.ones(4),
            ingested_at=np.zeros(4),
            image_id=np.array(list("abcd")),
            policy=("biggest",),
        )
    with pytest.raises(ValueError, match="tau=1.5"):
        pairs_within_clusters(x, np.zeros(4, np.int32), 1.5)


def _assert_same(a, b):
    for name in ("image_id", "kept", "duplicate_of", "component_id", "component_size"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    np.testing.assert_array_equal(a.similarity, b.similarity)  # NaN == NaN here
    np.testing.assert_array_equal(a.pairs.keys(), b.pairs.keys())
    np.testing.assert_array_equal(a.pairs.sim, b.pairs.sim)
    np.testing.assert_array_equal(a.pairs.found_by, b.pairs.found_by)
    for key in ("pairs_per_clustering", "pairs_union", "removed", "components"):
        assert a.stats[key] == b.stats[key], key


@pytest.mark.parametrize("seed", [0, 1])
def test_incremental_equals_full_recompute(data, seed):
    x, _, assignments = data
    n = len(x)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)  # random old/new split, then rows renumbered old-first
    xs, assigns = x[perm], [a[perm] for a in assignments]
    ids, meta = _ids(n), _meta(n, seed)
    full = dedup(xs, ids, meta, assigns, TAU)
    cut1, cut2 = int(0.6 * n), int(0.85 * n)
    state = DedupState.initial(
        xs[:cut1], ids[:cut1], meta.take(np.arange(cut1)), [a[:cut1] for a in assigns], TAU
    )
    for lo, hi in [(cut1, cut2), (cut2, n)]:
        state = dedup_incremental(
            state,
            xs[lo:hi],
            ids[lo:hi],
            meta.take(np.arange(lo, hi)),
            [a[lo:hi] for a in assigns],
            TAU,
        )
    _assert_same(state.result, full)
    assert state.result.stats["new_rows"] == n - cut2


def test_incremental_new_image_that_wins_the_policy_becomes_kept(data):
    x, group, assignments = data
    n = len(x)
    # Old rows: all but the last member of each planted group; new rows: those last members,
    # at a higher resolution than anything old, so each new row wins its component.
    last = np.array([np.flatnonzero(group == g)[-1] for g in np.unique(group[group >= 0])])
    new_mask = np.zeros(n, bool)
    new_mask[last] = True
    order = np.r_[np.flatnonzero(~new_mask), np.flatnonzero(new_mask)]
    xs, assigns = x[order], [a[order] for a in assignments]
    ids = _ids(n)
    meta = _meta(n, 3)
    n_old = int((~new_mask).sum())
    meta.width[n_old:] = 4096
    meta.height[n_old:] = 4096
    full = dedup(xs, ids, meta, assigns, TAU)
    old = DedupState.initial(
        xs[:n_old], ids[:n_old], meta.take(np.arange(n_old)), [a[:n_old] for a in assigns], TAU
    )
    new = dedup_incremental(
        old,
        xs[n_old:],
        ids[n_old:],
        meta.take(np.arange(n_old, n)),
        [a[n_old:] for a in assigns],
        TAU,
    )
    _assert_same(new.result, full)
    res = new.result
    flipped = np.flatnonzero(old.result.kept & ~res.kept[:n_old])
    assert new.result.stats["previously_kept_now_removed"] == flipped.size > 10
    # A previously kept image now points at the new winner of its component.
    assert (res.duplicate_of[flipped] >= n_old).all()
    assert res.kept[res.duplicate_of[flipped]].all()


def test_incremental_rejects_a_changed_tau(data):
    x, _, assignments = data
    state = DedupState.initial(
        x[:100], _ids(100), _meta(100, 0), [a[:100] for a in assignments], TAU
    )
    with pytest.raises(ValueError, match="run a full"):
        dedup_incremental(
            state, x[100:200], _ids(100), _meta(100, 1), [a[100:200] for a in assignments], 0.9
        )


def test_recall_by_num_clusterings_is_non_decreasing_and_exact_with_one_cluster(data):
    x, _, assignments = data
    out = recall_by_num_clusterings(x, assignments, TAU, sample_size=800, seed=1)
    r = out["recall"]
    assert len(r) == 5 and all(b >= a for a, b in zip(r, r[1:], strict=False))
    assert out["true_pairs"] > 50 and 0.5 < r[0] <= r[-1] <= 1.0
    json.dumps(out)
    ones = [np.zeros(len(x), np.int32)] * 2
    assert recall_by_num_clusterings(x, ones, TAU, sample_size=500)["recall"] == [1.0, 1.0]


def test_two_nearest_centroids_find_a_superset_of_pairs(data):
    x, _, _ = data
    m = train_kmeans(x, 16, seed=0, niter=5)
    ids, _ = assign(x, m.centroids, top=2)
    one = pairs_within_clusters(x, ids[:, 0], TAU)
    two = pairs_within_clusters(x, ids, TAU)
    assert _pair_set(one) <= _pair_set(two) and len(two) >= len(one)


def test_calibrated_tau_per_embedder():
    assert 0.8 <= calibrated_tau("timm:tf_efficientnet_lite0@efficientnet-lite0==0.1.0") < 0.95
    assert calibrated_tau("open_clip:ViT-B-32@laion2b_s34b_b79k") == DEFAULT_TAU == 0.95
    with pytest.raises(ValueError, match="pass tau explicitly"):
        calibrated_tau("open_clip:ViT-L-14@openai")
