"""``curation bench partitions``: one Dagster partition per shard at 10^5 shards.

For each instance storage (PostgreSQL: a throwaway server, :mod:`curation_assets.tools.
pgserver`, or ``--pg-url`` naming an empty, dedicated database; sqlite: the embedded default),
on a fresh instance with the project's ``dagster.yaml`` and a source root of N synthetic
shards (empty ``.tar`` files aged past ``min_age_s``: ``inspect_shard`` calls a regular tar file
ready without reading it), the benchmark times:

* ``register_one_call_s``: ``add_dynamic_partitions`` of the N keys in one call (what
  ``curation run`` does for its new shards), or the error it raises;
  ``register_chunks_s``: the same N keys in calls of 100 (what ``shard_sensor`` does, one call
  per tick), on a second partitions definition;
* ``get_dynamic_partitions_s`` / ``has_dynamic_partition_s``: reading all N keys; one lookup;
* ``tick_*``: one evaluation of ``shard_sensor`` (``dg.build_sensor_context`` on the
  instance, the cursor carried as the daemon does) with N shards registered: the first tick
  (no cursor: a full reconciliation), an idle tick, a tick with ``new`` new shards (and the
  registration of its partition request, as the daemon applies it);
  ``tick_full_listing_s``: the previous sensor's work for comparison (``discover_shards`` of
  the whole root + ``get_dynamic_partitions`` + set difference);
* ``graphql_*``: the asset page's partition bar: the webserver's ``PartitionHealthQuery``
  (the query Dagster's UI sends, copied below) for ``image_embeddings``, POSTed to a
  ``dagster-webserver`` on 127.0.0.1 serving this instance, after ``materialized`` of its
  partitions were given a materialization (runless events written in batches of 1,000); the
  first request (cold: status cache computed) and the median of ``repeats`` more;
* ``automation_eval_s`` (``--automation``): one ``dg.evaluate_automation_conditions`` of the
  project's definitions on the instance, the work of one ``curation_automation`` tick (no
  cursor), and ``automation_eval_next_tick_s`` the next one (its cursor carried);
  ``shard_automation_first_tick_s`` / ``_idle_tick_s``: ``shard_automation``'s first tick and
  an idle one (the other half of the automation's work per tick).

Everything is wall time on this machine; medians where repeated.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import dagster as dg

from curation_assets.defs.partitions import SHARDS_PARTITION
from curation_assets.instance import PG_URL_ENV, install_instance_config
from curation_assets.tools.devserver import REPO, stop_process_group

PARTITION_HEALTH_QUERY = """
query PartitionHealthQuery($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    ... on AssetNode {
      id
      partitionKeysByDimension { name type partitionKeys }
      assetPartitionStatuses {
        ... on TimePartitionStatuses { ranges { status startTime endTime startKey endKey } }
        ... on DefaultPartitionStatuses {
          materializedPartitions materializingPartitions failedPartitions
        }
        ... on MultiPartitionStatuses { primaryDimensionName }
      }
    }
  }
}
"""
"""The UI's ``PartitionHealthQuery`` (dagster-webserver 1.13's bundle; the multi-partition
branch trimmed: the shard partitions are one dimension)."""

ASSET = "image_embeddings"


def make_source(root: Path, n: int, start: int = 0) -> list[str]:
    """``n`` empty, aged ``t-NNNNNNN.tar`` shards under ``root``; returns their names."""
    root.mkdir(parents=True, exist_ok=True)
    past = time.time() - 3600
    names = [f"t-{i:07d}.tar" for i in range(start, start + n)]
    for name in names:
        path = root / name
        path.write_bytes(b"")
        os.utime(path, (past, past))
    return names


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of one call."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def median_s(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``repeats`` calls."""
    return round(statistics.median(timed(fn)[0] for _ in range(repeats)), 4)


