"""How the pipeline keeps itself current: which asset updates when, and why.

Three sensors share the work, so that no tick costs more as shards accumulate:

* **New shards** are found by ``shard_sensor`` (``defs/sensors.py``), which registers each ready
  shard once and runs ingest → embed → score → filter for it, and the assignment to the
  centroids too when they exist (``per_shard_assign_job``, else ``per_shard_job``): one run per
  up to ``SHARDS_PER_RUN`` shards registered in the same tick. That sensor, not an automation
  condition, owns new shards because a shard must first be *registered* as a partition, and
  because it alone knows when a shard is complete.
* **Per-shard follow-ups** (``classifier_scores``, ``filtered_images``, ``filter_rejections``,
  ``cluster_assignments_<c>``, ``similarity_index``, ``image_uniqueness``) carry no automation
  condition: ``shard_automation`` (``defs/shard_automation.py``) reads the materializations
  recorded since its cursor and requests what they make due as one backfill — a retrained
  classifier re-scores every shard (until then the UI marks the old scores stale), new
  centroids re-assign every shard, a shard filtered without an assignment (its run found no
  centroids) is assigned, an embedded shard is indexed and scored for uniqueness. Updates made
  by the per-shard runs themselves trigger nothing that the same run already did (the run tags
  below). A shard whose inputs did not change is never recomputed. Why not conditions:
  Dagster evaluates a partitioned asset's condition over every partition each tick and lists
  every registered partition once per condition node when it stores the cursor, ~6 ms per
  shard per tick (``curation bench partitions --automation``).
* **Global assets** are evaluated by ``curation_automation`` (below). Those that are cheap and
  incremental (``label_queue``, ``deduplicated_images``, ``duplicate_pairs``,
  ``sample_weights``, ``curated_dataset``) are *eager* on the updates that matter to them:
  dedup runs after new assignments (not after every ingest step) and searches only the new
  images.
* **Centroids** are retrained on a weekly cron (Sunday 03:00 UTC, and only when filtered data
  changed since the last tick) or when missing — not on every shard: a retrain invalidates
  every assignment and forces a full dedup, so new shards are assigned to the existing
  centroids in between.
* **Safety classifiers** are retrained when labels are imported (``curation labels import``
  reports a ``labels`` materialization); new shards' embeddings do not retrain them.

No storm after downtime: unpartitioned assets can only ever be requested once per tick, and
``shard_automation`` requests at most one backfill per tick, run ``SHARDS_PER_RUN`` adjacent
shards per run (``defs/partitions.py``); the run queue (``dagster.yaml``: at most 4
concurrent runs, the ``gpu`` pool limit 1) bounds what executes. Pausing automation means
stopping both ``curation_automation`` and ``shard_automation``; each keeps its cursor, so
what became due during the pause is requested once when it is started again.
"""

import warnings

import dagster as dg

from curation_assets.defs.shard_inputs import (
    PER_SHARD,
    PER_SHARD_ASSETS,
    InputsUpdated,
    ShardInputsSettled,
    ShardInputsUpdatedSinceCron,
)
from curation_assets.lib.settings import positive_int_env

AC = dg.AutomationCondition

# The custom conditions of shard_inputs.py need the sensor evaluated in the code server, a
# parameter Dagster 1.13 marks beta and would warn about at every import; tested here.
warnings.filterwarnings("ignore", message=".*use_user_code_server.*", category=dg.BetaWarning)


def sensor_interval_s() -> int:
    """Seconds between ticks of ``shard_sensor``, ``curation_automation``, ``shard_automation``.

    ``$CURATION_SENSOR_INTERVAL_S`` (default 30). A tick of the automation sensors takes about
    0.2 s here (sqlite; ~1 s on PostgreSQL), whatever the number of shards, so 10 s is
    affordable; most of a new shard's latency to the export is these waits (``curation bench
    daemon`` reports it).
    """
    return positive_int_env("CURATION_SENSOR_INTERVAL_S", 30)


SENSOR_INTERVAL_S = sensor_interval_s()


