"""The image-id index answers exactly as the scan of raw_images, at the cost of what changed."""

import logging
import shutil
import threading

import numpy as np
import polars as pl
import pytest

from curation_assets.lib import idindex
from curation_assets.lib.idindex import IdIndex, index_path
from curation_assets.lib.ingest import lookup_elsewhere, lookup_now
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import RAW_IMAGES


def _raw(shard: str, ids: list[str]) -> pl.DataFrame:
    rows = [{"image_id": i, "shard": shard, "source_uri": f"/{shard}/{i}.png"} for i in ids]
    frame = pl.DataFrame(
        rows, schema={"image_id": pl.String, "shard": pl.String, "source_uri": pl.String}
    )
    missing = [c for c in RAW_IMAGES.column_names if c not in frame.columns]
    return RAW_IMAGES.conform(frame.with_columns(pl.lit(None).alias(c) for c in missing))


def _rows(frame: pl.DataFrame) -> list[tuple[str, str, str]]:
    return sorted(frame.select("image_id", "shard", "source_uri").rows())


def _scan(store: DeltaStore, shard: str, ids: list[str], version: int | None) -> list:
    return _rows(lookup_elsewhere(store, shard, ids, version))


def test_the_index_answers_as_the_scan_through_adds_replacements_and_removals(tmp_path):
    """Random shards added, re-ingested with other ids, emptied and overwritten whole."""
    rng = np.random.default_rng(7)
    pool = [f"{i:04x}" for i in range(400)]
    store = DeltaStore(str(tmp_path / "delta"))
    index = IdIndex(store)
    frame, version, refreshed = index.lookup(["0001"], exclude_shard="s0")
    assert frame.is_empty() and version is None and refreshed.shards == 0
    for step in range(24):
        shard = f"s{rng.integers(0, 8)}"
        ids = list(rng.choice(pool, size=int(rng.integers(0, 40)), replace=False))
        if step == 17:  # a whole-table write: the log's tail names no shard, snapshots compared
            store.replace_table(RAW_IMAGES, store.read(RAW_IMAGES).filter(pl.col("shard") != shard))
        else:
            store.replace_shard(RAW_IMAGES, shard, _raw(shard, ids))
        asked = list(rng.choice(pool, size=60, replace=False))
        who = f"s{rng.integers(0, 9)}"  # s8 holds nothing: every shard's rows count
        found, at, refreshed = index.lookup(asked, exclude_shard=who)
        assert at == store.version(RAW_IMAGES.name)
        assert _rows(found) == _scan(store, who, asked, at), step
        assert not refreshed.rebuilt or step == 0
    assert index.rows() == store.read(RAW_IMAGES).height


def test_a_new_shard_costs_its_own_rows_not_the_corpus(tmp_path, monkeypatch):
    store = DeltaStore(str(tmp_path / "delta"))
    for s in range(6):
        store.replace_shard(RAW_IMAGES, f"s{s}", _raw(f"s{s}", [f"{s}-{i}" for i in range(50)]))
    index = IdIndex(store)
    first = index.refresh()
    assert (first.rebuilt, first.shards, first.rows) == (True, 6, 300)
    store.replace_shard(RAW_IMAGES, "new", _raw("new", ["n1", "2-7", "n2"]))
    reads: list[list[str] | None] = []
    real_read = store.read

    def read(spec, *, shards=None, **kwargs):
        reads.append(None if shards is None else sorted(shards))
        return real_read(spec, shards=shards, **kwargs)

    monkeypatch.setattr(store, "read", read)
    real_scan = store.scan

    def scan(spec, *, shards=None, **kwargs):
        if shards is None:
            pytest.fail("the corpus was scanned")
        return real_scan(spec, shards=shards, **kwargs)

    monkeypatch.setattr(store, "scan", scan)
    found, _, refreshed = index.lookup(["n1", "2-7", "n2", "zz"], exclude_shard="new")
    assert _rows(found) == [("2-7", "s2", "/s2/2-7.png")]
    assert (refreshed.rebuilt, refreshed.shards, refreshed.rows) == (False, 1, 3)
    assert reads == [["new"]]
    again = index.lookup(["n1"], exclude_shard="other")
    assert again[2].shards == 0 and _rows(again[0]) == [("n1", "new", "/new/n1.png")]
    assert reads == [["new"]]  # nothing changed since: nothing read


