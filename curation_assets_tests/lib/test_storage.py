import errno
import json
import threading
import time

import polars as pl
import pytest
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError
from deltalake.table import TableOptimizer

from curation_assets.lib import commits, deltalog, storage
from curation_assets.lib.commits import last_commit, record_commit
from curation_assets.lib.compaction import compact, live_files
from curation_assets.lib.deltalog import TABLE_PROPERTIES, data_version, shards_committed_since
from curation_assets.lib.deltawrite import StorageUnwritableError, sql_literal
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import QUARANTINE, STAGE_COMMITS, Column, TableSpec

SPEC = TableSpec(
    name="t",
    description="test table",
    columns=(
        Column("id", pl.Int64, "id"),
        Column("shard", pl.String, "shard"),
        Column("v", pl.Float32, "value"),
    ),
)


def frame(shard: str, ids: list[int], v: float = 0.0) -> pl.DataFrame:
    return pl.DataFrame({"id": ids, "shard": shard, "v": v})


def test_replacing_a_shard_touches_only_that_shard(tmp_path):
    """Re-materializing shard a replaces exactly a's rows; b keeps its rows and version data."""
    store = DeltaStore(str(tmp_path))
    store.replace_shard(SPEC, "a", frame("a", [1, 2, 3]))
    store.replace_shard(SPEC, "b", frame("b", [10, 11]))
    b_before = store.read(SPEC, shards=["b"]).sort("id")
    store.replace_shard(SPEC, "a", frame("a", [1, 2], v=1.0))
    store.replace_shard(SPEC, "a", frame("a", [1, 2], v=2.0))
    df = store.read(SPEC).sort("shard", "id")
    assert df.filter(pl.col("shard") == "a").to_dicts() == [
        {"id": 1, "shard": "a", "v": 2.0},
        {"id": 2, "shard": "a", "v": 2.0},
    ]
    assert store.read(SPEC, shards=["b"]).sort("id").equals(b_before)
    assert df.height == 4  # no duplicated rows
    # v0 creates the table empty (see DeltaStore._create), then one version per write
    assert store.version(SPEC.name) == 4


def test_empty_replacement_deletes_the_shard_only(tmp_path):
    store = DeltaStore(str(tmp_path))
    store.replace_shard(SPEC, "a", frame("a", [1]))
    store.replace_shard(SPEC, "b", frame("b", [2]))
    store.replace_shard(SPEC, "a", SPEC.empty())
    assert store.read(SPEC)["shard"].to_list() == ["b"]


def test_streamed_frames_land_in_one_transaction(tmp_path):
    store = DeltaStore(str(tmp_path))
    n = store.replace_shard(SPEC, "a", (frame("a", [i]) for i in range(5)))
    assert n == 5
    assert store.read(SPEC).height == 5
    assert store.version(SPEC.name) == 1  # v0: the empty table; v1: every frame, one transaction


def test_rows_of_another_shard_are_refused_and_nothing_is_written(tmp_path):
    store = DeltaStore(str(tmp_path))
    store.replace_shard(SPEC, "a", frame("a", [1]))
    with pytest.raises(ValueError, match="only contain that shard's rows"):
        store.replace_shard(SPEC, "a", frame("b", [2]))
    assert store.read(SPEC).to_dicts() == [{"id": 1, "shard": "a", "v": 0.0}]


def test_where_narrows_the_replacement_within_a_shard(tmp_path):
    """Two stages share the quarantine table without erasing each other's rows."""
    store = DeltaStore(str(tmp_path))
    row = {c: None for c in QUARANTINE.column_names} | {"shard": "a", "source_uri": "x"}
    ingest = pl.DataFrame([row | {"stage": "ingest"}], schema=QUARANTINE.schema)
    embed = pl.DataFrame([row | {"stage": "embed"}], schema=QUARANTINE.schema)
    store.replace_shard(QUARANTINE, "a", ingest, where={"stage": "ingest"})
    store.replace_shard(QUARANTINE, "a", embed, where={"stage": "embed"})
    store.replace_shard(QUARANTINE, "a", ingest, where={"stage": "ingest"})
    assert sorted(store.read(QUARANTINE)["stage"]) == ["embed", "ingest"]


def test_missing_table_reads_as_empty_with_schema(tmp_path):
    store = DeltaStore(str(tmp_path))
    assert not store.exists("t")
    assert store.read(SPEC).schema == SPEC.schema


def test_unsafe_partition_values_are_rejected():
    assert sql_literal("shard-001.tar") == "'shard-001.tar'"
    with pytest.raises(ValueError, match="not a safe partition value"):
        sql_literal("a' OR '1'='1")


def test_object_store_uris_are_joined_not_resolved():
    store = DeltaStore("s3://bucket/prefix/", {"AWS_REGION": "us-east-1"})
    assert store.uri("raw_images") == "s3://bucket/prefix/raw_images"
    assert not store.is_local


