"""The engine resource and the per-shard steps on the default (local) engine."""

import os
import shutil

import dagster as dg
import pytest

from curation_assets.defs.embed import image_embeddings
from curation_assets.defs.ingest import ingest
from curation_assets.defs.partitions import SHARDS_PARTITION, range_tags
from curation_assets.defs.resources import Engine, default_resources
from curation_assets.lib.engine import LocalEngine, RayEngine
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import IMAGE_EMBEDDINGS
from curation_assets.runner import step_errors
from curation_assets_tests.conftest import write_images
from curation_assets_tests.defs.helpers import resources
from curation_assets_tests.servers_ray import free_port


def test_default_resources_take_the_engine_from_curation_engine(monkeypatch, tmp_path):
    monkeypatch.delenv("CURATION_ENGINE", raising=False)
    engine = default_resources(str(tmp_path))["engine"]
    assert isinstance(engine, Engine) and engine.address == "local"
    assert isinstance(engine.engine(), LocalEngine)
    monkeypatch.setenv("CURATION_ENGINE", "10.0.0.5:6379")
    engine = default_resources(str(tmp_path))["engine"]
    assert isinstance(engine, Engine)
    ray = engine.engine()
    assert isinstance(ray, RayEngine) and ray.address == "10.0.0.5:6379"


def _logs(instance: dg.DagsterInstance, result: dg.ExecuteInProcessResult) -> list[str]:
    """The run's log messages in the order they were stored."""
    records = instance.get_records_for_run(result.run_id, limit=100_000).records
    ordered = sorted(records, key=lambda r: r.storage_id)
    return [r.event_log_entry.user_message for r in ordered if r.event_log_entry.user_message]


def test_local_engine_reports_each_shard_and_fails_a_run_like_before(tmp_path):
    """Shards run in this process in order; a vanished source fails its shard at once.

    The shard before it is written and reported, the one after it is not started, and the
    step is not retried (a missing source is permanent); once the source is back the same run
    converges.
    """
    src = tmp_path / "src"
    keys = ["a", "b", "c"]
    for i, key in enumerate(keys):
        write_images(src / key, 2 + i, start=10 * i)
    res = resources(tmp_path, src)
    store = DeltaStore(str(tmp_path / "delta"))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(SHARDS_PARTITION, keys)
        assert dg.materialize([ingest], instance=instance, resources=res, tags=range_tags(keys))
        shutil.move(src / "b", tmp_path / "b-away")
        failed = dg.materialize(
            [image_embeddings],
            instance=instance,
            resources=res,
            tags=range_tags(keys),
            raise_on_error=False,
        )
        assert not failed.success
        (error,) = step_errors(failed)
        assert "shard 'b' not found" in error
        attempts = [e for e in failed.all_events if e.event_type_value == "STEP_START"]
        assert len(attempts) == 1  # permanent: not retried
        reported = failed.asset_materializations_for_node("image_embeddings")
        assert [m.partition for m in reported] == ["a"]
        assert dict(store.read(IMAGE_EMBEDDINGS).group_by("shard").len().iter_rows()) == {"a": 2}

        shutil.move(tmp_path / "b-away", src / "b")
        again = dg.materialize(
            [image_embeddings], instance=instance, resources=res, tags=range_tags(keys)
        )
        assert again.success
        metas = {
            m.partition: m.metadata
            for m in again.asset_materializations_for_node("image_embeddings")
        }
        assert sorted(metas) == keys
        for key, n in zip(keys, (2, 3, 4), strict=True):
            meta = metas[key]
            assert meta["dagster/row_count"].value == n
            assert meta["engine"].value == "local" and meta["worker_pid"].value == os.getpid()
            assert "ray_node_id" not in meta
        assert [m["model_loaded"].value for m in metas.values()] == [False] * 3  # cached
        logs = _logs(instance, again)
        done = [line for line in logs if ": done on local pid" in line]
        assert [line.split(":")[0] for line in done] == keys  # in key order, one at a time
        assert done[-1].endswith("(3/3 shards of this step)")


def test_an_unreachable_ray_address_fails_the_step_at_once_with_the_fix(tmp_path):
    src = tmp_path / "src"
    write_images(src / "a", 2)
    port = free_port()  # nothing listens there
    res = {**resources(tmp_path, src), "engine": Engine(address=f"127.0.0.1:{port}")}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(SHARDS_PARTITION, ["a"])
        result = dg.materialize(
            [image_embeddings],
            instance=instance,
            resources=res,
            partition_key="a",
            raise_on_error=False,
        )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    error = str(getattr(failure.event_specific_data, "error", ""))  # with its causes
    assert f"EngineAddressError: engine address '127.0.0.1:{port}': nothing answers" in error
    assert "ray start --head" in error
    attempts = [e for e in result.all_events if e.event_type_value == "STEP_START"]
    assert len(attempts) == 1


@pytest.mark.parametrize("address", ["", "local"])
def test_the_local_addresses(address):
    assert isinstance(Engine(address=address).engine(), LocalEngine)