def test_a_refresh_killed_midway_leaves_the_index_as_it_was(tmp_path, monkeypatch):
    store = DeltaStore(str(tmp_path / "delta"))
    store.replace_shard(RAW_IMAGES, "a", _raw("a", ["x", "y"]))
    index = IdIndex(store)
    v0 = index.refresh().version
    store.replace_shard(RAW_IMAGES, "a", _raw("a", ["x"]))
    store.replace_shard(RAW_IMAGES, "b", _raw("b", ["y"]))
    real_read = store.read

    def dying(*args, **kwargs):
        raise KeyboardInterrupt  # after the old rows of a and b were deleted

    monkeypatch.setattr(store, "read", dying)
    with pytest.raises(KeyboardInterrupt):
        index.refresh()
    monkeypatch.setattr(store, "read", real_read)
    # the deletes were rolled back with the rest: the recorded version still says v0
    with index._connect() as conn:  # noqa: SLF001
        assert index._state(conn).version == v0  # noqa: SLF001
        assert sorted(conn.execute("SELECT image_id, shard FROM ids").fetchall()) == [
            ("x", "a"),
            ("y", "a"),
        ]
    found, _, refreshed = index.lookup(["x", "y"], exclude_shard="c")
    assert refreshed.shards == 2
    assert _rows(found) == [("x", "a", "/a/x.png"), ("y", "b", "/b/y.png")]


def test_a_deleted_index_or_a_table_made_anew_is_rebuilt(tmp_path):
    store = DeltaStore(str(tmp_path / "delta"))
    store.replace_shard(RAW_IMAGES, "a", _raw("a", ["x", "y"]))
    index = IdIndex(store)
    assert index.refresh().reason == "first use"
    index.path.unlink()
    assert index.lookup(["x"], exclude_shard="b")[2].reason == "first use"
    # raw_images deleted and written again, to a version the index has seen: a new table
    shutil.rmtree(store.uri(RAW_IMAGES.name))
    store.replace_shard(RAW_IMAGES, "c", _raw("c", ["z"]))
    found, version, refreshed = index.lookup(["x", "z"], exclude_shard="b")
    assert refreshed.reason == "raw_images was created anew"
    assert _rows(found) == [("z", "c", "/c/z.png")]
    assert version == store.version(RAW_IMAGES.name)


def test_an_unusable_index_falls_back_to_the_scan_with_a_warning(tmp_path, caplog):
    store = DeltaStore(str(tmp_path / "delta"))
    store.replace_shard(RAW_IMAGES, "a", _raw("a", ["x", "y"]))
    path = index_path(store)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a database" * 100)
    with caplog.at_level(logging.WARNING, logger="curation_assets.lib.ingest"):
        got = lookup_now(store, "b", ["x", "q"])
    assert got.method == "scan" and _rows(got.rows) == [("x", "a", "/a/x.png")]
    assert "could not be used" in caplog.text
    path.unlink()
    indexed = lookup_now(store, "b", ["x", "q"])
    assert indexed.method == "index" and indexed.rows.equals(got.rows)
    assert indexed.metadata["index_rebuilt"] == "first use"
    with pytest.raises(ValueError, match="duplicate lookup method"):
        lookup_now(store, "b", ["x"], method="bloom")


