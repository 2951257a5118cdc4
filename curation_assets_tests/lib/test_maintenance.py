"""Vacuum: old files go, the versions the stages' commits record stay, recovery still works."""

import json
import os
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from deltalake import DeltaTable

from curation_assets.lib.commits import last_commit
from curation_assets.lib.dedup import run_dedup
from curation_assets.lib.dedup.io import DEDUP_STAGE
from curation_assets.lib.maintenance import committed_versions, vacuum
from curation_assets.lib.settings import resolve_paths
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import (
    DEDUP_MEMBERS,
    DEDUPLICATED_IMAGES,
    DUPLICATE_PAIRS,
    STAGE_COMMITS,
    TABLES,
)
from curation_assets_tests.lib.dedup.helpers import (
    add_shard,
    dedup_tables,
    run_and_write,
    vectors,
    write_centroids,
)
from curation_assets_tests.test_cli import curation


def _parquet(store: DeltaStore) -> set[Path]:
    return set(Path(store.root_uri).rglob("*.parquet"))


def _twins(tmp_path: Path) -> list[DeltaStore]:
    """Two stores with the same history: two full dedup runs of shard a (the first replaced)."""
    stores = [DeltaStore(str(tmp_path / name / "delta")) for name in ("vacuumed", "kept")]
    for s in stores:
        write_centroids(s)
        add_shard(s, "a", vectors(300, 6, seed=1))
        run_and_write(s)
        run_and_write(s, force_full=True)
    return stores


def _readable(store: DeltaStore) -> None:
    for name in TABLES:
        if store.exists(name):
            store.scan(TABLES[name]).collect()


def test_vacuum_deletes_replaced_files_keeps_committed_versions_and_runs_go_on(tmp_path):
    vacuumed, kept = _twins(tmp_path)
    before = _parquet(vacuumed)
    listed = vacuum(vacuumed, retention_hours=0)  # a dry run by default
    assert sum(v.files for v in listed) > 0 and _parquet(vacuumed) == before
    assert all(v.bytes is not None and v.bytes > 0 for v in listed if v.files)
    commit = last_commit(vacuumed, DEDUP_STAGE)
    assert commit is not None
    done = vacuum(vacuumed, retention_hours=0, dry_run=False)
    assert [(v.table, v.files) for v in done] == [(v.table, v.files) for v in listed]
    after = _parquet(vacuumed)
    assert after < before and len(before) - len(after) == sum(v.files for v in done)
    _readable(vacuumed)
    # what the stage's commit records survives (a crashed run reads it back) ...
    for table, version in commit.outputs.items():
        assert version in committed_versions(vacuumed)[table]
        vacuumed.scan(TABLES[table], version=version).collect()
    # ... the layout of the first full run, which the second replaced, does not
    runs = vacuumed.read(STAGE_COMMITS).filter(pl.col("stage") == DEDUP_STAGE).sort("committed_at")
    first = json.loads(runs["outputs"][0])[DEDUP_MEMBERS.name]
    assert first not in committed_versions(vacuumed)[DEDUP_MEMBERS.name]
    with pytest.raises(Exception, match=r"(?i)not found|no such file|does not exist"):
        vacuumed.scan(DEDUP_MEMBERS, version=first).collect()
    # the next runs behave as on the twin that was never vacuumed
    for s in (vacuumed, kept):
        add_shard(s, "b", vectors(200, 4, seed=2))
        run_and_write(s)
    for name, df in dedup_tables(vacuumed).items():
        assert df.equals(dedup_tables(kept)[name]), name


def test_a_vacuum_is_not_new_data_to_any_stage(tmp_path):
    """A vacuum commits twice to every table it cleans: no stage may take that for a change.

    Without :func:`~curation_assets.lib.deltalog.data_version` the next dedup saw every output
    as written by an unfinished run (and every input as new).
    """
    vacuumed, _ = _twins(tmp_path)
    names = [name for name in TABLES if vacuumed.exists(name)]
    versions = {name: vacuumed.version(name) for name in names}
    raw = DeltaTable(vacuumed.uri(DEDUP_MEMBERS.name)).version()
    done = vacuum(vacuumed, retention_hours=0, dry_run=False)
    assert any(v.files for v in done)
    assert DeltaTable(vacuumed.uri(DEDUP_MEMBERS.name)).version() > raw  # it did commit
    assert {name: vacuumed.version(name) for name in names} == versions
    since = versions[DEDUPLICATED_IMAGES.name]
    assert since is not None
    assert vacuumed.changed_shards(DEDUPLICATED_IMAGES.name, since) == set()
    again = run_and_write(vacuumed)
    assert again.plan.mode == "current", again.plan.reason
    add_shard(vacuumed, "b", vectors(200, 4, seed=2))
    update = run_and_write(vacuumed)
    assert update.plan.mode == "incremental", update.plan.reason
    assert "recovering" not in update.plan.reason


