"""``eager_on``: a dependency's update is never lost, and nothing is requested twice.

Also over a per-shard input (``ShardInputsUpdated`` / ``ShardInputsSettled``): due once per
new shard data, held while a run writes the input, first run once a shard of it exists; and
the centroids' weekly retrain only when a shard changed since the cron tick.

Toy assets (no pipeline), evaluated tick by tick with ``dg.evaluate_automation_conditions`` and
the cursor of the previous tick, as the automation sensor does.
"""

from datetime import UTC, datetime, timedelta

import dagster as dg
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus

from curation_assets.defs.automation import CENTROIDS, eager_on
from curation_assets.defs.partitions import SHARDS_PARTITION, shards_partitions


@dg.asset
def upstream() -> None:
    """Stands for cluster_assignments."""


@dg.asset(deps=[upstream], automation_condition=eager_on("upstream"))
def downstream() -> None:
    """Stands for deduplicated_images."""


@dg.asset(deps=[downstream], automation_condition=eager_on("downstream"))
def further() -> None:
    """Stands for sample_weights (after deduplicated_images)."""


DEFS = dg.Definitions(assets=[upstream, downstream, further])


class Ticks:
    def __init__(self, instance: dg.DagsterInstance) -> None:
        self.instance = instance
        self.cursor = None

    def requested(self) -> int:
        result = dg.evaluate_automation_conditions(DEFS, self.instance, cursor=self.cursor)
        self.cursor = result.cursor
        self.keys = {r.key.to_user_string() for r in result.results if r.true_subset.size}
        return len(self.keys & {"downstream"})


def _materialize(instance: dg.DagsterInstance, *assets: dg.AssetsDefinition) -> None:
    assert dg.materialize(list(assets), instance=instance, selection=list(assets)).success


def test_an_update_during_a_pause_right_after_a_request_is_not_lost():
    with dg.instance_for_test() as instance:
        _materialize(instance, upstream, downstream, further)
        ticks = Ticks(instance)
        assert ticks.requested() == 0  # first tick: nothing new
        _materialize(instance, upstream)
        assert ticks.requested() == 1  # new data upstream
        # the sensor is paused now: the requested run lands, then new data arrives upstream
        _materialize(instance, downstream, further)
        _materialize(instance, upstream)
        # first tick after the pause: the run's own update and the request are older than the
        # new data, so it is requested again (an OR of resets without timestamps lost it)
        assert ticks.requested() == 1
        _materialize(instance, downstream, further)
        assert ticks.requested() == 0 and not ticks.keys
        assert ticks.requested() == 0 and not ticks.keys


def test_no_second_request_while_nothing_new_and_no_retry_storm_after_a_failure():
    with dg.instance_for_test() as instance:
        _materialize(instance, upstream, downstream, further)
        ticks = Ticks(instance)
        ticks.requested()
        _materialize(instance, upstream)
        assert ticks.requested() == 1
        # the run failed (downstream never materialized): not requested again every tick
        assert ticks.requested() == 0
        assert ticks.requested() == 0
        # until upstream has new data
        _materialize(instance, upstream)
        assert ticks.requested() == 1


def test_a_run_that_updated_both_does_not_request_downstream_again():
    with dg.instance_for_test() as instance:
        _materialize(instance, upstream, downstream, further)
        ticks = Ticks(instance)
        ticks.requested()
        _materialize(instance, upstream, downstream, further)  # one run, upstream first
        assert ticks.requested() == 0 and not ticks.keys


@dg.asset(name="downstream", deps=[upstream])
def downstream_not_yet_recorded() -> None:
    """Stands for downstream whose materialization a tick has not seen yet."""
    raise RuntimeError("not recorded yet")


def test_an_update_by_a_run_that_also_targeted_the_asset_does_not_request_it_again():
    # test_daemon's flake: a run updated upstream, then downstream a second later; a tick on a
    # loaded machine read events up to a storage id between the two, and saw the run as ended,
    # so it requested downstream again. Here downstream's step fails, so its materialization is
    # never seen: the update was that run's to consume, and is not requested a second time.
    with dg.instance_for_test() as instance:
        _materialize(instance, upstream, downstream, further)
        ticks = Ticks(instance)
        ticks.requested()
        run = dg.materialize(
            [upstream, downstream_not_yet_recorded], instance=instance, raise_on_error=False
        )
        assert not run.success
        assert ticks.requested() == 0
        assert ticks.requested() == 0
        # an update by a run that did not target downstream counts, as does a runless report
        _materialize(instance, upstream)
        assert ticks.requested() == 1
        _materialize(instance, downstream, further)
        assert ticks.requested() == 0
        instance.report_runless_asset_event(dg.AssetMaterialization(upstream.key))
        assert ticks.requested() == 1


