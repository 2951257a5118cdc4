import os
import time

import dagster as dg

from curation_assets.defs.partitions import SHARDS_PARTITION
from curation_assets.defs.resources import ShardSource
from curation_assets.defs.sensors import shard_sensor
from curation_assets_tests.conftest import age, write_images

_CURSORS: dict[tuple[int, str], str | None] = {}


def _tick(instance, source, min_age_s=60.0):
    """One sensor evaluation; applies its partition requests and keeps its cursor as the daemon."""
    key = (id(instance), str(source))
    ctx = dg.build_sensor_context(
        instance=instance,
        cursor=_CURSORS.get(key),
        resources={"shard_source": ShardSource(root=str(source), min_age_s=min_age_s)},
    )
    result = shard_sensor(ctx)
    assert isinstance(result, dg.SensorResult)
    _CURSORS[key] = result.cursor
    for req in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
    return result


def requested(request: dg.RunRequest | None) -> dict[str, set[str]]:
    """Asset → shards of a ``shard_automation`` backfill request (``{}`` for none)."""
    if request is None:
        return {}
    subset = request.asset_graph_subset
    assert subset is not None and not subset.non_partitioned_asset_keys
    return {
        key.to_user_string(): set(keys.get_partition_keys())
        for key, keys in subset.partitions_subsets_by_asset_key.items()
    }


def _skipped(result) -> bool:
    return not result.run_requests and result.skip_reason is not None


def test_a_new_shard_is_registered_exactly_once(tmp_path):
    with dg.instance_for_test() as instance:
        write_images(tmp_path / "s-1", 2)
        age(tmp_path / "s-1")
        first = _tick(instance, tmp_path)
        assert [r.partition_key for r in first.run_requests] == ["s-1"]
        assert first.run_requests[0].run_key == "shard:s-1"
        assert instance.get_dynamic_partitions(SHARDS_PARTITION) == ["s-1"]
        again = _tick(instance, tmp_path)
        assert _skipped(again)
        # Drop a second shard: exactly one new partition.
        write_images(tmp_path / "s-2", 1)
        age(tmp_path / "s-2")
        third = _tick(instance, tmp_path)
        assert [r.partition_key for r in third.run_requests] == ["s-2"]
        assert sorted(instance.get_dynamic_partitions(SHARDS_PARTITION)) == ["s-1", "s-2"]


def test_a_shard_being_written_waits_until_it_is_quiet(tmp_path):
    with dg.instance_for_test() as instance:
        write_images(tmp_path / "busy", 1)  # just written
        (tmp_path / "upload.tar.part").write_bytes(b"half a tar")
        age(tmp_path / "upload.tar.part")
        assert _skipped(_tick(instance, tmp_path))
        assert instance.get_dynamic_partitions(SHARDS_PARTITION) == []
        past = time.time() - 120
        for p in (tmp_path / "busy").iterdir():
            os.utime(p, (past, past))
        result = _tick(instance, tmp_path)
        assert [r.partition_key for r in result.run_requests] == ["busy"]


def test_shards_of_one_tick_share_a_run_that_assigns_them_once_centroids_exist(tmp_path):
    from curation_assets.defs.cluster import CENTROID_KEYS
    from curation_assets.defs.partitions import RANGE_END_TAG, RANGE_START_TAG, shard_ranges

    with dg.instance_for_test() as instance:
        for name in ("s-1", "s-2", "s-3"):
            write_images(tmp_path / name, 1, start=len(name))
            age(tmp_path / name)
        first = _tick(instance, tmp_path)
        (run,) = first.run_requests  # three shards, one run over their range
        assert run.job_name == "per_shard_job" and run.partition_key is None
        assert (run.tags[RANGE_START_TAG], run.tags[RANGE_END_TAG]) == ("s-1", "s-3")
        assert instance.get_dynamic_partitions(SHARDS_PARTITION) == ["s-1", "s-2", "s-3"]
        # once every clustering has centroids, new shards are assigned in their own run
        for key in CENTROID_KEYS:
            instance.report_runless_asset_event(dg.AssetMaterialization(key))
        write_images(tmp_path / "s-4", 1, start=99)
        age(tmp_path / "s-4")
        (run,) = _tick(instance, tmp_path).run_requests
        assert run.job_name == "per_shard_assign_job" and run.partition_key == "s-4"
    # Dagster's own split: adjacent in registration order, chunked
    order = ["a", "b", "c", "d", "e"]
    assert shard_ranges(order, ["e", "a", "b", "d"], 2) == [["a", "b"], ["d", "e"]]
    assert shard_ranges(order, ["a", "c", "e"], 50) == [["a"], ["c"], ["e"]]
    assert shard_ranges(order, order, 2) == [["a", "b"], ["c", "d"], ["e"]]