def test_a_full_or_read_only_root_is_a_clear_storage_error(tmp_path, monkeypatch):
    """A full disk is a StorageUnwritableError naming the table and what to do.

    deltalake reports it as "Failed to parse parquet: ... (os error 28)". Nothing is committed.
    """
    store = DeltaStore(str(tmp_path))
    store.replace_shard(SPEC, "a", frame("a", [1]))

    def full(*args, **kwargs):
        raise DeltaError(
            "Failed to parse parquet: External: Generic LocalFileSystem error: Unable to copy "
            "data to file: No space left on device (os error 28)"
        )

    monkeypatch.setattr(storage, "write_deltalake", full)
    with pytest.raises(StorageUnwritableError) as err:
        store.replace_shard(SPEC, "a", frame("a", [2]))
    assert err.value.errno == errno.ENOSPC
    assert f"Delta table 't' at {tmp_path / 't'}" in str(err.value)
    assert "free space" in str(err.value)
    monkeypatch.undo()
    assert store.read(SPEC)["id"].to_list() == [1]

    def other(*args, **kwargs):
        raise DeltaError("Schema error: something else")

    monkeypatch.setattr(storage, "write_deltalake", other)
    with pytest.raises(DeltaError, match="Schema error"):
        store.replace_shard(SPEC, "a", frame("a", [2]))


def test_a_table_whose_creation_failed_is_absent_not_broken(tmp_path, monkeypatch):
    """A full disk while commit 0 is written leaves no empty ``_delta_log`` behind."""
    store = DeltaStore(str(tmp_path))
    real_create = storage.DeltaTable.create

    def full(uri, **kwargs):
        log = tmp_path / "t" / "_delta_log"
        log.mkdir(parents=True)
        (log / "_commit_0.json.tmp").write_text("{")  # a staged commit, cut short
        raise DeltaError("Generic LocalFileSystem error: No space left on device (os error 28)")

    monkeypatch.setattr(storage.DeltaTable, "create", full)
    with pytest.raises(StorageUnwritableError):
        store.replace_shard(SPEC, "a", frame("a", [1]))
    assert not (tmp_path / "t").exists()
    assert not store.exists("t") and store.read(SPEC).is_empty()
    monkeypatch.setattr(storage.DeltaTable, "create", real_create)
    store.replace_shard(SPEC, "a", frame("a", [1]))
    assert store.read(SPEC)["id"].to_list() == [1]


def test_replace_rows_replaces_many_values_in_one_commit_in_any_partitioning(tmp_path):
    import polars as pl

    from curation_assets.lib.tables import DEDUP_MEMBERS

    store = DeltaStore(str(tmp_path / "delta"))

    def rows(shard: str, n: int, bucket: int = 0) -> pl.DataFrame:
        frame = pl.DataFrame(
            {
                "clustering": [0] * n,
                "bucket": [bucket] * n,
                "image_id": [f"{shard}{i}" for i in range(n)],
            }
        ).with_columns(shard=pl.lit(shard))
        missing = [c for c in DEDUP_MEMBERS.columns if c.name not in frame.columns]
        return frame.with_columns([pl.lit(None).cast(c.dtype).alias(c.name) for c in missing])

    store.replace_rows(
        DEDUP_MEMBERS, "shard", ["a", "b"], pl.concat([rows("a", 2), rows("b", 3, 1)])
    )
    before = store.version(DEDUP_MEMBERS.name)
    store.replace_rows(DEDUP_MEMBERS, "shard", ["b", "c"], rows("c", 1, 1))  # b goes, c comes
    assert store.version(DEDUP_MEMBERS.name) == before + 1
    got = store.read(DEDUP_MEMBERS).group_by("shard").len().sort("shard")
    assert got.rows() == [("a", 2), ("c", 1)]
    with pytest.raises(ValueError, match="outside the replaced ones"):
        store.replace_rows(DEDUP_MEMBERS, "shard", ["a"], rows("z", 1))


def test_changed_shards_reads_the_log_tail_and_falls_back_to_snapshots(tmp_path, monkeypatch):
    """What changed since a version is read from the commits after it, not two snapshots.

    Shard writes name their shards in the commit; a commit that names none (an append) sends
    the comparison back to the snapshots.
    """
    store = DeltaStore(str(tmp_path))
    for shard in ("a", "b", "c"):
        store.replace_shard(SPEC, shard, frame(shard, [1]))
    v = store.version("t")
    store.replace_shard(SPEC, "b", frame("b", [2]))
    store.replace_rows(SPEC, "shard", ["c", "d"], frame("d", [3]))  # c removed, d added
    snapshots = store.shard_files

    def no_snapshots(*args, **kwargs):
        raise AssertionError("read the snapshots")

    monkeypatch.setattr(store, "shard_files", no_snapshots)
    assert store.changed_shards("t", v) == {"b", "c", "d"}
    assert store.changed_shards("t", store.version("t")) == set()
    monkeypatch.setattr(store, "shard_files", snapshots)
    store.append(SPEC, frame("e", [4]))  # an append names no shards: the snapshots decide
    assert store.changed_shards("t", v) == {"b", "c", "d", "e"}
    assert store.changed_shards("t", None) == {"a", "b", "d", "e"}


