import os
import time

import dagster as dg

from curation_assets.defs.partitions import SHARDS_PARTITION
from curation_assets.defs.resources import ShardSource
from curation_assets.defs.sensors import shard_sensor
from curation_assets_tests.conftest import age, write_images


def _tick(instance, source, min_age_s=60.0):
    """One sensor evaluation; applies its partition requests as the daemon would."""
    ctx = dg.build_sensor_context(
        instance=instance,
        resources={"shard_source": ShardSource(root=str(source), min_age_s=min_age_s)},
    )
    result = shard_sensor(ctx)
    if isinstance(result, dg.SensorResult):
        for req in result.dynamic_partitions_requests or []:
            instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
    return result


def test_a_new_shard_is_registered_exactly_once(tmp_path):
    with dg.instance_for_test() as instance:
        write_images(tmp_path / "s-1", 2)
        age(tmp_path / "s-1")
        first = _tick(instance, tmp_path)
        assert isinstance(first, dg.SensorResult)
        assert [r.partition_key for r in first.run_requests] == ["s-1"]
        assert first.run_requests[0].run_key == "shard:s-1"
        assert instance.get_dynamic_partitions(SHARDS_PARTITION) == ["s-1"]
        again = _tick(instance, tmp_path)
        assert isinstance(again, dg.SkipReason)
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
        assert isinstance(_tick(instance, tmp_path), dg.SkipReason)
        assert instance.get_dynamic_partitions(SHARDS_PARTITION) == []
        past = time.time() - 120
        for p in (tmp_path / "busy").iterdir():
            os.utime(p, (past, past))
        result = _tick(instance, tmp_path)
        assert [r.partition_key for r in result.run_requests] == ["busy"]