def test_a_tick_inspects_only_new_entries_and_catches_a_late_one(tmp_path):
    with dg.instance_for_test() as instance:
        for i in range(30):
            (tmp_path / f"s-{i:03d}.tar").write_bytes(b"")
        age(tmp_path)
        first = _tick(instance, tmp_path)  # no cursor: a full reconciliation
        assert len(instance.get_dynamic_partitions(SHARDS_PARTITION)) == 30
        assert len(first.run_requests) == 1  # 30 shards, one run over their range
        idle = _tick(instance, tmp_path)
        assert _skipped(idle) and "30 entries, 0 inspected" in idle.skip_reason.skip_message
        (tmp_path / "s-100.tar").write_bytes(b"")  # sorts after the cursor
        past = time.time() - 3600
        os.utime(tmp_path / "s-100.tar", (past, past))
        (run,) = _tick(instance, tmp_path).run_requests
        assert run.partition_key == "s-100.tar" and run.tags["curation/shard"] == "s-100.tar"
        (tmp_path / "s-0005.tar").write_bytes(b"")  # a late name sorting before the cursor
        os.utime(tmp_path / "s-0005.tar", (past, past))
        (run,) = _tick(instance, tmp_path).run_requests
        assert run.partition_key == "s-0005.tar"
        assert _skipped(_tick(instance, tmp_path))
        assert len(instance.get_dynamic_partitions(SHARDS_PARTITION)) == 32


def test_a_shard_assigned_in_its_own_run_gets_no_second_assignment_run(tmp_path):
    """per_shard_assign_job assigns in the run; a shard filtered by per_shard_job still is.

    ``shard_automation`` ticked as the daemon would, after shard b ran per_shard_assign_job and
    shard c ran per_shard_job (no centroids when its run was requested): only c's assignment is
    due.
    """
    from curation_assets.defs.classify import classifier_scores
    from curation_assets.defs.cluster import ASSIGNMENT_KEYS, cluster_assignments, cluster_centroids
    from curation_assets.defs.embed import image_embeddings
    from curation_assets.defs.filter import filter_shard
    from curation_assets.defs.ingest import ingest
    from curation_assets.defs.resources import Categories
    from curation_assets.defs.sensors import centroids_exist, per_shard_assign_job, per_shard_job
    from curation_assets.defs.shard_automation import evaluate
    from curation_assets.lib.storage import DeltaStore
    from curation_assets.lib.tables import assignments_spec
    from curation_assets_tests.defs.helpers import resources

    src = tmp_path / "src"
    for i, name in enumerate(("a", "b", "c")):
        write_images(src / name, 6, start=10 * i)
    res = {**resources(tmp_path, src), "categories": Categories()}
    assets = [ingest, image_embeddings, classifier_scores, filter_shard]
    defs = dg.Definitions(
        assets=[*assets, cluster_centroids, cluster_assignments],
        jobs=[per_shard_job, per_shard_assign_job],
        resources=res,
    )
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(SHARDS_PARTITION, ["a", "b", "c"])

        def run(job: str, shard: str) -> None:
            result = defs.resolve_job_def(job).execute_in_process(
                instance=instance, partition_key=shard
            )
            assert result.success

        cursor = [evaluate(instance, None)[1]]  # the first tick: reads updates from then on

        def tick() -> dict[str, set[str]]:
            request, cursor[0], _ = evaluate(instance, cursor[0])
            return requested(request)

        run("per_shard_job", "a")
        assert not centroids_exist(instance)
        assert tick() == {}  # no centroids yet

        centroids = dg.materialize(
            [cluster_centroids],
            instance=instance,
            resources=res,
            run_config={"ops": {"cluster_centroids": {"config": {"k": 2}}}},
        )
        assert centroids.success and centroids_exist(instance)
        # the new centroids make a's assignment due (it was filtered by per_shard_job)
        assert tick() == {key: {"a"} for key in ASSIGNMENT_KEYS}
        assert dg.materialize(
            [cluster_assignments], instance=instance, resources=res, partition_key="a"
        ).success
        run("per_shard_assign_job", "b")
        run("per_shard_job", "c")
        assert tick() == {key: {"c"} for key in ASSIGNMENT_KEYS}
        store = DeltaStore(str(tmp_path / "delta"))
        assert set(store.read(assignments_spec(0))["shard"]) == {"a", "b"}
