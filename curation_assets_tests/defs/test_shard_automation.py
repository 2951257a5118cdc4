"""``shard_automation``: per-shard follow-ups from the event log, one backfill, constant idle cost.

Materializations are reported as runless events (what a person's "report materialization"
does) or recorded by small runs; the sensor is ticked as the daemon would, cursor carried.
"""

import dagster as dg
import pytest
from dagster._core.events import DagsterEventType, StepMaterializationData
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus

from curation_assets.definitions import build_defs
from curation_assets.defs.partitions import SHARDS_PARTITION
from curation_assets.defs.shard_automation import TRIGGER_TAG, shard_automation
from curation_assets.lib.shards.followups import TRIGGERS
from curation_assets_tests.defs.test_sensor import requested


@pytest.fixture(scope="module")
def defs(tmp_path_factory):
    return build_defs(str(tmp_path_factory.mktemp("home")))


class Ticks:
    """The sensor evaluated tick after tick with its cursor, as the daemon does."""

    def __init__(self, instance: dg.DagsterInstance, defs: dg.Definitions) -> None:
        self.instance, self.defs, self.cursor = instance, defs, None

    def __call__(self) -> dict[str, set[str]]:
        ctx = dg.build_sensor_context(
            instance=self.instance, cursor=self.cursor, definitions=self.defs
        )
        # evaluate_tick, as the daemon calls it: it also validates the backfill request against
        # the sensor's asset selection (a sensor with a job target may not request one)
        data = shard_automation.evaluate_tick(ctx)
        self.cursor = data.cursor
        runs = data.run_requests or []
        assert len(runs) <= 1, "one backfill per tick at most"
        if runs:
            assert runs[0].requires_backfill_daemon() and runs[0].tags[TRIGGER_TAG] == "true"
        return requested(runs[0] if runs else None)


def report(instance: dg.DagsterInstance, asset: str, *shards: str) -> None:
    for shard in shards or [None]:
        instance.report_runless_asset_event(dg.AssetMaterialization(asset, partition=shard))


SHARDS = [f"s{i:03d}" for i in range(6)]
SCORE_CHAIN = {"classifier_scores", "filtered_images", "filter_rejections"}


def test_a_retrain_requests_exactly_the_affected_shards_once(defs):
    with dg.instance_for_test() as instance:
        tick = Ticks(instance, defs)
        instance.add_dynamic_partitions(SHARDS_PARTITION, SHARDS)
        report(instance, "image_embeddings", *SHARDS[:4])  # before the sensor's first tick
        assert tick() == {}  # the first tick starts from now: no replay of the history
        report(instance, "safety_classifiers")
        # every embedded shard (s004, s005 have no embeddings) re-scored and re-filtered;
        # no centroids yet, so nothing assigned
        assert tick() == dict.fromkeys(SCORE_CHAIN, set(SHARDS[:4]))
        assert tick() == {}  # once
        report(instance, "image_embeddings", SHARDS[4])  # no quantizer yet: nothing
        assert tick() == {}


def test_new_centroids_and_quantizer_reach_every_shard_and_new_shards_after(defs):
    with dg.instance_for_test() as instance:
        tick = Ticks(instance, defs)
        tick()
        instance.add_dynamic_partitions(SHARDS_PARTITION, SHARDS)
        report(instance, "image_embeddings", *SHARDS)
        report(instance, "filtered_images", *SHARDS[:3])
        for c in range(5):
            report(instance, f"cluster_centroids_{c}")
        report(instance, "similarity_quantizer")
        due = tick()
        assert due["cluster_assignments_0"] == set(SHARDS[:3])  # the filtered ones
        assert due["similarity_index"] == due["image_uniqueness"] == set(SHARDS)
        assert tick() == {}
        report(instance, "similarity_index", SHARDS[0])  # e.g. re-indexed by a person
        assert tick() == {"image_uniqueness": {SHARDS[0]}}


def _record_in_run(instance: dg.DagsterInstance, run_id: str, asset: str) -> None:
    """A materialization recorded by run ``run_id`` (as its step would)."""
    event = dg.DagsterEvent(
        event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value,
        job_name="__ASSET_JOB",
        event_specific_data=StepMaterializationData(dg.AssetMaterialization(asset)),
    )
    instance.report_dagster_event(event, run_id=run_id)


