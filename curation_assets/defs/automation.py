"""How the pipeline keeps itself current: which asset updates when, and why.

* **New shards** are found by ``shard_sensor`` (``defs/sensors.py``), which registers each ready
  shard once and runs ingest → embed → score → filter for it, and the assignment to the
  centroids too when they exist (``per_shard_assign_job``, else ``per_shard_job``): one run per
  up to ``SHARDS_PER_RUN`` shards registered in the same tick. That sensor, not an automation
  condition, owns new shards because a shard must first be *registered* as a partition, and
  because it alone knows when a shard is complete.
* **Per-shard follow-ups** (``classifier_scores``, ``filtered_images``, ``filter_rejections``,
  ``cluster_assignments_<c>``) re-run for a shard when something they read changed — a
  retrained classifier re-scores every shard (until then the UI marks the old scores stale),
  new centroids re-assign every shard, a shard filtered without an assignment (its run found
  no centroids) is assigned. Updates made by the per-shard runs themselves trigger nothing
  that the same run already did (:func:`updated_on`). A shard whose inputs did not change is
  never recomputed.
* **Global assets** that are cheap and incremental (``label_queue``, ``deduplicated_images``,
  ``duplicate_pairs``, ``sample_weights``, ``curated_dataset``) are *eager* on the updates
  that matter to them: dedup runs after new assignments (not after every ingest step) and
  searches only the new images.
* **Centroids** are retrained on a weekly cron (Sunday 03:00 UTC, and only when filtered data
  changed since the last tick) or when missing — not on every shard: a retrain invalidates
  every assignment and forces a full dedup, so new shards are assigned to the existing
  centroids in between.
* **Safety classifiers** are retrained when labels are imported (``curation labels import``
  reports a ``labels`` materialization); new shards' embeddings do not retrain them.

No storm after downtime: unpartitioned assets can only ever be requested once per tick. For
per-shard assets the automation sensor emits one *backfill* per tick when several partitions
of an asset are due (``emit_backfills=True``) instead of one run per shard; the backfill runs
them ``SHARDS_PER_RUN`` adjacent shards per run (``defs/partitions.py``), and the run queue
(``dagster.yaml``: at most 4 concurrent runs, the ``gpu`` pool limit 1) bounds what executes.
Before re-enabling a sensor after a long pause, its target preview in the UI (Automation →
curation_automation) shows what would be requested.
"""

import dagster as dg

from curation_assets.lib.settings import positive_int_env

AC = dg.AutomationCondition


def sensor_interval_s() -> int:
    """Seconds between ticks of ``shard_sensor`` and ``curation_automation``.

    ``$CURATION_SENSOR_INTERVAL_S`` (default 30). A tick of the automation sensor evaluates
    every condition in about 0.2 s here, so 10 s is affordable; most of a new shard's latency
    to the export is these waits (``curation bench daemon`` reports it).
    """
    return positive_int_env("CURATION_SENSOR_INTERVAL_S", 30)


SENSOR_INTERVAL_S = sensor_interval_s()


def eager_on(*keys: str) -> dg.AutomationCondition:
    """Run when one of ``keys`` was updated after this asset was last requested and updated.

    The other dependencies still gate it (never run while one is missing or in progress).

    Built so that a dependency's update is never lost when it lands in the same tick as this
    asset's own request or materialization — as it does when the automation sensor was paused
    right after requesting this asset, and the dependency was updated during the pause
    (``test_daemon``'s downtime phase, where ``AutomationCondition.eager()``-style
    ``any_deps_updated().since_last_handled()`` lost the update: its trigger and reset were both
    true on the first tick after the restart, and an OR of conditions carries no timestamps, so
    the reset won). Here trigger and resets are single timed conditions — a dependency's
    ``newly_updated`` (when it materialized), this asset's ``newly_requested`` (the tick that
    requested it) and ``newly_updated`` (when it materialized) — and ``since`` keeps the trigger
    when it is the later one. A run that fails is not retried every tick: it was requested, so
    only a new update of ``keys`` requests it again. An asset whose dependency in ``keys`` is
    requested in the same tick joins that run (``will_be_requested``), so dedup → weights →
    export is one run, not one per tick.
    """
    allowed = dg.AssetSelection.assets(*keys)
    updated = AC.any_deps_match(AC.newly_updated()).allow(allowed)
    # a dependency requested in this very tick: join its run (dedup → weights → export in one)
    joins = AC.any_deps_match(AC.will_be_requested()).allow(allowed)
    # two latches, both needed: new data since the last request (no duplicate request, no retry
    # every tick after a failure) and since the last materialization (not already consumed)
    pending = updated.since(AC.newly_requested()) & updated.since(AC.newly_updated())
    return (
        AC.in_latest_time_window()
        & (pending | joins | AC.newly_missing().since_last_handled())
        & ~AC.any_deps_missing()
        & ~AC.any_deps_in_progress()
        & ~AC.in_progress()
        & AC.all_deps_blocking_checks_passed()
    ).with_label(f"eager on {', '.join(keys)}")


