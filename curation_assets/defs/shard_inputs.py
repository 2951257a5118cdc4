"""Automation conditions over per-shard inputs whose cost does not grow with the shards.

A global asset that reads per-shard assets (dedup reads the assignments, the centroids read
the filtered images) would use Dagster's ``any_deps_match(...)``/``any_deps_missing()``: those
evaluate the dependency over every registered partition and, when the automation sensor stores
its cursor, list every registered partition once per condition node (Dagster 1.13): the cost
per tick grows with the shards. The conditions here answer the same questions about a whole
per-shard asset with a constant number of indexed queries (the latest materialization, the
unfinished runs and backfills, the latest check results), and the standard dependency
conditions ``ignore(PER_SHARD)``.

:class:`InputsUpdated` serves global inputs too: it does not count an update made by a run that
also targeted the evaluated asset (see there why Dagster's ``newly_updated`` requested the
export twice).

They are custom ``AutomationCondition`` subclasses, so ``curation_automation`` is evaluated in
the code server (``use_user_code_server=True``).
"""

from collections.abc import Iterable, Sequence

import dagster as dg
from dagster._core.asset_graph_view.timing_metadata import TimingMetadata
from dagster._core.events import DagsterEventType
from dagster._core.execution.backfill import BulkActionsFilter, BulkActionStatus
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.dagster_run import IN_PROGRESS_RUN_STATUSES
from dagster._utils.schedules import get_latest_completed_cron_tick

PER_SHARD_ASSETS = (
    "raw_images",
    "quarantine",
    "ingest_notes",
    "exact_duplicates",
    "image_quality",
    "image_embeddings",
    "classifier_scores",
    "filtered_images",
    "filter_rejections",
    *(f"cluster_assignments_{c}" for c in range(5)),
    "similarity_index",
    "image_uniqueness",
)
"""Every asset partitioned by shard (``test_definitions`` checks the list is complete)."""

PER_SHARD = dg.AssetSelection.assets(*PER_SHARD_ASSETS)

UNFINISHED_BACKFILLS = [BulkActionStatus.REQUESTED, BulkActionStatus.CANCELING]


def _shard_deps(context: dg.AutomationContext) -> list[dg.AssetKey]:
    node = context.asset_graph.get(context.key)
    return sorted(
        (k for k in node.parent_entity_keys if k.to_user_string() in PER_SHARD_ASSETS),
        key=lambda k: k.to_user_string(),
    )


def busy_assets(instance: dg.DagsterInstance) -> set[dg.AssetKey] | None:
    """Assets targeted by an unfinished run or backfill; ``None``: a run of a whole job (any).

    One query for the unfinished runs, one for the unfinished backfills.
    """
    busy: set[dg.AssetKey] = set()
    for record in instance.get_run_records(dg.RunsFilter(statuses=IN_PROGRESS_RUN_STATUSES)):
        selection = record.dagster_run.asset_selection
        if selection is None:
            return None
        busy.update(selection)
    for backfill in instance.get_backfills(BulkActionsFilter(statuses=UNFINISHED_BACKFILLS)):
        busy.update(backfill.asset_selection or ())
    return busy


def blocking_checks_passed(
    context: dg.AutomationContext, instance: dg.DagsterInstance, deps: Iterable[dg.AssetKey]
) -> bool:
    """Whether the latest result of every blocking check of ``deps`` passed (or never ran)."""
    graph = context.asset_graph
    checks = [ck for k in deps for ck in graph.get(k).check_keys if graph.get(ck).blocking]
    if not checks:
        return True
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(checks)
    return all(r.status != AssetCheckExecutionRecordStatus.FAILED for r in latest.values() if r)


class ShardInputsSettled(dg.AutomationCondition):
    """Every per-shard input has data, none is being written, and their blocking checks passed.

    Stands in for ``~any_deps_missing() & ~any_deps_in_progress() &
    all_deps_blocking_checks_passed()`` over the per-shard dependencies, asked of each input as a
    whole: materialized at least once (not: every registered shard has it, so one shard whose
    run failed does not hold the global assets back forever), no unfinished run or backfill
    targets it, and the latest result of each of its blocking checks passed.
    """

    @property
    def name(self) -> str:  # noqa: D102
        return "shard_inputs_settled"

    @property
    def description(self) -> str:  # noqa: D102
        return "per-shard inputs materialized, not being written, blocking checks passed"

    @property
    def requires_cursor(self) -> bool:  # noqa: D102
        return False

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:  # noqa: D102
        instance = context.asset_graph_view.instance
        deps = _shard_deps(context)
        settled = True
        if deps:
            busy = busy_assets(instance)
            settled = (
                busy is not None
                and not busy & set(deps)
                and all(instance.fetch_materializations(k, limit=1).records for k in deps)
                and blocking_checks_passed(context, instance, deps)
            )
        true = context.candidate_subset if settled else context.get_empty_subset()
        return dg.AutomationResult(context, true)