def test_a_chain_is_requested_in_one_tick():
    with dg.instance_for_test() as instance:
        _materialize(instance, upstream, downstream, further)
        ticks = Ticks(instance)
        ticks.requested()
        _materialize(instance, upstream)
        ticks.requested()
        assert ticks.keys == {"downstream", "further"}  # one run, not one per tick
        _materialize(instance, downstream, further)
        ticks.requested()
        assert not ticks.keys


# --- per-shard inputs: asked as a whole, at a cost independent of the number of shards ---


@dg.asset(name="cluster_assignments_0", partitions_def=shards_partitions)
def shard_input() -> None:
    """Stands for a per-shard input (its name is one of PER_SHARD_ASSETS)."""


@dg.asset(
    name="deduplicated_images",
    deps=[shard_input],
    automation_condition=eager_on("cluster_assignments_0"),
)
def global_output() -> None:
    """Stands for deduplicated_images."""


SHARD_DEFS = dg.Definitions(assets=[shard_input, global_output])


def _shard_ticks(instance: dg.DagsterInstance):
    cursor = [None]

    def tick() -> bool:
        result = dg.evaluate_automation_conditions(SHARD_DEFS, instance, cursor=cursor[0])
        cursor[0] = result.cursor
        return any(r.true_subset.size for r in result.results if r.key == global_output.key)

    return tick


def _report(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str | None = None) -> None:
    instance.report_runless_asset_event(dg.AssetMaterialization(key, partition=partition))


def test_a_global_asset_waits_for_its_first_shard_then_runs_once_per_new_shard_data():
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(SHARDS_PARTITION, ["a", "b", "c"])
        tick = _shard_ticks(instance)
        assert not tick()  # missing, but no shard of its input yet
        _report(instance, shard_input.key, "a")
        assert tick()  # its input's first shard: due (it is missing too)
        _report(instance, global_output.key)
        assert not tick() and not tick()
        _report(instance, shard_input.key, "b")
        assert tick()  # any shard updated: due once
        assert not tick()  # requested: not again until new data
        _report(instance, global_output.key)
        assert not tick()


def test_a_global_asset_waits_while_a_run_writes_its_per_shard_input():
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(SHARDS_PARTITION, ["a", "b"])
        _report(instance, shard_input.key, "a")
        _report(instance, global_output.key)
        tick = _shard_ticks(instance)
        assert not tick()
        run = instance.add_run(
            DagsterRun(
                job_name="__ASSET_JOB",
                run_id="r-writing",
                status=DagsterRunStatus.STARTED,
                asset_selection=frozenset({shard_input.key}),
            )
        )
        _report(instance, shard_input.key, "b")  # the run's first shard lands
        assert not tick() and not tick()  # its other shards are still being written
        instance.handle_run_event(
            run.run_id, dg.DagsterEvent(event_type_value="PIPELINE_SUCCESS", job_name="__ASSET_JOB")
        )
        assert tick()  # the update was kept while it waited
        assert not tick()


@dg.asset(name="filtered_images", partitions_def=shards_partitions)
def filtered_stand_in() -> None:
    """Stands for filtered_images (per shard)."""


@dg.asset(name="cluster_centroids_0", deps=[filtered_stand_in], automation_condition=CENTROIDS)
def centroids_stand_in() -> None:
    """Stands for cluster_centroids_0: weekly when data changed, or when missing."""


def test_centroids_retrain_weekly_only_when_a_shard_changed_since_the_cron_tick():
    defs = dg.Definitions(assets=[filtered_stand_in, centroids_stand_in])
    now = datetime.now(UTC)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(SHARDS_PARTITION, ["a"])
        _report(instance, centroids_stand_in.key)

        def requested(at: datetime, cursor=None):
            result = dg.evaluate_automation_conditions(
                defs, instance, evaluation_time=at, cursor=cursor
            )
            return result.total_requested, result.cursor

        n, cursor = requested(now - timedelta(days=8))  # first tick, before last week's cron
        assert n == 0
        _report(instance, filtered_stand_in.key, "a")  # a shard filtered after that cron tick
        n, cursor = requested(now + timedelta(seconds=1), cursor)
        assert n == 1  # the cron tick passed and the data changed since
        _report(instance, centroids_stand_in.key)
        n, cursor = requested(now + timedelta(days=8), cursor)
        assert n == 0  # the next cron tick passed, but no shard changed since