class Ticker:
    """``shard_sensor`` evaluated as the daemon does: cursor carried, partitions registered."""

    def __init__(self, instance: dg.DagsterInstance, root: Path) -> None:
        self.instance, self.root, self.cursor = instance, root, None

    def __call__(self) -> tuple[float, float, int]:
        """(tick seconds, seconds registering its partitions, new shards)."""
        from curation_assets.defs.resources import ShardSource
        from curation_assets.defs.sensors import shard_sensor

        ctx = dg.build_sensor_context(
            instance=self.instance,
            cursor=self.cursor,
            resources={"shard_source": ShardSource(root=str(self.root), min_age_s=60.0)},
        )
        seconds, result = timed(lambda: shard_sensor(ctx))
        assert isinstance(result, dg.SensorResult)
        self.cursor = result.cursor
        new = 0
        t0 = time.perf_counter()
        for req in result.dynamic_partitions_requests or []:
            keys = list(req.partition_keys or [])
            new += len(keys)
            self.instance.add_dynamic_partitions(str(req.partitions_def_name), keys)
        return round(seconds, 4), round(time.perf_counter() - t0, 4), new


def full_listing_tick(instance: dg.DagsterInstance, root: Path) -> int:
    """The previous sensor's work: inspect every entry, read every registered key."""
    from curation_assets.lib.shards import discover_shards

    found = discover_shards(root, min_age_s=60.0)
    known = set(instance.get_dynamic_partitions(SHARDS_PARTITION))
    return sum(1 for s in found if s.ready and s.key not in known)


def store_materializations(instance: dg.DagsterInstance, keys: list[str], batch: int = 1000):
    """One runless materialization of :data:`ASSET` per key, written in batches."""
    from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData
    from dagster._core.events.log import EventLogEntry
    from dagster._core.instance.utils import RUNLESS_JOB_NAME, RUNLESS_RUN_ID

    def entry(key: str) -> EventLogEntry:
        mat = dg.AssetMaterialization(asset_key=ASSET, partition=key)
        event = DagsterEvent(
            event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value,
            event_specific_data=StepMaterializationData(mat),
            job_name=RUNLESS_JOB_NAME,
        )
        return EventLogEntry(
            error_info=None,
            level=logging.INFO,
            user_message="",
            run_id=RUNLESS_RUN_ID,
            timestamp=time.time(),
            job_name=RUNLESS_JOB_NAME,
            dagster_event=event,
        )

    for i in range(0, len(keys), batch):
        instance.event_log_storage.store_event_batch([entry(k) for k in keys[i : i + batch]])


def _post(port: int, query: str, variables: dict) -> bytes:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=600) as resp:
        return resp.read()


