"""The incremental loop driven by the real daemon: shards land, the export follows.

``dagster dev`` (webserver + daemon) runs on loopback in a temporary home holding the demo
corpus (small). Nothing is launched by hand: ``shard_sensor``, ``curation_automation`` (global
assets) and ``shard_automation`` (per-shard follow-ups) do everything. Run it alone with
``pytest -m daemon``. What it checks:

1. **Base.** Two shards in the source root → ``per_shard_job`` runs over them (one run for
   both: they arrive in one tick), then the automation trains the centroids once, assigns each
   shard once and runs dedup → weights → export once; the export holds both shards and the
   dedup was a full run.
2. **New shard.** A third shard moved in → only its own partition is processed (no old shard
   recomputed), and it is assigned to the centroids in ``shard_sensor``'s own run
   (``per_shard_assign_job``), not by a second run; the dedup is incremental (only the new
   images searched), the export holds it.
3. **Downtime, no storm.** Both automation sensors are stopped; two more shards land and are
   ingested and assigned by ``shard_sensor``'s runs; nothing downstream runs. When they are
   started again, what became due during the downtime is requested once: dedup → weights
   → export (one or two runs); per shard only the similarity index and uniqueness of the
   shards that landed (automation's per-shard work, one backfill; they were assigned
   already), nothing for old shards.
"""

import shutil
import time
from collections import Counter
from pathlib import Path

import pytest

from curation_assets.instance import install_instance_config
from curation_assets.lib.tables import N_CLUSTERINGS
from curation_assets.tools.bench_daemon import (
    SIMILARITY,
    Phase,
    diagnosis,
    drop,
    export_shards,
    last_dedup_run,
    runs_since,
    settle,
    wait_for_export,
    wait_idle,
)
from curation_assets.tools.devserver import dagster_dev
from curation_assets_tests.conftest import age, write_images

INTERVAL_S = 10
TIMEOUT_S = 300
"""Per phase (alone here a phase takes 30-90 s): a stuck phase fails with its diagnosis, before
the test's own timeout cuts it off without one."""
AUTOMATION = ("curation_automation", "shard_automation")


def materialized_once(phase: Phase) -> Counter:
    """How often each (asset, partition) was in a run of the phase (must be 1 each)."""
    counts: Counter = Counter()
    for r in phase.runs:
        for asset in r["assets"]:
            for partition in r["partitions"] or [""]:
                counts[(asset, partition)] += 1
    repeated = {k: n for k, n in counts.items() if n > 1}
    assert not repeated, f"{phase.name}: materialized more than once: {repeated}"
    return counts


def global_assets(phase: Phase) -> set[str]:
    return {a for r in phase.runs if not r["partitions"] for a in r["assets"]}


