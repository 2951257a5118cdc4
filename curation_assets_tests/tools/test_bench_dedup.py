import json

import numpy as np
import pytest
from PIL import Image

from curation_assets.lib.tables import N_CLUSTERINGS
from curation_assets.tools.bench_dedup import (
    EDIT_KINDS,
    bench_dedup,
    bench_dedup_clothing,
    calibrate_tau,
    plant_edits,
)
from curation_assets.tools.synthetic import clip_like_embeddings


def test_bench_dedup_small_returns_every_key_and_is_json():
    out = bench_dedup(5000, 64, seed=1)
    json.dumps(out)
    for key in (
        "train_s",
        "assign_s",
        "pairs_s_per_clustering",
        "cluster_method_s",
        "exhaustive_s",
        "exhaustive_extrapolated",
        "exhaustive_queries",
        "cluster_over_exhaustive",
        "recall_by_num_clusterings",
        "peak_rss_mb",
        "matrix_mb",
        "peak_rss_over_matrix",
    ):
        assert key in out, key
    r = out["recall_by_num_clusterings"]
    assert len(r) == N_CLUSTERINGS and all(b >= a for a, b in zip(r, r[1:], strict=False))
    assert out["exhaustive_extrapolated"] is False and out["true_pairs"] > 0


def test_bench_dedup_extrapolates_from_sampled_queries_and_says_so():
    out = bench_dedup(3000, 32, exhaustive_queries=500, n_clusterings=2, top=2)
    assert out["exhaustive_extrapolated"] is True and out["exhaustive_queries"] == 500
    assert out["exhaustive_s"] == pytest.approx(out["exhaustive_measured_s"] * 6, abs=0.05)
    assert "sampled" in out["recall_measured_on"] and len(out["recall_by_num_clusterings"]) == 2


def test_synthetic_embeddings_are_normalized_seeded_and_plant_tight_groups():
    x, group = clip_like_embeddings(2000, 64, seed=5, dup_fraction=0.2)
    y, _ = clip_like_embeddings(2000, 64, seed=5, dup_fraction=0.2)
    np.testing.assert_array_equal(x, y)
    assert x.dtype == np.float32 and x.shape == (2000, 64)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert 0.17 <= (group >= 0).mean() <= 0.2
    rows = np.flatnonzero(group == 0)
    assert 2 <= rows.size <= 4 and (x[rows] @ x[rows].T).min() > 0.9
    unrelated = x[group < 0][:300]
    s = unrelated @ unrelated.T
    assert s[np.triu_indices(300, 1)].max() < 0.9


def test_plant_edits_and_calibrate_tau_on_a_tiny_set():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))
    edits = plant_edits(img, rng)
    assert [k for k, _ in edits] == list(EDIT_KINDS)
    assert all(e.mode == "RGB" for _, e in edits)
    x, _ = clip_like_embeddings(70, 32, seed=0, dup_fraction=0.0)
    photo = np.repeat(np.arange(10), 7)
    kind = np.tile(["original", *EDIT_KINDS], 10)
    noisy = x[photo * 7] + 0.05 * rng.standard_normal((70, 32)).astype(np.float32)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    cal = calibrate_tau(noisy, photo, kind)
    assert cal["positive_pairs"] == 10 * 21 and cal["best"]["recall"] > 0.9


@pytest.mark.integration
def test_bench_dedup_clothing_on_a_few_real_photos(clothing_dir):
    out = bench_dedup_clothing(clothing_dir, limit=6)
    json.dumps(out)
    assert out["images"] == 6 * 7 and out["pipeline_pair_precision"] is not None
    assert out["removed_correct_fraction"] >= 0.9