def test_the_log_tail_is_not_misread_when_a_writer_commits_after_the_snapshot(tmp_path):
    """The deltalake library numbers ``history`` from the snapshot down, reading the newest.

    A snapshot at version V read after another writer committed V+1 took V+1's shards for V's
    (found by the image-id index's race test: a refresh read the wrong shard, and a lookup
    missed an image). The tail is now refused, and the caller compares snapshots.
    """
    store = DeltaStore(str(tmp_path))
    for shard in ("a", "b", "c"):
        store.replace_shard(SPEC, shard, frame(shard, [1]))
    v = store.version("t")
    store.replace_shard(SPEC, "b", frame("b", [2]))
    snapshot = DeltaTable(store.uri("t"))
    assert shards_committed_since(snapshot, v) == {"b"}
    store.replace_shard(SPEC, "z", frame("z", [3]))  # another writer, after the snapshot
    assert shards_committed_since(snapshot, v) is None  # not {"z"}
    assert data_version(snapshot) == v + 2  # the newer snapshot's
    assert store.changed_shards("t", v) == {"b", "z"}


def test_history_is_read_again_when_the_log_moves_meanwhile(tmp_path, monkeypatch):
    store = DeltaStore(str(tmp_path))
    for shard in ("a", "b", "c"):
        store.replace_shard(SPEC, shard, frame(shard, [1]))
    v = store.version("t")
    store.replace_shard(SPEC, "b", frame("b", [2]))
    real = deltalog.snapshot_history
    calls: list[int] = []

    def moved_once(dt, limit):
        calls.append(limit)
        return None if len(calls) == 1 else real(dt, limit)

    monkeypatch.setattr(deltalog, "snapshot_history", moved_once)
    entries = store.history("t", since_version=v)
    assert len(calls) == 2 and [e["version"] for e in entries] == [v + 1]
    assert json.loads(entries[0]["curation.shards"]) == ["b"]
    monkeypatch.setattr(deltalog, "snapshot_history", lambda dt, limit: None)
    with pytest.raises(storage.ConcurrentWriteError, match="kept moving"):
        store.history("t", since_version=v)


