"""The shard sensor: registers new, complete shards as partitions and requests their runs."""

import dagster as dg

from curation_assets.defs.automation import PER_SHARD_TAG, SENSOR_INTERVAL_S
from curation_assets.defs.partitions import SHARDS_PARTITION, shards_partitions
from curation_assets.defs.resources import ShardSource

MAX_NEW_SHARDS_PER_TICK = 25

per_shard_job = dg.define_asset_job(
    name="per_shard_job",
    selection=dg.AssetSelection.groups("ingest", "embed")
    | dg.AssetSelection.assets("classifier_scores", "filtered_images", "filter_rejections"),
    description=(
        "Ingest, embed, score and filter one shard (requested by shard_sensor for each new "
        "shard). Before any classifier is trained, scoring keeps every image (WARN check)."
    ),
    tags={PER_SHARD_TAG: "true"},
)


@dg.sensor(
    job=per_shard_job,
    minimum_interval_seconds=SENSOR_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Watches the source root. A folder, tar or manifest becomes a shard once complete "
        "(newest file older than min_age_s, or a _SUCCESS marker; names starting with . or _ and "
        "names ending in .tmp/.part are ignored). Each shard is registered exactly once and gets "
        f"one run; at most {MAX_NEW_SHARDS_PER_TICK} shards per tick."
    ),
)
def shard_sensor(context: dg.SensorEvaluationContext, shard_source: ShardSource):
    """Add new ready shards as dynamic partitions and request one run per shard."""
    found = shard_source.discover()
    known = set(context.instance.get_dynamic_partitions(SHARDS_PARTITION))
    waiting = [s for s in found if not s.ready and s.key not in known]
    for s in waiting:
        context.log.info(f"shard {s.key} not ready: {s.why_not_ready}")
    new = [s.key for s in found if s.ready and s.key not in known][:MAX_NEW_SHARDS_PER_TICK]
    if not new:
        return dg.SkipReason(
            f"no new ready shard under {shard_source.root} "
            f"({len(known)} registered, {len(waiting)} not ready yet)"
        )
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(partition_key=k, run_key=f"shard:{k}", tags={"curation/shard": k})
            for k in new
        ],
        dynamic_partitions_requests=[shards_partitions.build_add_request(new)],
    )


defs = dg.Definitions(sensors=[shard_sensor], jobs=[per_shard_job])