@pytest.mark.slow
@pytest.mark.daemon
@pytest.mark.timeout(5 * TIMEOUT_S)
def test_daemon_keeps_the_export_current(tmp_path: Path) -> None:
    from curation_assets.tools.demo import build_demo_corpus

    home = tmp_path / "home"
    install_instance_config(home)
    sources = home / "sources"
    corpus = build_demo_corpus(sources, n_base=40)
    first, second, third, fourth = corpus.shards
    hold = tmp_path / "hold"
    hold.mkdir()
    for name in (third, fourth):
        shutil.move(str(sources / name), str(hold / name))
    write_images(hold / "shard-extra", 12, start=5000)
    for entry in [*sources.iterdir(), *hold.iterdir()]:
        age(entry)  # complete shards: the sensor need not wait for its quiet period
    delta = home / "delta"

    t0 = time.time()
    env = {"CURATION_SENSOR_INTERVAL_S": str(INTERVAL_S)}
    with dagster_dev(home, tmp_path / "dagster-dev.log", env=env) as dev:
        # 1. base: everything from the sensors and the automation alone
        base = wait_for_export(dev, delta, {first, second}, Phase("base", t0), timeout_s=TIMEOUT_S)
        # shard_automation's own follow-ups may trail the export: they belong to this phase
        settle(dev, base, {first, second}, timeout_s=TIMEOUT_S)
        counts = materialized_once(base)
        shard_runs = [r for r in base.runs if r["job"] == "per_shard_job"]
        assert sorted(p for r in shard_runs for p in r["partitions"]) == sorted([first, second])
        assert {r["trigger"] for r in shard_runs} == {"shard_sensor"}
        for c in range(N_CLUSTERINGS):
            assert counts[(f"cluster_centroids_{c}", "")] == 1
            for shard in (first, second):
                assert counts[(f"cluster_assignments_{c}", shard)] == 1
        assert {"deduplicated_images", "sample_weights", "curated_dataset"} <= global_assets(base)
        assert last_dedup_run(delta)["mode"] == "full"

        # 2. a new shard: only its partition, incremental dedup
        new = Phase("new shard", drop(hold / third, sources))
        wait_for_export(dev, delta, {first, second, third}, new, timeout_s=TIMEOUT_S)
        settle(dev, new, {third}, timeout_s=TIMEOUT_S)
        counts = materialized_once(new)
        assert new.partitions() == {third}, new.runs
        assigning = [r for r in new.runs if "cluster_assignments_0" in r["assets"]]
        assert [(r["job"], r["trigger"]) for r in assigning] == [
            ("per_shard_assign_job", "shard_sensor")
        ], new.runs
        assert counts[("cluster_assignments_0", third)] == 1
        assert not any(a.startswith("cluster_centroids") for a in global_assets(new))
        assert {"deduplicated_images", "curated_dataset"} <= global_assets(new)
        dedup = last_dedup_run(delta)
        assert dedup["mode"] == "incremental", dedup
        assert 0 < dedup["new_images"] < dedup["images"]

        # 3. downtime: automation stopped, two shards land and are ingested, nothing follows
        for sensor in AUTOMATION:
            dev.stop_sensor(sensor)
        # what a tick in flight requested before the stop finishes before the downtime begins
        wait_idle(dev, new.started, "stopping the automation", timeout_s=TIMEOUT_S)
        stopped = time.time()
        for name in (fourth, "shard-extra"):
            drop(hold / name, sources)
        deadline = time.time() + TIMEOUT_S
        while True:
            runs = runs_since(dev, stopped)
            done = {p for r in runs if r["status"] == "SUCCESS" for p in r["partitions"]}
            assert not [r for r in runs if r["status"] == "FAILURE"], runs
            if {fourth, "shard-extra"} <= done:
                break
            assert time.time() < deadline, f"shard runs not done\n{diagnosis(dev, stopped)}"
            time.sleep(2)
        time.sleep(3 * INTERVAL_S)  # the automation sensors would have ticked by now
        runs = runs_since(dev, stopped)
        assert {r["job"] for r in runs} == {"per_shard_assign_job"}, runs
        assert {fourth, "shard-extra"}.isdisjoint(export_shards(delta))

        # ... started again: what became due is requested once, not one run per missed tick
        backfills_before = {b["id"] for b in dev.backfills()}
        restart = Phase("restart", time.time())
        for sensor in AUTOMATION:
            dev.start_sensor(sensor)
        everything = {first, second, third, fourth, "shard-extra"}
        wait_for_export(dev, delta, everything, restart, timeout_s=TIMEOUT_S)
        settle(dev, restart, {fourth, "shard-extra"}, timeout_s=TIMEOUT_S)
        counts = materialized_once(restart)
        # per shard only what shard_automation (not shard_sensor's runs) owns: the similarity
        # index and uniqueness of the two shards that landed during the downtime, one backfill
        per_shard = [r for r in restart.runs if r["partitions"]]
        assert {a for r in per_shard for a in r["assets"]} <= SIMILARITY, restart.runs
        assert restart.partitions() <= {fourth, "shard-extra"}, restart.runs
        for c in range(N_CLUSTERINGS):
            assert counts[(f"cluster_assignments_{c}", fourth)] == 0
            assert counts[(f"cluster_centroids_{c}", "")] == 0
        global_runs = [r for r in restart.runs if not r["partitions"]]
        # dedup → weights → export, each once (materialized_once); since the shards were
        # assigned during the downtime, the dedup is due at the first tick after the restart
        # and was seen to run apart from weights → export (two runs, not one)
        assert 1 <= len(global_runs) <= 2, global_runs
        new_backfills = [b for b in dev.backfills() if b["id"] not in backfills_before]
        assert len(new_backfills) <= 1 and all(b["numPartitions"] == 2 for b in new_backfills)
        assert last_dedup_run(delta)["mode"] == "incremental"
