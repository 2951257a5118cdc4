import json

import numpy as np
import pytest
from PIL import Image

from curation_assets.cli import build_parser
from curation_assets.lib.dedup import exhaustive_pairs
from curation_assets.lib.tables import N_CLUSTERINGS
from curation_assets.tools.bench_dedup import (
    EDIT_KINDS,
    bench_dedup,
    bench_dedup_clothing,
    calibrate_tau,
    plant_edits,
)
from curation_assets.tools.bench_ivf import _nprobes, compare, ivf_baseline, sgemm_gflops
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


IVF_KEYS = (
    "nlist",
    "train_s",
    "add_s",
    "build_s",
    "index_mb",
    "rss_growth_mb",
    "peak_rss_mb",
    "search_extrapolated",
    "nprobe_tried",
    "recall_by_nprobe",
    "target_recall",
    "target_reached",
    "chosen_nprobe",
    "stopped_because",
    "recall",
    "search_s",
    "total_s",
)


def _check_ivf(out: dict) -> dict:
    ivf = out["ivf_baseline"]
    for key in IVF_KEYS:
        assert key in ivf, key
    for key in ("faster_at_equal_recall", "ivf_over_cluster", "equal_recall_verdict"):
        assert key in out, key
    rec = ivf["recall_by_nprobe"]
    probes = [e["nprobe"] for e in ivf["nprobe_tried"]]
    assert rec == [e["recall"] for e in ivf["nprobe_tried"]]
    assert probes[0] == 1 and all(b > a for a, b in zip(probes, probes[1:], strict=False))
    assert all(0.0 <= r <= 1.0 for r in rec)
    assert all(b >= a for a, b in zip(rec, rec[1:], strict=False))
    assert ivf["target_recall"] == round(out["recall_by_num_clusterings"][-1], 4)
    if ivf["target_reached"]:
        # The smallest nprobe reaching the target: every smaller one tried misses it, and
        # the one just below was tried (doubling, then bisection).
        c = probes.index(ivf["chosen_nprobe"])
        assert ivf["recall"] == rec[c] >= ivf["target_recall"]
        assert all(r <= ivf["target_recall"] for r in rec[:c])
        assert c == 0 or probes[c - 1] == probes[c] - 1
        assert out["faster_at_equal_recall"] in ("cluster", "ivf")
    else:
        assert ivf["chosen_nprobe"] is None and "NOT reached" in ivf["figures_at"]
        assert "did not reach" in out["equal_recall_verdict"]
    # nlist = K and clustering 1's training sample and seed: nprobe 1 finds exactly the
    # pairs whose ends share clustering 1's cluster (up to centroid rounding).
    assert rec[0] == pytest.approx(out["recall_by_num_clusterings"][0], abs=0.02)
    assert ivf["total_s"] == pytest.approx(ivf["build_s"] + ivf["search_s"], abs=0.02)
    assert out["sgemm_gflops"] > 0 and out["sgemm_gflops_end"] > 0
    phases = out["sgemm_gflops_by_phase"]
    assert list(phases) == [
        "start",
        "before_cluster_method",
        "before_exhaustive",
        "before_ivf",
        "end",
    ]
    assert ivf["total_cpu_s"] > 0 and out["cluster_method_cpu_s"] > 0
    assert out["ivf_over_cluster_cpu"] > 0
    return ivf


def test_bench_dedup_ivf_baseline_all_queries():
    out = bench_dedup(3000, 32, seed=2)
    json.dumps(out)
    ivf = _check_ivf(out)
    assert ivf["search_extrapolated"] is False and ivf["queries_timed"] == 3000
    assert ivf["nlist"] == out["k"] and ivf["index_mb"] >= out["matrix_mb"]


def test_bench_dedup_ivf_baseline_sampled_queries_extrapolated_and_flagged():
    out = bench_dedup(3000, 32, exhaustive_queries=500, n_clusterings=2, ivf_nprobe_cap=2)
    ivf = _check_ivf(out)
    assert ivf["search_extrapolated"] is True and ivf["queries_timed"] == 500
    assert "sampled" in ivf["search_note"]
    for e in ivf["nprobe_tried"]:
        assert e["search_s"] == pytest.approx(e["search_measured_s"] * 6, abs=0.01)


def test_bench_dedup_without_ivf_keeps_every_old_key_only():
    out = bench_dedup(2000, 16, n_clusterings=2, ivf=False)
    assert "ivf_baseline" not in out and "recall_by_num_clusterings" in out


def test_ivf_baseline_says_when_the_target_is_not_reached():
    x, _ = clip_like_embeddings(3000, 32, seed=3)
    truth = exhaustive_pairs(x, 0.95)
    assert len(truth) > 0
    kw = {"nlist": 64, "tau": 0.95, "seed": 0, "niter": 5, "max_points_per_centroid": 128}
    ivf = ivf_baseline(x, truth, None, target_recall=1.01, nprobe_cap=4, **kw)
    assert ivf["target_reached"] is False and ivf["chosen_nprobe"] is None
    assert [e["nprobe"] for e in ivf["nprobe_tried"]] == [1, 2, 4]
    assert ivf["stopped_because"] == "nprobe cap reached"
    cmp = compare(10.0, 10.0, ivf)
    assert "did not reach" in cmp["equal_recall_verdict"]
    # nprobe = nlist scans every list: the exact search, all true pairs found.
    full = ivf_baseline(x, truth, None, target_recall=1.0, nprobe_cap=64, **kw)
    assert full["target_reached"] is True and full["recall"] == 1.0


def test_nprobe_schedule_and_sgemm():
    assert _nprobes(64, 256) == [1, 2, 4, 8, 16, 32, 64]
    assert _nprobes(100, 20) == [1, 2, 4, 8, 16, 20]
    assert _nprobes(1, 8) == [1]
    assert sgemm_gflops(256, 64, 256, repeats=1) > 0


def test_bench_dedup_cli_has_the_ivf_options():
    args = build_parser().parse_args(["bench", "dedup", "--n", "3000", "--ivf-nprobe-cap", "8"])
    assert args.ivf_nprobe_cap == 8 and args.no_ivf is False
    assert build_parser().parse_args(["bench", "dedup", "--no-ivf"]).no_ivf is True


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