class InputsUpdated(dg.AutomationCondition):
    """One of ``keys`` was materialized since the previous tick by a run not also targeting this.

    Stands in for ``any_deps_match(newly_updated()).allow(keys)``, with two differences:

    * **Per-shard keys** are asked as a whole (any shard): one query per key for its newest
      materialization between the previous tick's and this tick's storage ids, not one pass over
      every registered shard.
    * **An update made by a run that also targeted this asset does not count**: that run was
      this asset's turn to consume it (if it failed, the failure is not retried every tick, as
      after any failed request). Dagster's ``newly_updated`` counts it, and a tick on a loaded
      machine can see the dependency's materialization but not yet this asset's own, made a
      second later by the same run, while it already sees the run as ended (it reads events up
      to the storage id fixed when the tick started, and run statuses when it evaluates): so
      the ``since`` latch was not reset and the asset was requested again (a second export run
      after every update, ``test_daemon``'s flake). A run "targets" an asset when it planned to
      materialize it (:class:`_RunTargets`).

    Its timing (the newest update that counts) lets ``since`` order it against a reset in the
    same tick, as ``newly_updated`` does. Cost per tick, per key with an update: a query for its
    materializations (newest first, in pages, stopping at the first that counts) and one for
    the planned events of each run met.
    """

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = tuple(keys)

    @property
    def name(self) -> str:  # noqa: D102
        # per-shard keys keep the name of the condition this one replaced: a ``since`` latch's
        # state is stored under an id built from its children's names, and one set before an
        # upgrade would be dropped
        shard = all(k in PER_SHARD_ASSETS for k in self.keys)
        return f"{'shard_' if shard else ''}inputs_updated({', '.join(self.keys)})"

    @property
    def description(self) -> str:  # noqa: D102
        return (
            f"{', '.join(self.keys)} materialized since the previous tick by a run that did "
            "not also target this asset"
        )

    @property
    def requires_cursor(self) -> bool:  # noqa: D102
        return False

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:  # noqa: D102
        # the first evaluation has nothing to compare with (as newly_updated); after it, no
        # previous storage id means that no event had been recorded yet
        first = context.previous_evaluation_time is None
        after, upto = context.previous_max_storage_id or 0, context.max_storage_id
        latest: float | None = None
        if not first and upto is not None and upto > after:
            targets = _RunTargets(context.asset_graph_view.instance, context.key)
            for key in self.keys:
                stamp = _newest_update_by_another_run(targets, dg.AssetKey(key), after, upto)
                if stamp is not None:
                    latest = max(latest or 0.0, stamp)
        if latest is None:
            return dg.AutomationResult(context, context.get_empty_subset())
        true = context.candidate_subset
        return dg.AutomationResult(
            context, true, timing_metadata=TimingMetadata(timestamps={latest: true})
        )


UPDATES_PAGE = 50
"""Materializations read per query by :class:`InputsUpdated` (newest first)."""


class _RunTargets:
    """Whether a run planned to materialize ``key``: read once per run, cached for a tick.

    Dagster records an ``ASSET_MATERIALIZATION_PLANNED`` event per asset (and partition) a run
    targets when the run is created, before any step: that answers for a run launched with an
    asset selection, a whole job's run, ``dg.materialize`` and a backfill's run alike.
    """

    def __init__(self, instance: dg.DagsterInstance, key: dg.AssetKey | dg.AssetCheckKey) -> None:
        self.instance, self.key = instance, key
        self.runs: dict[str, bool] = {}

    def targeted(self, run_id: str) -> bool:
        if not run_id:  # a runless report (``report_runless_asset_event``): counts
            return False
        if run_id not in self.runs:
            planned = self.instance.get_asset_keys_for_run(  # one SELECT DISTINCT
                run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION_PLANNED
            )
            self.runs[run_id] = self.key in planned
        return self.runs[run_id]


def _newest_update_by_another_run(
    targets: _RunTargets, key: dg.AssetKey, after: int, upto: int
) -> float | None:
    """Timestamp of ``key``'s newest materialization in ``(after, upto]`` that counts."""
    cursor = None
    while True:
        page = targets.instance.fetch_materializations(
            dg.AssetRecordsFilter(
                asset_key=key, after_storage_id=after, before_storage_id=upto + 1
            ),
            limit=UPDATES_PAGE,
            cursor=cursor,
        )
        for record in page.records:  # newest first
            if not targets.targeted(record.run_id):
                return record.timestamp
        if not page.has_more:
            return None
        cursor = page.cursor


class ShardInputsUpdatedSinceCron(dg.AutomationCondition):
    """Every per-shard input was materialized (any shard) after the latest tick of ``cron``.

    Stands in for ``all_deps_updated_since_cron(cron)`` over the per-shard dependencies: one
    query per input for its latest materialization.
    """

    def __init__(self, cron: str) -> None:
        self.cron = cron

    @property
    def name(self) -> str:  # noqa: D102
        return f"shard_inputs_updated_since_cron({self.cron})"

    @property
    def description(self) -> str:  # noqa: D102
        return f"every per-shard input updated since the latest tick of {self.cron}"

    @property
    def requires_cursor(self) -> bool:  # noqa: D102
        return False

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:  # noqa: D102
        instance = context.asset_graph_view.instance
        tick = get_latest_completed_cron_tick(self.cron, context.evaluation_time, "UTC")
        tick = tick.timestamp()
        fresh = all(
            (records := instance.fetch_materializations(key, limit=1).records)
            and records[0].timestamp > tick
            for key in _shard_deps(context)
        )  # stops querying at the first input that is not fresh
        true = context.candidate_subset if fresh else context.get_empty_subset()
        return dg.AutomationResult(context, true)
