"""The shard sensor: registers new, complete shards as partitions and requests their runs.

A tick lists the source root once and inspects only the entries after its cursor
(:func:`curation_assets.lib.shards.scan_shards`): its cost grows with the new entries, not with
the 10^5+ shards already registered; a late entry that sorts before the cursor, or the hourly
periodic check, makes one tick compare every entry with the registered partitions.
"""

from pathlib import Path

import dagster as dg

from curation_assets.defs.automation import ASSIGNED_TAG, PER_SHARD_TAG, SENSOR_INTERVAL_S
from curation_assets.defs.cluster import ASSIGNMENT_KEYS, CENTROID_KEYS
from curation_assets.defs.partitions import (
    SHARDS_PARTITION,
    SHARDS_PER_RUN,
    range_tags,
    shard_ranges,
    shards_partitions,
)
from curation_assets.defs.resources import ShardSource
from curation_assets.lib.shards import ScanCursor, scan_shards

MAX_NEW_SHARDS_PER_TICK = 100
"""Shards registered per tick at most (runs of up to ``SHARDS_PER_RUN`` each); more wait."""

PER_SHARD = dg.AssetSelection.groups("ingest", "embed") | dg.AssetSelection.assets(
    "classifier_scores", "filtered_images", "filter_rejections"
)

per_shard_job = dg.define_asset_job(
    name="per_shard_job",
    selection=PER_SHARD,
    description=(
        "Ingest, embed, score and filter shards (requested by shard_sensor for new shards while "
        "no centroids exist). Before any classifier is trained, scoring keeps every image (WARN "
        "check)."
    ),
    tags={PER_SHARD_TAG: "true"},
)

per_shard_assign_job = dg.define_asset_job(
    name="per_shard_assign_job",
    selection=PER_SHARD | dg.AssetSelection.assets(*ASSIGNMENT_KEYS),
    description=(
        "per_shard_job plus the assignment of the shards to the centroids in force, in the "
        "same run (requested by shard_sensor for new shards once the centroids exist; the "
        "automation then does not assign them again)."
    ),
    tags={PER_SHARD_TAG: "true", ASSIGNED_TAG: "true"},
)


def centroids_exist(instance: dg.DagsterInstance) -> bool:
    """Whether every clustering's centroids have been materialized on ``instance``."""
    return all(
        instance.get_latest_materialization_event(dg.AssetKey(key)) is not None
        for key in CENTROID_KEYS
    )


def shard_run_requests(
    new: list[str], registered: list[str], *, assign: bool
) -> list[dg.RunRequest]:
    """One run request per up to ``SHARDS_PER_RUN`` new shards adjacent in registration order.

    Args:
        new: The shards being registered this tick.
        registered: Every shard key in registration order, ``new`` included (``new`` alone
            when it is registered after every other key: only adjacency matters).
        assign: Whether the runs also assign the shards (``per_shard_assign_job``).
    """
    job = per_shard_assign_job if assign else per_shard_job
    requests = []
    for keys in shard_ranges(registered, new, SHARDS_PER_RUN):
        if len(keys) == 1:  # a single-partition run, as Dagster's own UI would launch it
            requests.append(
                dg.RunRequest(
                    job_name=job.name,
                    partition_key=keys[0],
                    run_key=f"shard:{keys[0]}",
                    tags={"curation/shard": keys[0]},
                )
            )
        else:
            requests.append(
                dg.RunRequest(
                    job_name=job.name,
                    run_key=f"shards:{keys[0]}..{keys[-1]}",
                    tags={**range_tags(keys), "curation/shards": str(len(keys))},
                )
            )
    return requests


@dg.sensor(
    jobs=[per_shard_job, per_shard_assign_job],
    minimum_interval_seconds=SENSOR_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Watches the source root. A folder, tar or manifest becomes a shard once complete "
        "(newest file older than min_age_s, or a _SUCCESS marker; names starting with . or _ and "
        "names ending in .tmp/.part are ignored). A tick inspects only the entries after its "
        "cursor (every entry hourly, or when one sorting before the cursor appears). Each shard "
        "is registered exactly once; the "
        f"shards of a tick (at most {MAX_NEW_SHARDS_PER_TICK}) share runs of up to "
        f"{SHARDS_PER_RUN} ($CURATION_SHARDS_PER_RUN), which also assign them to the centroids "
        "once those exist."
    ),
)
def shard_sensor(context: dg.SensorEvaluationContext, shard_source: ShardSource):
    """Add new ready shards as dynamic partitions and request runs over them."""
    instance = context.instance
    scan = scan_shards(
        Path(shard_source.root),
        ScanCursor.from_json(context.cursor),
        registered=lambda: instance.get_dynamic_partitions(SHARDS_PARTITION),
        is_registered=lambda key: instance.has_dynamic_partition(SHARDS_PARTITION, key),
        min_age_s=shard_source.min_age_s,
        limit=MAX_NEW_SHARDS_PER_TICK,
    )
    for s in scan.waiting:
        context.log.info(f"shard {s.key} not ready: {s.why_not_ready}")
    if scan.full:
        context.log.info(f"full reconciliation of {shard_source.root}: {scan.full}")
    new = [s.key for s in scan.new]
    cursor = scan.cursor.to_json()
    if not new:
        return dg.SensorResult(
            skip_reason=(
                f"no new ready shard under {shard_source.root} ({scan.listed} entries, "
                f"{scan.inspected} inspected, {len(scan.waiting)} not ready yet)"
            ),
            cursor=cursor,
        )
    # The daemon registers `new` (in this order, after every registered key) before it submits
    # the runs, so the runs' ranges are slices of `new` itself.
    assign = centroids_exist(instance)
    return dg.SensorResult(
        run_requests=shard_run_requests(new, new, assign=assign),
        dynamic_partitions_requests=[shards_partitions.build_add_request(new)],
        cursor=cursor,
    )


defs = dg.Definitions(sensors=[shard_sensor], jobs=[per_shard_job, per_shard_assign_job])
