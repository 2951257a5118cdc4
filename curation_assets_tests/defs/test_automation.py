"""``eager_on``: a dependency's update is never lost, and nothing is requested twice.

Toy assets (no pipeline), evaluated tick by tick with ``dg.evaluate_automation_conditions`` and
the cursor of the previous tick, as the automation sensor does.
"""

import dagster as dg

from curation_assets.defs.automation import eager_on


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