def test_refreshes_racing_writers_stay_exact(tmp_path):
    """Two threads ask while shards land: every answer equals the scan at its version."""
    store = DeltaStore(str(tmp_path / "delta"))
    store.replace_shard(RAW_IMAGES, "s0", _raw("s0", ["a0"]))
    index = IdIndex(store)
    answers: list[tuple[pl.DataFrame, int | None]] = []
    errors: list[BaseException] = []
    asked = [f"a{i}" for i in range(12)]

    def ask():
        try:
            for _ in range(6):
                found, version, _ = IdIndex(store).lookup(asked, exclude_shard="none")
                answers.append((found, version))
        except BaseException as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    for i in range(1, 12):
        store.replace_shard(RAW_IMAGES, f"s{i}", _raw(f"s{i}", [f"a{i}"]))
    for t in threads:
        t.join()
    assert not errors
    for found, version in answers:
        assert _rows(found) == _scan(store, "none", asked, version)
    final, version, _ = index.lookup(asked, exclude_shard="none")
    assert final.height == 12 and version == store.version(RAW_IMAGES.name)


def test_an_object_store_root_keeps_its_index_in_a_local_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(idindex.INDEX_DIR_ENV, str(tmp_path / "cache"))
    a = index_path(DeltaStore("s3://bucket/curation"))
    b = index_path(DeltaStore("s3://bucket/curation/"))
    c = index_path(DeltaStore("s3://bucket/other"))
    assert a == b != c
    assert a.parent.parent == tmp_path / "cache" and a.name == idindex.FILE_NAME
    local = DeltaStore(str(tmp_path / "delta"))
    assert index_path(local) == tmp_path / "delta" / "_index" / idindex.FILE_NAME


def test_a_lookup_seeks_each_id_and_never_scans_the_index(tmp_path):
    """The lookup's plan: the ids asked scanned, the index searched by its key, never scanned."""
    store = DeltaStore(str(tmp_path / "delta"))
    store.replace_shard(RAW_IMAGES, "a", _raw("a", ["x"]))
    index = IdIndex(store)
    index.refresh()
    with index._connect() as conn:  # noqa: SLF001
        conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS asked (image_id TEXT PRIMARY KEY) WITHOUT ROWID"
        )
        plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + idindex.LOOKUP_SQL, ("b",))]
    assert "SCAN asked" in plan
    assert any(step.startswith("SEARCH ids USING INDEX ids_by_image (image_id=?)") for step in plan)
    assert not any(step.startswith("SCAN ids") for step in plan), plan


def test_another_writers_nulls_neither_fail_a_refresh_nor_match(tmp_path):
    store = DeltaStore(str(tmp_path / "delta"))
    rows = _raw("a", ["x", "y"]).with_columns(
        source_uri=pl.Series([None, "/a/y.png"], dtype=pl.String)
    )
    store.replace_shard(
        RAW_IMAGES,
        "a",
        pl.concat([rows, _raw("a", ["z"]).with_columns(image_id=pl.lit(None, pl.String))]),
    )
    found, version, refreshed = IdIndex(store).lookup(["x", "y", "z"], exclude_shard="b")
    assert not refreshed.reason or refreshed.reason == "first use"
    assert sorted(found.rows(), key=str) == sorted(
        lookup_elsewhere(store, "b", ["x", "y", "z"], version).rows(), key=str
    )
    assert found.height == 2


def test_a_table_whose_rows_came_in_its_first_commit_is_indexed(tmp_path):
    """Another writer's raw_images created with its rows at version 0 (a rebuild reads them)."""
    from deltalake import write_deltalake

    store = DeltaStore(str(tmp_path / "delta"))
    write_deltalake(store.uri(RAW_IMAGES.name), _raw("a", ["x"]).to_arrow(), partition_by=["shard"])
    assert store.version(RAW_IMAGES.name) == 0
    found, version, refreshed = IdIndex(store).lookup(["x"], exclude_shard="b")
    assert version == 0 and refreshed.rebuilt
    assert _rows(found) == [("x", "a", "/a/x.png")]
