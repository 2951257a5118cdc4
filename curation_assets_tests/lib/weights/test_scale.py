"""Ratios to weights: clip and normalise to a fixed point, statistics, checks, the table."""

import numpy as np
import pytest

from curation_assets.lib.tables import SAMPLE_WEIGHTS
from curation_assets.lib.weights.fit import fit_density_ratio
from curation_assets.lib.weights.scale import (
    clip_normalize,
    effective_sample_size,
    sample_weights,
    weight_checks,
    weight_stats,
)

# ------------------------------------------------------------------------- clip + normalise


def test_clip_normalize_hand_example():
    # Four equal ratios and one outlier: the outlier is capped at 2 and the others scaled to
    # 0.75 so that the mean is exactly 1 (4 · 0.75 + 2 = 5).
    w, clipped, scale = clip_normalize(np.array([1.0, 1.0, 1.0, 1.0, 100.0]), 0.1, 2.0)
    np.testing.assert_allclose(w, [0.75, 0.75, 0.75, 0.75, 2.0])
    assert clipped.tolist() == [False, False, False, False, True]
    assert scale == pytest.approx(0.75)


def test_clip_normalize_hits_mean_one_within_bounds_where_naive_order_does_not():
    rng = np.random.default_rng(0)
    raw = rng.lognormal(0.0, 1.5, 50_000)
    w_min, w_max = 0.5, 2.0
    # Naive: clip, then normalise -> the mean is 1 but the bounds are broken.
    naive = np.clip(raw, w_min, w_max)
    naive /= naive.mean()
    assert naive.max() > w_max or naive.min() < w_min
    w, clipped, scale = clip_normalize(raw, w_min, w_max)
    assert abs(w.mean() - 1.0) < 1e-12
    assert w.min() >= w_min and w.max() <= w_max
    # A fixed point: clipping and normalising again changes nothing.
    again = np.clip(w, w_min, w_max)
    np.testing.assert_allclose(again / again.mean(), w, rtol=1e-12)
    # Order preserved; clipped flags are exactly the rows at a bound.
    order = np.argsort(raw)
    assert np.all(np.diff(w[order]) >= 0)
    np.testing.assert_array_equal(clipped, (scale * raw < w_min) | (scale * raw > w_max))
    assert np.all(np.isclose(w[clipped], w_min) | np.isclose(w[clipped], w_max))
    assert 0.05 < clipped.mean() < 0.95


def test_clip_normalize_without_clipping_is_plain_normalisation():
    raw = np.array([0.5, 1.0, 1.5, 3.0])
    w, clipped, scale = clip_normalize(raw, 0.01, 100.0)
    np.testing.assert_allclose(w, raw / raw.mean())
    assert not clipped.any() and scale == pytest.approx(1 / raw.mean())


# ------------------------------------------------------------------------- stats and checks


def test_effective_sample_size_formula():
    assert effective_sample_size(np.ones(7)) == pytest.approx(7.0)
    assert effective_sample_size(np.array([3.0, 1.0, 1.0, 1.0])) == pytest.approx(36 / 12)
    assert effective_sample_size(np.array([1.0, 0.0, 0.0])) == pytest.approx(1.0)


def test_weight_stats_fields():
    w = np.array([0.5, 0.5, 1.0, 1.0, 2.0])
    stats = weight_stats(w, np.array([True, True, False, False, True]))
    assert stats["n"] == 5 and stats["mean"] == pytest.approx(1.0)
    assert stats["ess"] == pytest.approx(25 / 6.5)
    assert stats["ess_ratio"] == pytest.approx(5 / 6.5)
    assert stats["clipped_share"] == pytest.approx(0.6)
    assert stats["min"] <= stats["p05"] <= stats["p50"] <= stats["p95"] <= stats["max"]
    hist = stats["histogram"]
    assert sum(hist["counts"]) == 5 and len(hist["edges"]) == len(hist["counts"]) + 1
    assert weight_stats(np.zeros(0))["ess"] is None


def test_weight_checks_pass_and_fail():
    good = {c.name: c for c in weight_checks(np.array([0.5, 1.5, 1.0]), w_min=0.5, w_max=2.0)}
    assert all(c.passed for c in good.values())
    assert set(good) == {
        "weights_finite_positive",
        "weights_mean_one",
        "weights_within_bounds",
        "weights_ess_ratio",
    }
    bad = {c.name: c for c in weight_checks(np.array([1.0, np.nan, 2.0]))}
    assert not bad["weights_finite_positive"].passed and not bad["weights_mean_one"].passed
    skewed = np.array([9.1] + [0.1] * 9)  # mean 1, but one image carries the weight
    checks = {c.name: c for c in weight_checks(skewed, min_ess_ratio=0.5, w_max=10.0)}
    assert checks["weights_mean_one"].passed and checks["weights_within_bounds"].passed
    assert not checks["weights_ess_ratio"].passed
    assert checks["weights_ess_ratio"].value == pytest.approx(effective_sample_size(skewed) / 10)


def test_frame_has_the_sample_weights_schema(data):
    x, kept, _, _ = data
    sw = sample_weights(fit_density_ratio(x, kept, seed=0), x, kept)
    ids = [f"id{i}" for i in sw.rows]
    df = sw.frame(ids, ["s0"] * len(ids))
    assert df.schema == SAMPLE_WEIGHTS.schema
    assert df.height == int(kept.sum())
    assert df["weight"].mean() == pytest.approx(1.0, abs=1e-9)
    p_u = df["p_unfiltered"].to_numpy()
    np.testing.assert_allclose(p_u, sw.raw_ratio / (1 + sw.raw_ratio))
    with pytest.raises(ValueError, match="row order"):
        sw.frame(ids[:-1], ["s0"] * (len(ids) - 1))
