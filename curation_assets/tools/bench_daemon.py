"""``curation bench daemon``: a new shard's trip through the real daemon, timed.

``curation bench incremental`` runs the jobs in-process, one after the other. This benchmark
lets Dagster drive everything, as in production: it starts ``dagster dev`` (webserver + daemon)
on loopback for a fresh curation home whose source root holds the base shards, and waits until
``shard_sensor`` has run ``per_shard_job`` for each and ``curation_automation`` has trained the
centroids, assigned every shard and materialized the dedup, weights and export. Then it moves
one new shard (≈ 1 % of the images) into the source root and waits for the export to include
it. For both phases it reports

* the *latency*: from the server's start (base) or the shard's arrival (new shard) until the
  ``curated_dataset`` materialization that includes it;
* the *work*: every run launched in the phase, with its job, partition, assets, trigger,
  when it was created (seconds into the phase), how long it waited to start (queue + process
  start), its duration and the time its steps ran (a run's duration also counts waits for a
  ``gpu`` pool slot while other shards embed); the work is the sum of step times;
* for the new shard, whether any run touched a partition other than the new shard (it must
  not: old shards are never recomputed) and the dedup mode (``incremental``).

Latency includes the sensors' polling intervals (30 s each) and a process start per run; the
work sum is the compute the daemon spent. Both ratios are reported.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import polars as pl

from curation_assets.instance import install_instance_config
from curation_assets.tools.devserver import ACTIVE, DagsterDev, dagster_dev

EXPORT_ASSET = "curated_dataset"
SIMILARITY = frozenset({"similarity_index", "image_uniqueness"})
"""Per-shard assets ``shard_automation`` runs for new shards (not in ``shard_sensor``'s jobs)."""


@dataclass
class Phase:
    """What happened between ``started`` and the export that followed."""

    name: str
    started: float
    exported: float = 0.0
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def latency_s(self) -> float:
        """Seconds from the phase's start to the export's materialization."""
        return self.exported - self.started

    @property
    def work_s(self) -> float:
        """Sum of the phase's step durations (excludes waits for a pool slot and run starts)."""
        return sum(r["step_seconds"] for r in self.runs)

    @property
    def run_s(self) -> float:
        """Sum of the phase's run durations (includes waits for a pool slot)."""
        return sum(r["seconds"] for r in self.runs)

    def partitions(self) -> set[str]:
        """The partitions the phase's runs materialized (unpartitioned runs excluded)."""
        return {p for r in self.runs for p in r["partitions"]}

    def report(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "latency_seconds": round(self.latency_s, 1),
            "work_seconds": round(self.work_s, 2),
            "run_seconds": round(self.run_s, 2),
            "runs": len(self.runs),
            "partitions": sorted(self.partitions()),
            "run_list": self.runs,
        }


def export_shards(delta_root: Path) -> set[str]:
    """Shards with at least one row in the ``curated_dataset`` Delta table."""
    from curation_assets.lib.storage import DeltaStore
    from curation_assets.lib.tables import CURATED_DATASET

    store = DeltaStore(str(delta_root))
    if not store.exists(CURATED_DATASET.name):
        return set()
    shards = store.scan(CURATED_DATASET).select(pl.col("shard").unique()).collect()
    return set(shards["shard"].to_list())


@cache
def job_assets(job: str) -> list[str]:
    """The asset keys that ``job`` of the Definitions materializes.

    The run record of a predefined job (``per_shard_job``) does not list them.
    """
    from curation_assets.definitions import defs

    keys = defs().resolve_job_def(job).asset_layer.selected_asset_keys
    return sorted(k.to_user_string() for k in keys)


def run_partitions(tags: dict[str, str], order: list[str]) -> list[str]:
    """The partitions a run covers: its partition, or its range resolved in ``order``."""
    if "dagster/partition" in tags:
        return [tags["dagster/partition"]]
    start = tags.get("dagster/asset_partition_range_start")
    end = tags.get("dagster/asset_partition_range_end")
    if start is None or end is None:
        return []
    return order[order.index(start) : order.index(end) + 1]


def _run_row(r: dict[str, Any], since: float, order: list[str]) -> dict[str, Any]:
    tags = r["tags"]
    trigger = tags.get("dagster/sensor_name") or (
        f"backfill {tags['dagster/backfill']}" if "dagster/backfill" in tags else "manual"
    )
    start, end = r.get("startTime"), r.get("endTime")
    partitions = run_partitions(tags, order)
    return {
        "job": r["jobName"],
        "partition": ",".join(partitions),
        "partitions": partitions,
        "assets": r["assets"] or job_assets(r["jobName"]),
        "trigger": trigger,
        "status": r["status"],
        "created": r["creationTime"],
        "created_after_s": round(r["creationTime"] - since, 1),
        "launch_s": round(start - r["creationTime"], 1) if start else None,
        "seconds": round(end - start, 2) if start and end else 0.0,
        "step_seconds": round(
            sum(
                st["endTime"] - st["startTime"]
                for st in r.get("stepStats") or []
                if st.get("startTime") and st.get("endTime")
            ),
            2,
        ),
    }


def runs_since(dev: DagsterDev, since: float) -> list[dict[str, Any]]:
    """Runs created at or after ``since`` (epoch s), oldest first, summarised.

    A run over a range of shards lists each of them in ``partitions`` (``partition`` joins
    them with commas).
    """
    order = dev.partition_keys()
    rows = [_run_row(r, since, order) for r in dev.runs() if r["creationTime"] >= since]
    return sorted(rows, key=lambda r: r["created"])


def _busy(
    dev: DagsterDev, since: float, name: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """The runs since ``since``, those still queued or running, and the unfinished backfills.

    Raises when a run failed (with the failing run's job and partition).
    """
    runs = runs_since(dev, since)
    failed = [r for r in runs if r["status"] == "FAILURE"]
    if failed:
        raise RuntimeError(f"{name}: runs failed: {failed}\n{dev.log_tail()}")
    active = [r for r in runs if r["status"] in ACTIVE]
    in_flight = [b for b in dev.backfills() if b["status"] == "REQUESTED"]
    return runs, active, in_flight


def wait_idle(
    dev: DagsterDev,
    since: float,
    name: str,
    *,
    timeout_s: float,
    materialized: Collection[tuple[str, str]] = (),
    poll_s: float = 2.0,
) -> list[dict[str, Any]]:
    """Wait until the daemon is idle and ``materialized`` is done; returns the runs since ``since``.

    Idle: no run created since ``since`` is queued or running and no backfill is unfinished.
    Done: every (asset, partition) of ``materialized`` was in a successful run of those.

    The export can be current while an automation sensor has yet to request a shard's other
    follow-ups (its similarity index), and after a sensor is stopped what its last tick
    requested can still be launched: a queued run, or a backfill whose runs the backfill
    daemon creates later. Waiting for both keeps a phase's work out of the next one.
    """
    deadline = time.time() + timeout_s
    while True:
        runs, active, in_flight = _busy(dev, since, name)
        done = {
            (a, p)
            for r in runs
            if r["status"] == "SUCCESS"
            for a in r["assets"]
            for p in r["partitions"] or [""]
        }
        missing = set(materialized) - done
        if not active and not in_flight and not missing:
            return runs
        if time.time() > deadline:
            raise TimeoutError(
                f"{name}: after {timeout_s:.0f}s {len(active)} runs and {len(in_flight)} "
                f"backfills are still active; not materialized: {sorted(missing)}\n"
                + diagnosis(dev, since)
            )
        time.sleep(poll_s)


def settle(dev: DagsterDev, phase: Phase, shards: set[str], *, timeout_s: float) -> Phase:
    """Complete ``phase.runs`` once the shards' similarity index and uniqueness are done too.

    They may trail the export (another branch of the graph); waits also until nothing is
    queued, running or backfilling, so none of the phase's work spills into the next.
    """
    wanted = {(asset, shard) for asset in SIMILARITY for shard in shards}
    phase.runs = wait_idle(dev, phase.started, phase.name, timeout_s=timeout_s, materialized=wanted)
    return phase


def wait_for_export(
    dev: DagsterDev,
    delta_root: Path,
    shards: set[str],
    phase: Phase,
    *,
    timeout_s: float,
    poll_s: float = 2.0,
) -> Phase:
    """Wait until the export includes every shard of ``shards`` and the daemon is idle.

    Fills ``phase.exported`` (time of the last ``curated_dataset`` materialization) and
    ``phase.runs``. Raises when a run of the phase failed (with the failing run's job and
    partition) or on timeout (with what is missing).
    """
    deadline = time.time() + timeout_s
    while True:
        runs, active, in_flight = _busy(dev, phase.started, phase.name)
        latest = dev.latest_materialization(EXPORT_ASSET)
        exported_at = float(latest["timestamp"]) / 1000 if latest else 0.0
        missing = shards - export_shards(delta_root)
        if not missing and not active and not in_flight and exported_at >= phase.started:
            phase.exported = exported_at
            phase.runs = runs
            return phase
        if time.time() > deadline:
            raise TimeoutError(
                f"{phase.name}: after {timeout_s:.0f}s the export lacks {sorted(missing)}; "
                f"{len(active)} runs and {len(in_flight)} backfills active\n"
                + diagnosis(dev, phase.started)
            )
        time.sleep(poll_s)


def diagnosis(dev: DagsterDev, since: float, *, log_lines: int = 60) -> str:
    """What the server did since ``since``: for the message of a phase that timed out.

    The runs (job, trigger, status, partitions), the backfills and their status, the automation
    sensors' recent ticks (what each requested) and the tail of the server log: enough to tell
    a stuck condition from a slow run without the log file, which CI does not keep.
    """
    from curation_assets.defs.automation import automation_sensor
    from curation_assets.defs.shard_automation import shard_automation

    lines = ["runs since the phase began:"]
    for r in runs_since(dev, since):
        lines.append(
            f"  +{r['created_after_s']}s {r['job']} [{r['trigger']}] {r['status']} "
            f"partitions={r['partition'] or '-'} assets={len(r['assets'])} took={r['seconds']}s"
        )
    lines.append("backfills:")
    for b in dev.backfills()[:10]:
        assets = ",".join("/".join(a["path"]) for a in b.get("assetSelection") or [])
        lines.append(
            f"  {b['id']} {b['status']} at={b['timestamp']} n={b['numPartitions']} {assets}"
        )
    for name in (automation_sensor.name, shard_automation.name):
        try:
            ticks = dev.sensor(name)["sensorState"]
            lines.append(f"{name}: {ticks['status']}, last ticks:")
            for t in ticks["ticks"][:12]:
                lines.append(
                    f"  {t['timestamp']} {t['status']} runs={len(t['runIds'])} "
                    f"requested={t['requestedAssetMaterializationCount']}"
                )
        except Exception as exc:  # noqa: BLE001 - a diagnosis must not hide the timeout
            lines.append(f"({name} state unavailable: {exc})")
    for asset in ("deduplicated_images", EXPORT_ASSET):
        try:
            for ev in dev.condition_evaluations(asset, limit=2):
                lines.append(
                    f"{asset} evaluation {ev['evaluationId']} at {ev['timestamp']}: "
                    f"requested {ev['numRequested']}"
                )
                for node in ev["evaluationNodes"]:
                    label = node.get("userLabel") or " ".join(node.get("expandedLabel") or [])
                    lines.append(f"    {node['numTrue']} true: {label[:110]}")
        except Exception as exc:  # noqa: BLE001 - a diagnosis must not hide the timeout
            lines.append(f"({asset} evaluations unavailable: {exc})")
    lines.append(f"server log, last {log_lines} lines:")
    lines.append(dev.log_tail(log_lines))
    return "\n".join(lines)


def drop(shard: Path, sources: Path) -> float:
    """Move a prepared shard into the source root at once (a rename); returns the time."""
    shutil.move(str(shard), str(sources / shard.name))
    return time.time()


def last_dedup_run(delta_root: Path) -> dict[str, Any]:
    """The newest row of the ``dedup_runs`` log (mode, reason, images, new images)."""
    from curation_assets.lib.storage import DeltaStore
    from curation_assets.lib.tables import DEDUP_RUNS

    runs = DeltaStore(str(delta_root)).read(DEDUP_RUNS).sort("run_at")
    row = runs.row(-1, named=True)
    return {k: row[k] for k in ("mode", "reason", "images", "new_images", "seconds")}


def bench_daemon(
    images_dir: Path,
    *,
    base_shards: int = 9,
    new_share: float = 0.01,
    limit: int | None = None,
    work_dir: Path | None = None,
    timeout_s: float = 3600,
    interval_s: int | None = None,
    keep: bool = False,
) -> dict[str, Any]:
    """Run the benchmark (see the module docstring); returns a JSON-ready report.

    Args:
        images_dir: Folder searched recursively for images.
        base_shards: Folder shards the base corpus is split into.
        new_share: Share of the images in the new shard.
        limit: Use at most this many images (sorted by path).
        work_dir: Where the home is built (default: a temporary folder).
        timeout_s: Give up a phase after this long.
        interval_s: Sensor interval (``CURATION_SENSOR_INTERVAL_S``; default: the server's).
        keep: Keep the home (Delta tables, Dagster storage, server log) afterwards.
    """
    from curation_assets.defs.automation import sensor_interval_s
    from curation_assets.tools.bench_pipeline import list_images, split_into_shards

    images = list_images(images_dir, limit)
    tmp = Path(tempfile.mkdtemp(prefix="curation-bench-daemon-", dir=work_dir))
    try:
        home = tmp / "home"
        install_instance_config(home)
        hold = tmp / "hold"
        base = split_into_shards(images, hold, base_shards, new_share)
        for name in base:
            drop(hold / name, home / "sources")
        new_shard = hold / "new-000"
        n_new = sum(1 for _ in new_shard.iterdir())
        delta_root = home / "delta"
        t_start = time.time()
        env = {"CURATION_SENSOR_INTERVAL_S": str(interval_s)} if interval_s else None
        with dagster_dev(home, tmp / "dagster-dev.log", env=env) as dev:
            ready = time.time()
            full = wait_for_export(
                dev, delta_root, set(base), Phase("base", t_start), timeout_s=timeout_s
            )
            settle(dev, full, set(base), timeout_s=timeout_s)
            dedup_full = last_dedup_run(delta_root)
            new = Phase("new shard", drop(new_shard, home / "sources"))
            wait_for_export(dev, delta_root, {*base, "new-000"}, new, timeout_s=timeout_s)
            settle(dev, new, {"new-000"}, timeout_s=timeout_s)
            dedup_new = last_dedup_run(delta_root)
        return {
            "images": len(images),
            "base_shards": base_shards,
            "new_shard_images": n_new,
            "new_share": round(n_new / len(images), 4),
            "sensor_interval_seconds": interval_s or sensor_interval_s(),
            "server_ready_seconds": round(ready - t_start, 1),
            "base": full.report(),
            "new_shard": new.report(),
            "latency_ratio": round(new.latency_s / full.latency_s, 4),
            "work_ratio": round(new.work_s / full.work_s, 4),
            "old_partitions_recomputed": sorted(new.partitions() - {"new-000"}),
            "dedup": {"base": dedup_full, "new_shard": dedup_new},
            "home": str(home) if keep else None,
        }
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
