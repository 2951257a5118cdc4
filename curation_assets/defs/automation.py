"""How the pipeline keeps itself current: which asset updates when, and why.

* **New shards** are found by ``shard_sensor`` (``defs/sensors.py``), which registers each ready
  shard once and runs ``per_shard_job`` for it: ingest → embed → score → filter, one run per
  shard. That sensor, not an automation condition, owns new shards because a shard must first
  be *registered* as a partition, and because it alone knows when a shard is complete.
* **Per-shard follow-ups** (``classifier_scores``, ``filtered_images``, ``filter_rejections``,
  ``cluster_assignments_<c>``) are *eager*: they re-run for a shard when something they read
  changed — a retrained classifier re-scores every shard (until then the UI marks the old
  scores stale), new centroids re-assign every shard. A shard whose inputs did not change is
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
of an asset are due (``emit_backfills=True``) instead of one run per shard, and the run queue
(``dagster.yaml``: at most 4 concurrent runs, the ``gpu`` pool limit 1) bounds what executes.
Before re-enabling a sensor after a long pause, its target preview in the UI (Automation →
curation_automation) shows what would be requested.
"""

import dagster as dg

AC = dg.AutomationCondition


def eager_on(*keys: str) -> dg.AutomationCondition:
    """``AutomationCondition.eager()`` where only updates of ``keys`` trigger a run.

    The other dependencies still gate it (never run while one is missing or in progress).
    """
    return (
        AC.in_latest_time_window()
        & (  # pyright cannot infer the key type of this union; it is AssetKey
            AC.newly_missing() | AC.any_deps_updated().allow(dg.AssetSelection.assets(*keys))
        ).since_last_handled()  # type: ignore[attr-defined]
        & ~AC.any_deps_missing()
        & ~AC.any_deps_in_progress()
        & ~AC.in_progress()
    ).with_label(f"eager on {', '.join(keys)}")


def updated_on(*keys: str) -> dg.AutomationCondition:
    """Run when one of ``keys`` updated since this asset (partition) was last handled.

    Unlike :func:`eager_on` a newly added partition alone does not trigger it: new shards are
    processed by ``per_shard_job`` (requested by ``shard_sensor``), and a second request from
    the automation sensor would duplicate that run.
    """
    return (
        AC.any_deps_updated().allow(dg.AssetSelection.assets(*keys)).since_last_handled()
        & ~AC.any_deps_missing()
        & ~AC.any_deps_in_progress()
        & ~AC.in_progress()
    ).with_label(f"updated on {', '.join(keys)}")


#: Weekly retrain of the k-means centroids (only when data changed), or first training.
CENTROID_RETRAIN_CRON = "0 3 * * 0"
CENTROIDS = (AC.on_cron(CENTROID_RETRAIN_CRON) | AC.on_missing()).with_label(
    "weekly retrain or missing"
)

automation_sensor = dg.AutomationConditionSensorDefinition(
    "curation_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    emit_backfills=True,
    description=(
        "Evaluates every asset's automation condition each 30 s: eager re-scoring and "
        "re-assignment of shards whose inputs changed, incremental dedup, weights and export "
        "after new shards, weekly centroid retraining. Several due partitions of one asset "
        "become one backfill, not a run storm."
    ),
)

defs = dg.Definitions(sensors=[automation_sensor])