def test_a_torn_stage_recovers_after_a_vacuum(tmp_path):
    """A stage killed between an output and its commit: the committed version stays.

    The next run reads the graph as of it, and converges to the twin's tables.
    """
    vacuumed, kept = _twins(tmp_path)
    for s in (vacuumed, kept):
        add_shard(s, "b", vectors(200, 4, seed=2))
        torn = run_dedup(s, tau=0.95, policy=None)
        s.replace_table(DUPLICATE_PAIRS, torn.pairs.head(3))  # killed before the commit
    vacuum(vacuumed, retention_hours=0, dry_run=False)
    commit = last_commit(vacuumed, DEDUP_STAGE)
    assert commit is not None
    committed = vacuumed.scan(DUPLICATE_PAIRS, version=commit.outputs[DUPLICATE_PAIRS.name])
    assert committed.collect().height > 3  # the committed graph, not the torn one
    for s in (vacuumed, kept):
        run_and_write(s)
    for name, df in dedup_tables(vacuumed).items():
        assert df.equals(dedup_tables(kept)[name]), name


def test_orphans_and_recent_files_stay_within_the_retention(tmp_path):
    store = _twins(tmp_path)[0]
    orphan = Path(store.uri(DUPLICATE_PAIRS.name)) / "part-killed-writer.parquet"
    pl.DataFrame({"x": [1]}).write_parquet(orphan)
    assert not any(v.files for v in vacuum(store, retention_hours=1))  # all younger than 1 h
    old = time.time() - 2 * 3600
    os.utime(orphan, (old, old))
    listed = {v.table: v.files for v in vacuum(store, retention_hours=1, dry_run=False)}
    assert listed[DUPLICATE_PAIRS.name] == 1 and not orphan.exists()
    assert sum(listed.values()) == 1  # the replaced files are younger than an hour


def test_unknown_tables_and_negative_retention_are_refused(tmp_path):
    store = DeltaStore(str(tmp_path / "delta"))
    with pytest.raises(ValueError, match="unknown tables"):
        vacuum(store, tables=["no_such_table"])
    with pytest.raises(ValueError, match="retention_hours"):
        vacuum(store, retention_hours=-1)


def test_the_command_lists_then_deletes(tmp_path):
    home = tmp_path / "home"
    store = DeltaStore(resolve_paths(home).delta_root)
    write_centroids(store)
    add_shard(store, "a", vectors(300, 6, seed=1))
    run_and_write(store)
    run_and_write(store, force_full=True)
    before = _parquet(store)
    dry = curation("vacuum", "--retention-hours", "0", "--json", home=home, timeout=120)
    assert dry.returncode == 0, dry.stderr
    listed = json.loads(dry.stdout)
    assert not listed["applied"] and listed["files"] > 0 and listed["bytes"] > 0
    assert _parquet(store) == before
    done = curation("vacuum", "--retention-hours", "0", "--apply", home=home, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"deleted: {listed['files']} files" in done.stdout
    assert len(before) - len(_parquet(store)) == listed["files"]
    bad = curation("vacuum", "--table", "nope", home=home, timeout=120)
    assert bad.returncode == 1 and "unknown tables" in bad.stderr


def test_vacuum_job_reports_what_it_deleted(tmp_path):
    from curation_assets.defs.maintenance import vacuum_job
    from curation_assets.defs.resources import DeltaStorage

    store = _twins(tmp_path)[0]
    listed = sum(v.files for v in vacuum(store, retention_hours=0))
    result = vacuum_job.execute_in_process(
        run_config={"ops": {"vacuum_tables": {"config": {"retention_hours": 0}}}},
        resources={"delta": DeltaStorage(root_uri=store.root_uri)},
    )
    assert result.success
    [materialization] = [
        e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_OUTPUT
    ]
    metadata = materialization.step_output_data.metadata
    assert metadata["files"].value == listed > 0 and not metadata["dry_run"].value
    assert "dedup_members" in metadata["per_table"].value
    assert sum(v.files for v in vacuum(store, retention_hours=0)) == 0
