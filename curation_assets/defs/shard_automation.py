"""``shard_automation``: per-shard follow-ups driven by events, at a cost independent of N.

Dagster's automation sensor evaluates a partitioned asset's condition for *every* partition on
every tick and, in Dagster 1.13, lists every registered partition again for each node of the
condition tree when it stores its cursor: 6–9 ms per registered shard per tick (14 min at
100k shards on PostgreSQL). So the per-shard assets carry no automation condition; this
sensor reads the materializations recorded since its cursor (one indexed query per trigger
asset: an idle tick costs the same at 10 or 10^5 shards), asks
:func:`~curation_assets.lib.shards.followups.due_followups` what they make due (the rules
table is there), and requests it as **one backfill** per tick, run ``SHARDS_PER_RUN``
adjacent shards per run (the assets' backfill policy). A global update (a retrained
classifier, new centroids, a new similarity quantizer) lists the affected shards once, when
it happens.

A due shard that is in an unfinished run is held in the cursor and requested once that run
is over (as ``~in_progress()`` did), so a shard is never written by two runs at once. A global
update is read once the run that made it has ended (:func:`read_updates`), so a run that
retrains the five centroids re-assigns every shard once, not once per tick it spanned.
"""

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
from dagster._core.storage.dagster_run import IN_PROGRESS_RUN_STATUSES

from curation_assets.defs.automation import ASSIGNED_TAG, PER_SHARD_TAG, SENSOR_INTERVAL_S
from curation_assets.defs.partitions import (
    RANGE_END_TAG,
    RANGE_START_TAG,
    SHARDS_PARTITION,
    shards_partitions,
)
from curation_assets.lib.shards.followups import (
    CENTROIDS,
    PER_SHARD_TARGETS,
    TRIGGERS,
    Due,
    Update,
    due_followups,
)

TRIGGER_TAG = "curation/shard_automation"
"""Tag on the backfills (and their runs) this sensor requests."""

PAGE = 1000
"""Materialization records read per query."""


@dataclass
class Cursor:
    """Where the sensor stands: the last storage id read per trigger asset, and held shards.

    ``pending``: asset → shards that were due while they were in an unfinished run.
    """

    after: dict[str, int] = field(default_factory=dict)
    pending: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, text: str | None) -> "Cursor | None":
        """The cursor stored by the previous tick; ``None`` before the first tick."""
        if not text:
            return None
        data = json.loads(text)
        return cls(after=dict(data["after"]), pending=dict(data.get("pending", {})))

    def to_json(self) -> str:
        """The cursor as the daemon stores it."""
        return json.dumps({"after": self.after, "pending": self.pending}, sort_keys=True)


def _latest_storage_id(instance: dg.DagsterInstance, asset: str) -> int:
    records = instance.fetch_materializations(dg.AssetKey(asset), limit=1).records
    return records[0].storage_id if records else 0


def _exists(instance: dg.DagsterInstance, assets: Iterable[str]) -> bool:
    return all(_latest_storage_id(instance, a) > 0 for a in assets)


def read_updates(instance: dg.DagsterInstance, cursor: Cursor) -> Iterator[Update]:
    """Every materialization of the trigger assets after ``cursor``; advances ``cursor.after``.

    A global trigger (centroids, classifiers, quantizer: unpartitioned) is read up to its first
    materialization by an unfinished run, and the rest waits for that run to end: one run
    writes the five centroids and the quantizer one after another, and a tick that read the
    first ones, then the rest, requested the re-assignment of every shard twice (a tick on a
    loaded daemon did; ``test_daemon`` caught it). A per-shard trigger is read as it comes (a
    shard that its own unfinished run writes is held in :func:`evaluate`).

    One query per trigger asset and page of :data:`PAGE` records, plus one run lookup per run
    that recorded any: nothing here depends on how many shards are registered.
    """
    runs: dict[str, tuple[dict[str, str], frozenset[str], bool]] = {}

    def run_info(run_id: str) -> tuple[dict[str, str], frozenset[str], bool]:
        if run_id not in runs:
            run = instance.get_run_by_id(run_id) if run_id else None
            if run is None:
                runs[run_id] = ({}, frozenset(), False)
            else:
                assets = frozenset(k.to_user_string() for k in run.asset_selection or ())
                runs[run_id] = (dict(run.tags), assets, run.status in IN_PROGRESS_RUN_STATUSES)
        return runs[run_id]

    for asset in TRIGGERS:
        after = cursor.after.get(asset, 0)
        waiting = False
        while not waiting:
            result = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), after_storage_id=after),
                limit=PAGE,
                ascending=True,
            )
            for record in result.records:
                tags, assets, unfinished = run_info(record.run_id)
                if unfinished and record.partition_key is None:
                    waiting = True  # read again, with the rest of its run, once it ended
                    break
                yield Update(record.storage_id, asset, record.partition_key, tags, assets)
                after = max(after, record.storage_id)
            if len(result.records) < PAGE:
                break
        cursor.after[asset] = after