def test_a_global_update_is_read_once_its_run_ended(defs):
    # test_daemon caught it: a tick read the first centroids of a run still writing the rest,
    # then the next tick the rest, and every shard was re-assigned twice
    with dg.instance_for_test() as instance:
        tick = Ticks(instance, defs)
        tick()
        instance.add_dynamic_partitions(SHARDS_PARTITION, SHARDS)
        report(instance, "image_embeddings", *SHARDS)
        report(instance, "filtered_images", *SHARDS)
        report(instance, "classifier_scores", SHARDS[0])  # a finished run's update: read now
        retrain = instance.add_run(
            DagsterRun(job_name="__ASSET_JOB", run_id="r-retrain", status=DagsterRunStatus.STARTED)
        )
        for c in range(3):
            _record_in_run(instance, retrain.run_id, f"cluster_centroids_{c}")
        assert tick() == dict.fromkeys(SCORE_CHAIN - {"classifier_scores"}, {SHARDS[0]})
        for c in range(3, 5):
            _record_in_run(instance, retrain.run_id, f"cluster_centroids_{c}")
        _record_in_run(instance, retrain.run_id, "similarity_quantizer")
        assert tick() == {}  # still running: its updates wait
        instance.handle_run_event(
            retrain.run_id,
            dg.DagsterEvent(event_type_value="PIPELINE_SUCCESS", job_name="__ASSET_JOB"),
        )
        due = tick()  # one request for the whole retrain
        assert all(due[f"cluster_assignments_{c}"] == set(SHARDS) for c in range(5))
        assert due["similarity_index"] == due["image_uniqueness"] == set(SHARDS)
        assert tick() == {}


def test_a_shard_in_an_unfinished_run_waits_for_it(defs):
    with dg.instance_for_test() as instance:
        tick = Ticks(instance, defs)
        tick()
        instance.add_dynamic_partitions(SHARDS_PARTITION, SHARDS)
        report(instance, "image_embeddings", *SHARDS)
        running = instance.add_run(
            DagsterRun(
                job_name="per_shard_job",
                run_id="r-busy",
                status=DagsterRunStatus.STARTED,
                tags={
                    "dagster/asset_partition_range_start": SHARDS[1],
                    "dagster/asset_partition_range_end": SHARDS[2],
                },
            )
        )
        report(instance, "safety_classifiers")
        first = tick()
        assert first == dict.fromkeys(SCORE_CHAIN, {SHARDS[0], *SHARDS[3:]})
        assert tick() == {}  # still running: held, not requested
        instance.handle_run_event(
            running.run_id,
            dg.DagsterEvent(event_type_value="PIPELINE_SUCCESS", job_name="per_shard_job"),
        )
        assert instance.get_run_by_id(running.run_id).status == DagsterRunStatus.SUCCESS
        assert tick() == dict.fromkeys(SCORE_CHAIN, {SHARDS[1], SHARDS[2]})
        assert tick() == {}


def test_an_idle_tick_reads_no_partition_and_costs_the_same_at_any_number_of_shards(defs):
    """One indexed query per trigger asset; no listing of the registered shards, no run query."""
    calls: dict[str, int] = {}

    def counting(instance: dg.DagsterInstance, name: str) -> None:
        original = getattr(instance, name)

        def wrapper(*args, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            return original(*args, **kwargs)

        setattr(instance, name, wrapper)

    counts = []
    for n in (20, 2000):
        with dg.instance_for_test() as instance:
            tick = Ticks(instance, defs)
            tick()
            keys = [f"t{i:05d}" for i in range(n)]
            instance.add_dynamic_partitions(SHARDS_PARTITION, keys)
            report(instance, "image_embeddings", *keys[:5])
            tick()
            names = (
                "get_dynamic_partitions",
                "get_materialized_partitions",
                "get_run_records",
                "fetch_materializations",
            )
            for name in names:
                counting(instance, name)
            calls.clear()
            assert tick() == {}
            counts.append(dict(calls))
    assert counts[0] == counts[1] == {"fetch_materializations": len(TRIGGERS)}
