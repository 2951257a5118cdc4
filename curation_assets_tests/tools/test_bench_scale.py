"""``curation bench scale`` on a tiny corpus: every job runs, the dedup goes full → incremental."""

import pytest

from curation_assets.tools.bench_scale import bench_scale

pytestmark = pytest.mark.slow


def test_bench_scale_reports_full_one_shard_and_a_batch(tmp_path):
    report = bench_scale(
        1_200, shards=3, dim=16, new_share=0.05, batch=2, home=str(tmp_path), jobs=("dedup_job",)
    )
    assert report["corpus"]["rows_per_new_shard"] == 60
    full, one, two = report["full"], report["incremental"], report["incremental_2_shards"]
    assert full["assign_shard_job"]["runs"] == 3 and two["assign_shard_job"]["runs"] == 2
    assert full["dedup_job"]["dedup"]["mode"] == "full"
    assert one["dedup_job"]["dedup"]["mode"] == "incremental"
    assert one["dedup_job"]["dedup"]["new_images"] > 40  # 90 % of 60 pass the synthetic filter
    assert two["dedup_job"]["dedup"]["new_images"] > 2 * 40
    for step in (full["dedup_job"], one["dedup_job"]):
        assert step["peak_rss_mb"] >= step["baseline_rss_mb"] > 0
    ratios = report["global_steps"]
    assert 0 < ratios["incremental_over_full_in_process"]
    assert report["global_steps_2_shards"]["per_shard_in_process_s"] > 0