def _commit_rows(store: DeltaStore, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        record_commit(store, "dedup", inputs={}, outputs={"v": i}, config={}, summary={})


def test_stage_commits_are_compacted_and_keep_every_row(tmp_path, monkeypatch):
    monkeypatch.setattr(commits, "COMPACT_FILES", 4)
    store = DeltaStore(str(tmp_path))
    _commit_rows(store, 10)
    # one file an append, compacted into one at the 4th: never 4 files after a commit
    assert live_files(store, STAGE_COMMITS.name) < 4
    rows = store.read(STAGE_COMMITS)
    assert sorted(json.loads(o)["v"] for o in rows["outputs"]) == list(range(10))
    last = last_commit(store, "dedup")
    assert last is not None and last.outputs == {"v": 9}
    assert compact(store, STAGE_COMMITS.name, min_files=100) == 0  # below: nothing done


def test_a_compaction_keeps_an_append_made_meanwhile(tmp_path, monkeypatch):
    monkeypatch.setattr(commits, "COMPACT_FILES", 10**6)
    store = DeltaStore(str(tmp_path))
    _commit_rows(store, 5)
    stale = DeltaTable(store.uri(STAGE_COMMITS.name))  # the compaction's snapshot
    _commit_rows(store, 1, start=5)  # another process appends before it commits
    stale.optimize.compact()
    rows = store.read(STAGE_COMMITS)
    assert sorted(json.loads(o)["v"] for o in rows["outputs"]) == list(range(6))


def test_two_compactions_at_once_do_not_duplicate_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(commits, "COMPACT_FILES", 10**6)
    store = DeltaStore(str(tmp_path))
    _commit_rows(store, 6)
    original = TableOptimizer.compact

    def slow(self, *args, **kwargs):  # both processes hold their snapshot while the other commits
        time.sleep(0.5)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TableOptimizer, "compact", slow)
    done: list[int] = []
    threads = [
        threading.Thread(
            target=lambda: done.append(compact(store, STAGE_COMMITS.name, min_files=2))
        )
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(done) == [0, 6]  # the second found the table compacted under the lock
    rows = store.read(STAGE_COMMITS)
    assert sorted(json.loads(o)["v"] for o in rows["outputs"]) == list(range(6))


def test_tables_are_checkpointed_every_ten_commits(tmp_path):
    store = DeltaStore(str(tmp_path))
    for i in range(12):
        store.replace_shard(SPEC, "s", frame("s", [i]))
    assert DeltaTable(store.uri(SPEC.name)).metadata().configuration == TABLE_PROPERTIES
    log = tmp_path / SPEC.name / "_delta_log"
    # deltalake's default would write the first at the 100th commit
    assert [p.name for p in log.glob("*.checkpoint.parquet")] == [f"{9:020d}.checkpoint.parquet"]
    assert store.read(SPEC)["id"].to_list() == [11]


def test_a_failed_compaction_leaves_the_commit_standing(tmp_path, monkeypatch):
    monkeypatch.setattr(commits, "COMPACT_FILES", 2)

    def broken(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(TableOptimizer, "compact", broken)
    store = DeltaStore(str(tmp_path))
    _commit_rows(store, 3)  # the 2nd and 3rd commits try to compact, and fail
    last = last_commit(store, "dedup")
    assert last is not None and last.outputs == {"v": 2}
    assert live_files(store, STAGE_COMMITS.name) == 3


def test_a_frame_larger_than_a_slice_is_written_slice_by_slice_and_reads_back_whole(
    tmp_path, monkeypatch
):
    import curation_assets.lib.deltawrite as deltawrite
    from curation_assets.lib.tables import DUPLICATE_PAIRS, TableSpec

    monkeypatch.setattr(deltawrite, "ROW_GROUP_BYTES", 4096)  # slices of 1,024 rows
    n = 5_000
    frame = DUPLICATE_PAIRS.conform(
        pl.DataFrame(
            {
                "image_id_a": [f"a{i:05d}" for i in range(n)],
                "image_id_b": [f"b{i:05d}" for i in range(n)],
                "similarity": [0.5 + i / (4 * n) for i in range(n)],
                "found_by": [i % 31 for i in range(n)],
                "clusterings": [1 + i % 5 for i in range(n)],
                "shard_a": ["s"] * n,
                "shard_b": ["t"] * n,
            }
        )
    )
    store = DeltaStore(str(tmp_path / "delta"))
    converted: list[int] = []
    real = TableSpec.to_arrow

    def spy(spec, df):
        converted.append(df.height)
        return real(spec, df)

    monkeypatch.setattr(TableSpec, "to_arrow", spy)
    store.replace_table(DUPLICATE_PAIRS, frame)
    assert max(converted) == 1024 and sum(converted) == n  # never the whole frame at once
    assert store.read(DUPLICATE_PAIRS).sort("image_id_a").equals(frame)
    store.append(DUPLICATE_PAIRS, frame.head(3))
    assert store.read(DUPLICATE_PAIRS).height == n + 3


def test_row_counts_count_the_rows_of_files_written_without_statistics(tmp_path):
    """A foreign writer's file without ``stats`` is counted from its rows, not as 0 rows."""
    store = DeltaStore(str(tmp_path))
    store.replace_shard(SPEC, "a", frame("a", [1, 2, 3]))
    store.replace_shard(SPEC, "b", frame("b", [10, 11]))
    assert store.shard_row_counts(SPEC.name) == {"a": 3, "b": 2}
    log = tmp_path / SPEC.name / "_delta_log"
    for entry in log.glob("*.json"):  # drop shard b's file statistics, as such a writer would
        actions = [json.loads(line) for line in entry.read_text().splitlines() if line]
        for action in actions:
            if "add" in action and action["add"]["partitionValues"].get("shard") == "b":
                action["add"].pop("stats", None)
        entry.write_text("".join(json.dumps(a) + "\n" for a in actions))
    actions = DeltaTable(store.uri(SPEC.name)).get_add_actions(flatten=True)
    assert None in pl.DataFrame(actions)["num_records"].to_list()  # the log lost them
    assert store.shard_row_counts(SPEC.name) == {"a": 3, "b": 2}
    v = store.version(SPEC.name)
    store.replace_shard(SPEC, "c", frame("c", [7]))
    assert store.shard_row_counts(SPEC.name, v) == {"a": 3, "b": 2}
    assert store.shard_row_counts(SPEC.name) == {"a": 3, "b": 2, "c": 1}


def test_a_table_is_replaced_from_streamed_frames_in_one_commit(tmp_path):
    store = DeltaStore(str(tmp_path))
    store.replace_table(SPEC, frame("a", [1]))
    before = store.version(SPEC.name)
    version = store.replace_table(SPEC, (frame(s, [i, i + 1]) for i, s in enumerate("xyz")))
    assert version == before + 1
    assert store.read(SPEC).sort("shard", "id")["id"].to_list() == [0, 1, 1, 2, 2, 3]