def shards_in_flight(instance: dg.DagsterInstance) -> set[str]:
    """The shards of every unfinished run (queued or running): one query over those runs."""
    shards: set[str] = set()
    ranges: list[tuple[str, str]] = []
    for record in instance.get_run_records(dg.RunsFilter(statuses=IN_PROGRESS_RUN_STATUSES)):
        tags = record.dagster_run.tags
        if "dagster/partition" in tags:
            shards.add(tags["dagster/partition"])
        elif RANGE_START_TAG in tags and RANGE_END_TAG in tags:
            ranges.append((tags[RANGE_START_TAG], tags[RANGE_END_TAG]))
    if ranges:  # a range resolves in registration order (defs/partitions.py)
        registered = instance.get_dynamic_partitions(SHARDS_PARTITION)
        position = {key: i for i, key in enumerate(registered)}
        for start, end in ranges:
            if start in position and end in position:
                shards.update(registered[position[start] : position[end] + 1])
    return shards


def resolve(instance: dg.DagsterInstance, due: Due) -> dict[str, set[str]]:
    """``due`` as explicit shards per asset (a global update lists its shards here, once)."""
    out = {asset: set(shards) for asset, shards in due.shards.items()}
    if due.every:
        registered = set(instance.get_dynamic_partitions(SHARDS_PARTITION))
        having: dict[str, set[str]] = {}
        for asset, dep in due.every.items():
            if dep not in having:
                having[dep] = instance.get_materialized_partitions(dg.AssetKey(dep)) & registered
            out.setdefault(asset, set()).update(having[dep])
    return {asset: shards for asset, shards in out.items() if shards}


def backfill_request(wanted: dict[str, set[str]]) -> dg.RunRequest:
    """One backfill over ``wanted`` (asset → shards); the assets' backfill policy chunks it."""
    subset = AssetGraphSubset(
        partitions_subsets_by_asset_key={
            dg.AssetKey(asset): shards_partitions.empty_subset().with_partition_keys(sorted(keys))
            for asset, keys in wanted.items()
        }
    )
    return dg.RunRequest.for_asset_graph_subset(subset, tags={TRIGGER_TAG: "true"})


def evaluate(instance: dg.DagsterInstance, previous: str | None) -> tuple[Any, str, str]:
    """One tick: (the backfill request or ``None``, the new cursor, what happened in words)."""
    cursor = Cursor.from_json(previous)
    if cursor is None:  # first tick: start from now, do not replay the history
        cursor = Cursor(after={a: _latest_storage_id(instance, a) for a in TRIGGERS})
        return None, cursor.to_json(), "first tick: reading updates from now on"
    updates = list(read_updates(instance, cursor))
    if not updates and not cursor.pending:
        return None, cursor.to_json(), "no update of a trigger asset"
    due = due_followups(
        updates,
        centroids=_exists(instance, CENTROIDS),
        quantizer=_exists(instance, ["similarity_quantizer"]),
        per_shard_tag=PER_SHARD_TAG,
        assigned_tag=ASSIGNED_TAG,
    )
    wanted = resolve(instance, due)
    for asset, shards in cursor.pending.items():
        wanted.setdefault(asset, set()).update(shards)
    busy = shards_in_flight(instance) if wanted else set()
    held = {a: sorted(s & busy) for a, s in wanted.items() if s & busy}
    ready = {a: s - busy for a, s in wanted.items() if s - busy}
    cursor.pending = held
    note = f"{len(updates)} updates; held while their runs finish: {held or 'none'}"
    if not ready:
        return None, cursor.to_json(), f"nothing due ({note})"
    return backfill_request(ready), cursor.to_json(), note


@dg.sensor(
    asset_selection=dg.AssetSelection.assets(*PER_SHARD_TARGETS),
    minimum_interval_seconds=SENSOR_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Re-runs per-shard assets whose inputs changed, read from the materializations recorded "
        "since its cursor (cost per tick independent of the number of shards): a retrained "
        "classifier re-scores and re-filters every shard, new centroids re-assign every shard, "
        "a shard filtered without an assignment is assigned, an embedded shard is indexed for "
        "similarity and scored for uniqueness. One backfill per tick; a shard in an unfinished "
        "run waits for it."
    ),
)
def shard_automation(context: dg.SensorEvaluationContext):
    """Request the per-shard follow-ups of the updates recorded since the cursor."""
    request, cursor, note = evaluate(context.instance, context.cursor)
    if request is None:
        return dg.SensorResult(skip_reason=note, cursor=cursor)
    context.log.info(note)
    return dg.SensorResult(run_requests=[request], cursor=cursor)


defs = dg.Definitions(sensors=[shard_automation])