PER_SHARD_TAG = "curation/per_shard_job"
"""Tag on every run of ``per_shard_job`` (job tag): its updates are complete by construction."""

ASSIGNED_TAG = "curation/per_shard_assigned"
"""Tag on the runs of ``per_shard_assign_job``: they also assigned their shards to the centroids."""


def updated_on(*keys: str, unless_tag: str = PER_SHARD_TAG) -> dg.AutomationCondition:
    """Run when one of ``keys`` was updated by anything but a run tagged ``unless_tag``.

    For the per-shard follow-ups of the classifiers (``filtered_images``, ``filter_rejections``
    after ``classifier_scores``): ``per_shard_job`` materializes them together with their
    inputs, so its updates must not trigger them again. Relying on "this asset was updated
    after its input" alone is racy: the daemon observed an input's materialization a moment
    before the same run's next step landed, and requested a duplicate run (seen live with
    ``curation bench daemon``). Updates from automation runs (a retrained classifier re-scores
    every shard) and from manual runs still trigger it, and a newly added partition alone
    does not (new shards are ``per_shard_job``'s).

    For ``cluster_assignments_<c>`` (``unless_tag=ASSIGNED_TAG``): a shard filtered by
    ``per_shard_assign_job`` was assigned in the same run; one filtered by ``per_shard_job``
    (no centroids when its run was requested) or re-filtered by automation is assigned again.
    """
    not_per_shard = (
        AC.newly_updated()
        & ~AC.executed_with_root_target()  # the run that updated it also ran this asset
        & ~AC.all_new_updates_have_run_tags(tag_keys={unless_tag})
    )
    return (
        AC.any_deps_match(not_per_shard | AC.will_be_requested())
        .allow(dg.AssetSelection.assets(*keys))
        .since_last_handled()
        & ~AC.any_deps_missing()
        & ~AC.any_deps_in_progress()
        & ~AC.in_progress()
        & AC.all_deps_blocking_checks_passed()
    ).with_label(f"updated on {', '.join(keys)}")


def missing_and_ready() -> dg.AutomationCondition:
    """Missing, every dependency present and settled, and no failed attempt since.

    ``AutomationCondition.on_missing()`` only fires for assets that *become* missing after the
    condition was first evaluated, so an asset that was missing when the automation sensor
    first ran (a new install: the centroids before any shard is filtered) would never be
    built. This condition is not edge-triggered: it requests the asset on the first tick at
    which its inputs are complete: at least one input materialized (no shard registered yet
    is not "complete") and none missing. A failed run is not retried every tick (the run's own
    retries apply; then a person looks at it and materializes it from the UI).
    """
    return (
        AC.missing()
        & AC.any_deps_match(~AC.missing())
        & ~AC.any_deps_missing()
        & ~AC.any_deps_in_progress()
        & ~AC.in_progress()
        & ~AC.execution_failed()
    ).with_label("missing and inputs ready")


#: Weekly retrain of the k-means centroids (only when data changed), or first training.
CENTROID_RETRAIN_CRON = "0 3 * * 0"
CENTROIDS = (AC.on_cron(CENTROID_RETRAIN_CRON) | missing_and_ready()).with_label(
    "weekly retrain or missing"
)

automation_sensor = dg.AutomationConditionSensorDefinition(
    "curation_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=SENSOR_INTERVAL_S,
    emit_backfills=True,
    description=(
        f"Evaluates every asset's automation condition each {SENSOR_INTERVAL_S} s: eager "
        "re-scoring and re-assignment of shards whose inputs changed, incremental dedup, "
        "weights and export after new shards, weekly centroid retraining. Several due "
        "partitions of one asset become one backfill, not a run storm."
    ),
)

defs = dg.Definitions(sensors=[automation_sensor])
