"""FLYT's Soft Cap Sampling against its one-draw-at-a-time definition, and its statistics."""

import numpy as np
import pytest

from curation_assets.lib.export.sampling import sampling_stats, soft_cap_sampling


def _sequential(w: np.ndarray, n: int, penalty: float, rng: np.random.Generator) -> np.ndarray:
    """The definition, one draw at a time."""
    logits = np.log(w)
    counts = np.zeros(w.size, dtype=np.int64)
    for _ in range(n):
        p = np.exp(logits - logits.max())
        i = rng.choice(w.size, p=p / p.sum())
        counts[i] += 1
        logits[i] -= penalty
    return counts


def test_matches_the_one_at_a_time_definition_in_distribution():
    w = np.array([8.0, 4.0, 2.0, 1.0, 1.0, 0.5])
    n, penalty, reps = 20, 0.5, 1500
    ref = np.array([_sequential(w, n, penalty, np.random.default_rng(s)) for s in range(reps)])
    ours = np.array([soft_cap_sampling(w, n, penalty=penalty, seed=s) for s in range(reps)])
    # Mean counts agree within 4 standard errors of their difference.
    se = np.sqrt((ref.var(axis=0) + ours.var(axis=0)) / reps)
    assert np.all(np.abs(ref.mean(axis=0) - ours.mean(axis=0)) < 4 * se + 1e-9)
    # And so does the spread (the count of the top item has a known, penalty-shaped variance).
    assert ours[:, 0].var() == pytest.approx(ref[:, 0].var(), rel=0.2)


def test_counts_sum_to_n_and_follow_the_weights():
    rng = np.random.default_rng(0)
    w = rng.lognormal(0.0, 1.0, 5000)
    counts = soft_cap_sampling(w, 20_000, seed=1)
    assert counts.dtype == np.int64 and counts.sum() == 20_000
    # Higher weight -> more draws: mean count rises across weight quintiles.
    order = np.argsort(w)
    means = [c.mean() for c in np.array_split(counts[order], 5)]
    assert all(a < b for a, b in zip(means, means[1:], strict=False))


def test_penalty_zero_is_multinomial():
    w = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    n = 200_000
    counts = soft_cap_sampling(w, n, penalty=0.0, seed=3)
    expected = n * w / w.sum()
    # Multinomial standard deviation is < 200 here; allow 5 of them.
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))


def test_penalty_caps_repetition():
    rng = np.random.default_rng(0)
    w = rng.lognormal(0.0, 2.0, 2000)
    free = soft_cap_sampling(w, 10_000, penalty=0.0, seed=0)
    capped = soft_cap_sampling(w, 10_000, penalty=0.15, seed=0)
    assert capped.max() < free.max() / 3
    assert (capped > 0).sum() > (free > 0).sum()


def test_large_penalty_is_near_uniform_over_the_top_items():
    rng = np.random.default_rng(0)
    w = rng.lognormal(0.0, 1.0, 1000)
    once = soft_cap_sampling(w, 300, penalty=50.0, seed=0)
    assert set(np.unique(once)) == {0, 1}  # without replacement
    drawn = once > 0
    assert np.median(w[drawn]) > np.median(w[~drawn])  # biased toward high weights
    # Past N draws every item is drawn once more before any is drawn a third time.
    spread = soft_cap_sampling(w, 2500, penalty=50.0, seed=0)
    assert set(np.unique(spread)) == {2, 3} and spread.sum() == 2500


def test_seeded_and_log_scale_equivalent():
    w = np.random.default_rng(1).lognormal(0.0, 1.0, 300)
    a = soft_cap_sampling(w, 1000, seed=5)
    np.testing.assert_array_equal(a, soft_cap_sampling(w, 1000, seed=5))
    np.testing.assert_array_equal(a, soft_cap_sampling(np.log(w), 1000, log_scale=True, seed=5))
    assert not np.array_equal(a, soft_cap_sampling(w, 1000, seed=6))


def test_zero_weight_never_drawn_and_errors():
    counts = soft_cap_sampling(np.array([0.0, 1.0, 0.0]), 50, seed=0)
    assert counts.tolist() == [0, 50, 0]
    assert soft_cap_sampling(np.array([1.0, 2.0]), 0).tolist() == [0, 0]
    with pytest.raises(ValueError, match="no example can be drawn"):
        soft_cap_sampling(np.zeros(3), 5)
    with pytest.raises(ValueError, match="finite and >= 0"):
        soft_cap_sampling(np.array([1.0, -1.0]), 5)
    with pytest.raises(ValueError, match="penalty"):
        soft_cap_sampling(np.ones(3), 5, penalty=-0.1)


def test_many_draws_of_one_dominant_item_stay_finite():
    counts = soft_cap_sampling(np.array([1e12, 1.0, 1.0]), 20_000, penalty=0.15, seed=0)
    assert counts.sum() == 20_000 and counts[0] > counts[1] > 0
    # The logits end up level: 0.15 per draw has to eat log(1e12) ≈ 27.6.
    assert abs((np.log(1e12) - 0.15 * counts[0]) - (0.0 - 0.15 * counts[1])) < 1.0


def test_sampling_stats():
    stats = sampling_stats(np.array([0, 1, 3, 0, 1]), np.array([0.1, 1.0, 5.0, 0.2, 2.0]))
    assert stats["n_samples"] == 5 and stats["n_distinct"] == 3
    assert stats["max_count"] == 3 and stats["count_histogram"] == {"0": 2, "1": 2, "3": 1}
    assert stats["spearman_count_weight"] > 0.8
