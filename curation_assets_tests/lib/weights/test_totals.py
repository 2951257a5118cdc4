"""Per-shard sums: the audit and the weight figures over shards equal those over all rows."""

import numpy as np
import polars as pl
import pytest

from curation_assets.lib.weights.audit import bias_audit
from curation_assets.lib.weights.scale import clip_normalize, effective_sample_size, total_checks
from curation_assets.lib.weights.totals import (
    HIST_BINS,
    audit_from_counts,
    hist_edges,
    rescale_factor,
    shard_audit_counts,
    shard_weight_stats,
    stats_frame,
    weight_totals,
)


def _attributes(n: int, seed: int = 0) -> tuple[pl.DataFrame, np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    ids = [f"{i:06d}" for i in range(n)]
    woman = rng.random(n) < 0.4
    caption_null = rng.random(n) < 0.2
    attrs = pl.DataFrame(
        {
            "image_id": ids,
            "format": [("JPEG", "PNG", None)[int(k)] for k in rng.integers(0, 3, size=n)],
            "keyword:woman": [
                None if c else bool(w) for c, w in zip(caption_null, woman, strict=True)
            ],
            "concept:cat": (rng.random(n) < 0.1).tolist(),
        },
        schema_overrides={"format": pl.String, "keyword:woman": pl.Boolean},
    )
    kept = rng.random(n) < np.where(woman, 0.5, 0.9)
    weight = np.where(kept, rng.lognormal(0, 0.4, size=n), 0.0)
    shards = [f"s{i % 3}" for i in range(n)]
    return attrs, kept, weight, shards


def test_the_audit_summed_over_shards_is_the_audit_of_all_rows():
    attrs, kept, weight, shards = _attributes(3000)
    counts = []
    shard_col = np.asarray(shards)
    for shard in ("s0", "s1", "s2"):
        sel = shard_col == shard
        counts.append(
            shard_audit_counts(shard, attrs.filter(pl.Series(sel)), kept[sel], weight[sel])
        )
    summed = audit_from_counts(pl.concat(counts))
    weights = pl.DataFrame({"image_id": attrs["image_id"], "weight": weight}).filter(
        pl.Series(kept)
    )
    whole = bias_audit(attrs, weights)
    assert summed.columns == whole.columns and summed.height == whole.height
    assert summed.select("attribute", "value").equals(whole.select("attribute", "value"))
    for col in ("n_unfiltered", "n_filtered"):
        assert summed[col].to_list() == whole[col].to_list()
    for col in ("share_unfiltered", "share_filtered", "share_weighted", "shift_weighted_pts"):
        np.testing.assert_allclose(summed[col].to_numpy(), whole[col].to_numpy(), atol=1e-12)


def test_a_boolean_without_any_value_still_has_its_row_with_no_share():
    attrs = pl.DataFrame(
        {"image_id": ["a", "b"], "keyword:x": [None, None]},
        schema_overrides={"keyword:x": pl.Boolean},
    )
    counts = shard_audit_counts("s", attrs, np.array([True, False]), np.array([1.0, 0.0]))
    assert counts.height == 2 and counts["n_unfiltered"].sum() == 0
    audit = audit_from_counts(counts)
    row = audit.row(0, named=True)
    assert (row["attribute"], row["value"], row["share_unfiltered"]) == ("keyword", "x", None)
    assert audit_from_counts(counts.clear()).is_empty()


def _stats(weights_by_shard: dict[str, np.ndarray], raw_by_shard, scale, w_min, w_max):
    rows = []
    for shard, w in weights_by_shard.items():
        raw = raw_by_shard[shard]
        rows.append(
            shard_weight_stats(
                shard,
                weight=w,
                raw_ratio=raw,
                clipped_low=scale * raw < w_min,
                clipped_high=scale * raw > w_max,
                n_reference=2 * w.size,
                scale=scale,
                w_min=w_min,
                w_max=w_max,
                probe_id="p",
                model_id="m",
            )
        )
    return stats_frame(rows)


def test_weight_totals_from_shard_sums_match_the_weights_themselves():
    rng = np.random.default_rng(1)
    raw = rng.lognormal(0, 1.0, size=5000)
    w, clipped, scale = clip_normalize(raw, 0.2, 5.0)
    parts = np.array_split(np.arange(raw.size), 4)
    stats = _stats(
        {f"s{i}": w[p] for i, p in enumerate(parts)},
        {f"s{i}": raw[p] for i, p in enumerate(parts)},
        scale,
        0.2,
        5.0,
    )
    totals = weight_totals(stats, w_min=0.2, w_max=5.0)
    assert totals["n"] == w.size and totals["n_reference"] == 2 * w.size
    assert totals["mean"] == pytest.approx(1.0, abs=1e-12)
    assert totals["ess"] == pytest.approx(effective_sample_size(w), rel=1e-12)
    assert (totals["min"], totals["max"]) == (w.min(), w.max())
    assert totals["clipped_share"] == pytest.approx(clipped.mean())
    assert totals["raw_ratio_mean"] == pytest.approx(raw.mean())
    one_bin = (5.0 / 0.2) ** (1 / HIST_BINS)
    for q in (0.05, 0.5, 0.95):
        got, true = totals[f"p{round(q * 100):02d}"], float(np.quantile(w, q))
        assert true / one_bin <= got <= true * one_bin, q
    assert sum(totals["histogram"]["counts"]) == w.size
    assert len(totals["histogram"]["edges"]) == len(totals["histogram"]["counts"]) + 1
    edges = hist_edges(0.2, 5.0)
    assert edges[0] == pytest.approx(0.2) and edges[-1] == pytest.approx(5.0)
    empty = weight_totals(stats.clear(), w_min=0.2, w_max=5.0)
    assert empty["n"] == 0 and empty["mean"] is None


def test_rescale_factor_brings_a_drifted_mean_back_to_one():
    rng = np.random.default_rng(2)
    raw = rng.lognormal(0, 0.8, size=4000)
    _, _, scale = clip_normalize(raw[:2000], 0.1, 10.0)  # fitted on the first half only
    w = np.clip(scale * raw, 0.1, 10.0)
    stats = _stats(
        {"a": w[:2000], "b": w[2000:]}, {"a": raw[:2000], "b": raw[2000:]}, scale, 0.1, 10.0
    )
    new = rescale_factor(stats, w_min=0.1, w_max=10.0)
    assert new is not None
    w2 = np.clip(new * raw, 0.1, 10.0)
    # exact when no row crosses a bound; each crossing row moves the mean by < w_max / n
    crossed = int(np.sum((scale * raw < 0.1) != (new * raw < 0.1)))
    crossed += int(np.sum((scale * raw > 10.0) != (new * raw > 10.0)))
    assert abs(w2.mean() - 1.0) <= 1e-12 + crossed * 10.0 / raw.size
    mixed = pl.concat([stats.head(1), stats.tail(1).with_columns(scale=pl.lit(scale * 2))])
    with pytest.raises(ValueError, match="different scales"):
        rescale_factor(mixed, w_min=0.1, w_max=10.0)
    assert rescale_factor(stats.clear(), w_min=0.1, w_max=10.0) is None


def test_total_checks_fail_on_a_drifted_mean_and_weights_out_of_bounds():
    base = {"n": 10, "n_bad": 0, "mean": 1.0, "ess_ratio": 0.9, "min": 0.5, "max": 2.0}
    ok = {
        c.name: c.passed
        for c in total_checks(base, min_ess_ratio=0.5, w_min=0.1, w_max=10, mean_tolerance=0.01)
    }
    assert all(ok.values()) and len(ok) == 4
    drifted = total_checks(
        {**base, "mean": 1.02}, min_ess_ratio=0.5, w_min=0.1, w_max=10, mean_tolerance=0.01
    )
    assert {c.name: c.passed for c in drifted}["weights_mean_one"] is False
    outside = total_checks(
        {**base, "max": 12.0}, min_ess_ratio=0.5, w_min=0.1, w_max=10, mean_tolerance=0.01
    )
    assert {c.name: c.passed for c in outside}["weights_within_bounds"] is False
    bad = total_checks(
        {**base, "n_bad": 1}, min_ess_ratio=0.5, w_min=0.1, w_max=10, mean_tolerance=0.01
    )
    assert not any(c.passed for c in bad[:2])
    low_ess = total_checks(
        {**base, "ess_ratio": 0.3}, min_ess_ratio=0.5, w_min=0.1, w_max=10, mean_tolerance=0.01
    )
    assert {c.name: c.passed for c in low_ess}["weights_ess_ratio"] is False
    none = total_checks({"n": 0}, min_ess_ratio=0.5, w_min=0.1, w_max=10, mean_tolerance=0.01)
    assert all(c.passed for c in none)
    with pytest.raises(ValueError, match="mean_tolerance"):
        total_checks(base, min_ess_ratio=0.5, w_min=0.1, w_max=10, mean_tolerance=-1)