def eager_on(*keys: str) -> dg.AutomationCondition:
    """Run when one of ``keys`` was updated after this asset was last requested and updated.

    The other dependencies still gate it (never run while one is missing or in progress;
    :func:`deps_ready`). ``keys`` are all global or all per-shard (then "updated" means any
    shard of them). "Updated" is :class:`~curation_assets.defs.shard_inputs.InputsUpdated`: an
    update made by a run that also targeted this asset does not count (that run consumed it).

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
    shard_keys = [k for k in keys if k in PER_SHARD_ASSETS]
    if shard_keys and len(shard_keys) < len(keys):
        msg = f"eager_on{keys}: mixes per-shard and global keys; give one kind"
        raise ValueError(msg)
    # per-shard keys: any shard of them, one query per key, not a pass over every shard; and
    # an update by a run that also targeted this asset does not count (InputsUpdated)
    updated = InputsUpdated(keys)
    joins: dg.AutomationCondition | None = None  # per-shard assets are never requested here
    if not shard_keys:
        # a dependency requested in this very tick: join its run (dedup → weights → export)
        joins = AC.any_deps_match(AC.will_be_requested()).allow(dg.AssetSelection.assets(*keys))
    # two latches, both needed: new data since the last request (no duplicate request, no retry
    # every tick after a failure) and since the last materialization (not already consumed)
    pending = updated.since(AC.newly_requested()) & updated.since(AC.newly_updated())
    missing = AC.newly_missing().since_last_handled()
    due = pending | missing if joins is None else pending | joins | missing
    return (AC.in_latest_time_window() & due & deps_ready() & ~AC.in_progress()).with_label(
        f"eager on {', '.join(keys)}"
    )


def deps_ready() -> dg.AutomationCondition:
    """No dependency missing or being written, and their blocking checks passed.

    Dagster's ``any_deps_missing`` etc. for the global dependencies; for the per-shard ones
    :class:`~curation_assets.defs.shard_inputs.ShardInputsSettled` (constant cost per tick).
    """
    return (
        ~AC.any_deps_missing().ignore(PER_SHARD)
        & ~AC.any_deps_in_progress().ignore(PER_SHARD)
        & AC.all_deps_blocking_checks_passed().ignore(PER_SHARD)
        & ShardInputsSettled()
    ).with_label("inputs ready")


PER_SHARD_TAG = "curation/per_shard_job"
"""Tag on every run of ``per_shard_job`` (job tag): it scored and filtered its shards, so
``shard_automation`` does not filter them again."""

ASSIGNED_TAG = "curation/per_shard_assigned"
"""Tag on the runs of ``per_shard_assign_job``: they also assigned their shards to the centroids
(``shard_automation`` assigns a shard filtered by a run without it)."""


def missing_and_ready() -> dg.AutomationCondition:
    """Missing, every dependency present and settled, and no failed attempt since.

    ``AutomationCondition.on_missing()`` only fires for assets that *become* missing after the
    condition was first evaluated, so an asset that was missing when the automation sensor
    first ran (a new install: the centroids before any shard is filtered) would never be
    built. This condition is not edge-triggered: it requests the asset on the first tick at
    which its inputs are ready (:func:`deps_ready`: a per-shard input counts as ready once a
    shard of it is materialized and none is being written). A failed run is not retried every
    tick (the run's own retries apply; then a person looks at it and materializes it from the
    UI).
    """
    return (AC.missing() & deps_ready() & ~AC.in_progress() & ~AC.execution_failed()).with_label(
        "missing and inputs ready"
    )


#: Weekly retrain of the k-means centroids (only when data changed), or first training.
CENTROID_RETRAIN_CRON = "0 3 * * 0"
WEEKLY = (
    AC.cron_tick_passed(CENTROID_RETRAIN_CRON).since_last_handled()
    & ShardInputsUpdatedSinceCron(CENTROID_RETRAIN_CRON)
).with_label(f"on_cron({CENTROID_RETRAIN_CRON})")
"""``AutomationCondition.on_cron`` for an asset whose inputs are per-shard (see
:class:`~curation_assets.defs.shard_inputs.ShardInputsUpdatedSinceCron`)."""
CENTROIDS = (WEEKLY | missing_and_ready()).with_label("weekly retrain or missing")

automation_sensor = dg.AutomationConditionSensorDefinition(
    "curation_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=SENSOR_INTERVAL_S,
    emit_backfills=True,
    use_user_code_server=True,  # the conditions of defs/shard_inputs.py are custom classes
    description=(
        f"Evaluates the global assets' automation conditions each {SENSOR_INTERVAL_S} s: "
        "classifier retraining after new labels, incremental dedup, weights and export after "
        "new assignments, centroid training when missing and weekly. Per-shard assets have "
        "no condition (shard_automation re-runs them), so a tick costs the same at 10 or "
        "10^5 shards."
    ),
)

defs = dg.Definitions(sensors=[automation_sensor])