@contextmanager
def webserver(home: Path, env: dict[str, str | None], log: Path) -> Iterator[int]:
    """``dagster-webserver`` (no daemon) on 127.0.0.1 serving ``home``'s instance."""
    from curation_assets.tools.devserver import free_port

    port = free_port()
    exe = Path(sys.executable).with_name("dagster-webserver")
    cmd = [str(exe), "-h", "127.0.0.1", "-p", str(port), "-w", str(REPO / "workspace.yaml")]
    run_env = {**os.environ, "CURATION_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    run_env.update({k: v for k, v in env.items() if v is not None})
    for unset in (k for k, v in env.items() if v is None):
        run_env.pop(unset, None)
    for inherited in ("CURATION_SOURCE_ROOT", "CURATION_DELTA_ROOT"):
        run_env.pop(inherited, None)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=run_env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                body = json.loads(_post(port, "{ assetNodes { id } }", {}))
                if body.get("data", {}).get("assetNodes"):
                    break
            except (OSError, ValueError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"dagster-webserver did not serve the assets:\n{tail}")
            time.sleep(1)
        yield port
    finally:
        stop_process_group(proc)


def partition_health(port: int, repeats: int) -> dict[str, Any]:
    """The UI's partition-bar query for :data:`ASSET`: cold, then the median of ``repeats``."""
    variables = {"assetKey": {"path": [ASSET]}}
    cold, body = timed(lambda: _post(port, PARTITION_HEALTH_QUERY, variables))
    data = json.loads(body)
    if data.get("errors"):
        raise RuntimeError(f"GraphQL errors: {data['errors']}")
    node = data["data"]["assetNodeOrError"]
    keys = node["partitionKeysByDimension"][0]["partitionKeys"]
    status = node["assetPartitionStatuses"]
    warm = median_s(lambda: _post(port, PARTITION_HEALTH_QUERY, variables), repeats)
    return {
        "graphql_first_s": round(cold, 4),
        "graphql_warm_median_s": warm,
        "graphql_response_mb": round(len(body) / 1e6, 2),
        "graphql_partition_keys": len(keys),
        "graphql_materialized": len(status.get("materializedPartitions", [])),
    }


def bench_backend(
    home: Path,
    source: Path,
    keys: list[str],
    *,
    env: dict[str, str | None],
    new: int,
    repeats: int,
    materialized: int,
    graphql: bool,
    automation: bool = False,
) -> dict[str, Any]:
    """Every figure of the module docstring on one fresh instance under ``home``."""
    out: dict[str, Any] = {}
    with ExitStack() as stack:
        saved = {k: os.environ.get(k) for k in env}
        for k, v in env.items():
            _restore(k, v)
        stack.callback(lambda: [_restore(k, v) for k, v in saved.items()])
        dagster_home = install_instance_config(home)
        instance = stack.enter_context(dg.DagsterInstance.from_config(str(dagster_home)))
        out["storage"] = type(instance.run_storage).__name__
        try:
            seconds, _ = timed(lambda: instance.add_dynamic_partitions(SHARDS_PARTITION, keys))
            out["register_one_call_s"] = round(seconds, 3)
        except Exception as exc:
            out["register_one_call_s"] = None
            out["register_one_call_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            for i in range(0, len(keys), 1000):  # so that the rest can be measured
                instance.add_dynamic_partitions(SHARDS_PARTITION, keys[i : i + 1000])
        t0 = time.perf_counter()
        for i in range(0, len(keys), 100):
            instance.add_dynamic_partitions("bench_chunks_of_100", keys[i : i + 100])
        out["register_chunks_s"] = round(time.perf_counter() - t0, 3)
        out["registered"] = len(instance.get_dynamic_partitions(SHARDS_PARTITION))
        out["get_dynamic_partitions_s"] = median_s(
            lambda: instance.get_dynamic_partitions(SHARDS_PARTITION), repeats
        )
        out["has_dynamic_partition_s"] = median_s(
            lambda: instance.has_dynamic_partition(SHARDS_PARTITION, keys[len(keys) // 2]),
            repeats,
        )
        tick = Ticker(instance, source)
        out["tick_first_full_s"], _, found = tick()
        assert found == 0, f"the first tick registered {found} shards that were registered"
        out["tick_idle_median_s"] = round(statistics.median(tick()[0] for _ in range(repeats)), 4)
        make_source(source, new, start=len(keys))
        out["tick_new_s"], out["tick_new_register_s"], out["tick_new_shards"] = tick()
        out["tick_full_listing_s"] = median_s(lambda: full_listing_tick(instance, source), 1)
        if graphql:
            marked = (keys + [f"t-{i:07d}.tar" for i in range(len(keys), len(keys) + new)])[
                :materialized
            ]
            seconds, _ = timed(lambda: store_materializations(instance, marked))
            out["materializations_written"] = len(marked)
            out["materializations_write_s"] = round(seconds, 2)
            with webserver(home, env, home / "webserver.log") as port:
                out.update(partition_health(port, repeats))
        if automation:
            out.update(automation_evaluation(home, instance))
    return out


def automation_evaluation(home: Path, instance: dg.DagsterInstance) -> dict[str, Any]:
    """One evaluation of every automation condition of the project (the daemon's work per tick).

    ``dg.evaluate_automation_conditions`` in process, on the project's definitions for
    ``home``: the evaluator the automation sensor runs, without the daemon around it.
    """
    from curation_assets.definitions import build_defs
    from curation_assets.defs.shard_automation import evaluate

    saved = os.environ.get("CURATION_HOME")
    os.environ["CURATION_HOME"] = str(home)
    try:
        defs = build_defs(str(home))
        seconds, result = timed(lambda: dg.evaluate_automation_conditions(defs, instance))
        again, _ = timed(
            lambda: dg.evaluate_automation_conditions(defs, instance, cursor=result.cursor)
        )
    finally:
        _restore("CURATION_HOME", saved)
    first, (_, cursor, _) = timed(lambda: evaluate(instance, None))
    idle, (request, _, _) = timed(lambda: evaluate(instance, cursor))
    return {
        "automation_eval_s": round(seconds, 2),
        "automation_eval_next_tick_s": round(again, 2),
        "automation_requested": result.total_requested,
        "shard_automation_first_tick_s": round(first, 4),
        "shard_automation_idle_tick_s": round(idle, 4),
        "shard_automation_requested": request is not None,
    }


def _restore(key: str, value: str | None) -> None:
    """Set ``key`` in the environment to ``value`` (None: unset it)."""
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value


def bench_partitions(
    n: int = 100_000,
    *,
    backends: tuple[str, ...] = ("postgres", "sqlite"),
    pg_url: str | None = None,
    new: int = 100,
    repeats: int = 3,
    materialized: int | None = None,
    graphql: bool = True,
    automation: bool = False,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """Run :func:`bench_backend` for each backend; returns the report (see module docstring).

    Args:
        n: Shards (source entries and registered partitions).
        backends: ``postgres`` and/or ``sqlite``.
        pg_url: An empty, dedicated PostgreSQL database (default: a throwaway server).
        new: Shards added for the tick that finds new ones.
        repeats: Repeats of the cheap measurements (medians).
        materialized: Partitions of ``image_embeddings`` given a materialization before the
            GraphQL query (default: all).
        graphql: Whether to start a webserver and time the partition-health query.
        automation: Whether to time the automation sensors' work per tick.
        workdir: Where homes and the source root go (default: a new temporary folder).
    """
    from curation_assets.tools import pgserver

    work = workdir or Path(tempfile.mkdtemp(prefix="bench-partitions-"))
    source = work / "sources"
    seconds, keys = timed(lambda: make_source(source, n))
    report: dict[str, Any] = {
        "n": n,
        "new_per_tick": new,
        "repeats": repeats,
        "source_build_s": round(seconds, 1),
        "workdir": str(work),
    }
    for backend in backends:
        # each backend starts from the same n-entry root (its tick adds `new` more)
        for extra in sorted(source.iterdir())[n:]:
            extra.unlink()
        with ExitStack() as stack:
            if backend == "postgres":
                url = pg_url
                if url is None:
                    why = pgserver.unavailable()
                    if why:
                        report[backend] = {"skipped": why}
                        continue
                    url = stack.enter_context(pgserver.throwaway_postgres())
                env: dict[str, str | None] = {PG_URL_ENV: url}
            else:
                env = {PG_URL_ENV: None}  # the embedded default, whatever this shell says
            t0 = time.perf_counter()
            report[backend] = bench_backend(
                work / backend,
                source,
                keys,
                env=env,
                new=new,
                repeats=repeats,
                materialized=n + new if materialized is None else materialized,
                graphql=graphql,
                automation=automation,
            )
            report[backend]["total_s"] = round(time.perf_counter() - t0, 1)
    return report


def cmd_bench_partitions(args: Any) -> int:
    """`curation bench partitions`: print the report as JSON."""
    report = bench_partitions(
        args.n,
        backends=tuple(args.backends),
        pg_url=os.environ.get(PG_URL_ENV) if args.use_env_pg else None,
        new=args.new,
        repeats=args.repeats,
        materialized=args.materialized,
        graphql=not args.no_graphql,
        automation=args.automation,
        workdir=Path(args.workdir) if args.workdir else None,
    )
    print(json.dumps(report, indent=2))  # noqa: T201 (the command's output)
    return 0


def add_bench_partitions_parser(bench_sub: Any) -> None:
    """Add ``partitions`` to the ``curation bench`` subcommands."""
    bp = bench_sub.add_parser(
        "partitions",
        help="one partition per shard at N shards: registration, sensor tick, UI query",
    )
    bp.add_argument("--n", type=int, default=100_000, help="shards (default 100000)")
    bp.add_argument(
        "--backends", nargs="+", choices=["postgres", "sqlite"], default=["postgres", "sqlite"]
    )
    bp.add_argument(
        "--use-env-pg",
        action="store_true",
        help=f"use ${PG_URL_ENV} (an empty, dedicated database) instead of a throwaway server",
    )
    bp.add_argument("--new", type=int, default=100, help="new shards for the busy tick")
    bp.add_argument("--repeats", type=int, default=3)
    bp.add_argument("--materialized", type=int, help="materialized partitions (default all)")
    bp.add_argument("--no-graphql", action="store_true", help="skip the webserver query")
    bp.add_argument(
        "--automation",
        action="store_true",
        help="also time the automation sensors' ticks (curation_automation, shard_automation)",
    )
    bp.add_argument("--workdir", help="work folder (default: a new temporary folder, kept)")
    bp.set_defaults(func=cmd_bench_partitions)
