"""Incremental deduplication equals a full recompute."""

import numpy as np
import pytest

from curation_assets.lib.dedup import DedupState, dedup, dedup_incremental
from curation_assets_tests.lib.dedup.helpers import TAU, clustered_data, random_meta, scrambled_ids


@pytest.fixture(scope="module")
def data():
    return clustered_data()


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
    ids, meta = scrambled_ids(n), random_meta(n, seed)
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
    ids = scrambled_ids(n)
    meta = random_meta(n, 3)
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
        x[:100], scrambled_ids(100), random_meta(100, 0), [a[:100] for a in assignments], TAU
    )
    with pytest.raises(ValueError, match="run a full"):
        dedup_incremental(
            state,
            x[100:200],
            scrambled_ids(100),
            random_meta(100, 1),
            [a[100:200] for a in assignments],
            0.9,
        )
