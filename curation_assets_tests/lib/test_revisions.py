"""Merge-on-read of a table changed in place (``deduplicated_images``): lib/revisions.py.

Changed rows are appended to one partition and merged by every reader; a later rewrite of a
shard supersedes them; a fold rewrites the touched shards and drops them.
"""

import dataclasses

import numpy as np
import polars as pl
import pytest
from deltalake import write_deltalake

from curation_assets.lib import revisions
from curation_assets.lib.compaction import drop_changes, fold
from curation_assets.lib.explain.snapshot import AsOf, Snapshot
from curation_assets.lib.revisions import CHANGES
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import DEDUPLICATED_IMAGES

SPEC = DEDUPLICATED_IMAGES
NAME = SPEC.name


def rows(shard: str, ids: list[str], *, kept: bool = True) -> pl.DataFrame:
    return SPEC.conform(
        pl.DataFrame(
            {
                "image_id": ids,
                "shard": shard,
                "kept": kept,
                "duplicate_of": None if kept else "x",
                "similarity": None if kept else 0.99,
                "component_id": ids if kept else ["x"] * len(ids),
            },
            schema_overrides={"duplicate_of": pl.String, "similarity": pl.Float32},
        )
    )


@pytest.fixture
def store(tmp_path):
    s = DeltaStore(str(tmp_path / "delta"))
    s.replace_rows(SPEC, "shard", ["a", "b"], [rows("a", ["a1", "a2", "a3"]), rows("b", ["b1"])])
    return s


def read(store: DeltaStore, **kw) -> pl.DataFrame:
    return store.read(SPEC, **kw).sort("image_id")


def test_changed_rows_are_read_in_place_of_their_base_rows(store):
    before = store.version(NAME)
    files = store.shard_files(NAME)
    store.append_changes(SPEC, rows("a", ["a2"], kept=False))
    now = read(store)
    assert now.columns == SPEC.column_names  # hidden columns stay hidden
    assert now["image_id"].to_list() == ["a1", "a2", "a3", "b1"]  # one row per key
    assert now["kept"].to_list() == [True, False, True, True]
    assert now.filter(pl.col("image_id") == "a2")["duplicate_of"].to_list() == ["x"]
    # shard filter and projection; time travel sees the table as it was
    assert read(store, shards=["a"], columns=["image_id", "kept"])["kept"].to_list() == [
        True,
        False,
        True,
    ]
    assert read(store, shards=["b"])["kept"].to_list() == [True]
    assert read(store, version=before)["kept"].all()
    # the log-only views leave the changes partition out; no shard's files changed
    assert store.shard_files(NAME) == files
    assert store.shard_row_counts(NAME) == {"a": 3, "b": 1}
    assert store.change_row_count(NAME) == 1
    assert store.changed_shards(NAME, before) == {"a"}


def test_the_newest_change_wins_and_a_later_rewrite_supersedes_every_change(store):
    store.append_changes(SPEC, rows("a", ["a2"], kept=False))
    store.append_changes(SPEC, rows("a", ["a2", "a3"], kept=True).with_columns(kept=pl.lit(True)))
    assert read(store)["kept"].all()
    store.append_changes(SPEC, rows("a", ["a1"], kept=False))
    # the shard is rewritten without a1 and with a4: a1's change must not bring it back
    store.replace_rows(SPEC, "shard", ["a"], rows("a", ["a2", "a3", "a4"]))
    now = read(store)
    assert now["image_id"].to_list() == ["a2", "a3", "a4", "b1"]
    assert now["kept"].all()


def test_a_table_written_before_it_had_the_hidden_columns_takes_changes(tmp_path):
    s = DeltaStore(str(tmp_path / "delta"))
    old = dataclasses.replace(SPEC, revision_key=None)  # as written by an older version
    s.replace_rows(old, "shard", ["a"], rows("a", ["a1", "a2"]))
    assert set(pl.read_delta(s.uri(NAME)).columns) == set(SPEC.column_names)
    s.append_changes(SPEC, rows("a", ["a1"], kept=False))
    assert read(s)["kept"].to_list() == [False, True]
    s.replace_rows(SPEC, "shard", ["a"], rows("a", ["a1", "a2"]))  # schema merged, not refused
    assert read(s)["kept"].to_list() == [True, True]


def test_a_fold_rewrites_the_touched_shards_reads_the_same_and_names_no_shard(store, monkeypatch):
    store.append_changes(SPEC, rows("a", ["a2"], kept=False))
    expected = read(store)
    files_b = store.shard_files(NAME)["b"]
    before = store.version(NAME)
    monkeypatch.setattr(revisions, "FOLD_SHARE", 0.5)
    assert fold(store, SPEC) == []  # 1 change row of 4 base rows: not due at 50 %
    monkeypatch.setattr(revisions, "FOLD_SHARE", 0.2)
    assert fold(store, SPEC) == ["a"]
    assert read(store).equals(expected)
    assert store.change_row_count(NAME) == 0
    assert store.shard_files(NAME)["b"] == files_b  # untouched shard not rewritten
    assert store.changed_shards(NAME, before) == set()  # no row changed as read
    raw = pl.read_delta(store.uri(NAME))
    assert CHANGES not in raw["shard"].to_list() and raw.height == 4


def test_drop_changes_empties_the_partition_only(store):
    store.append_changes(SPEC, rows("b", ["b1"], kept=False))
    store.replace_rows(SPEC, "shard", ["a", "b"], [rows("a", ["a1"]), rows("b", ["b1"])])
    drop_changes(store, SPEC)
    assert store.change_row_count(NAME) == 0
    assert read(store)["image_id"].to_list() == ["a1", "b1"]


def test_changed_shards_without_the_log_names_is_conservative(store):
    before = store.version(NAME)
    store.append_changes(SPEC, rows("a", ["a2"], kept=False))
    # another tool's commit names no shards: the fallback compares snapshots, and cannot tell
    # which shards the change rows are for, so it names every shard
    write_deltalake(
        store.uri(NAME),
        pl.read_delta(store.uri(NAME)).head(0).to_arrow(),
        mode="append",
        partition_by=["shard"],
    )
    assert store.changed_shards(NAME, before) == {"a", "b"}


def test_the_explain_snapshot_reads_merged_rows(store):
    store.append_changes(SPEC, rows("a", ["a2"], kept=False))
    snap = Snapshot(store, AsOf())
    df, _ = snap.read(SPEC, shards=["a"], where=[[("image_id", "=", "a2")]])
    assert df.height == 1 and df["kept"].to_list() == [False]
    assert df.columns == SPEC.column_names
    with pytest.raises(ValueError, match="changed in place"):
        snap.read(SPEC, where=[[("kept", "=", True)]])


def test_append_changes_refuses_a_table_not_changed_in_place(store):
    with pytest.raises(ValueError, match="not changed in place"):
        store.append_changes(dataclasses.replace(SPEC, revision_key=None), rows("a", ["a1"]))


def test_a_tombstone_deletes_its_row_until_the_shard_is_rewritten_and_a_fold_drops_it(
    store, monkeypatch
):
    before = store.version(NAME)
    store.append_changes(SPEC, rows("a", ["a1", "a3"]), deleted=True)
    assert read(store)["image_id"].to_list() == ["a2", "b1"]
    assert read(store, shards=["a"], columns=["image_id"]).height == 1
    assert read(store, version=before).height == 4
    assert store.changed_shards(NAME, before) == {"a"}
    monkeypatch.setattr(revisions, "FOLD_SHARE", 0.1)
    assert fold(store, SPEC) == ["a"]
    assert pl.read_delta(store.uri(NAME)).sort("image_id")["image_id"].to_list() == ["a2", "b1"]
    store.append_changes(SPEC, rows("b", ["b1"]), deleted=True)
    store.replace_rows(SPEC, "shard", ["b"], rows("b", ["b1"]))  # written again: back
    assert read(store)["image_id"].to_list() == ["a2", "b1"]


def test_changes_since_a_version_are_the_newest_change_rows_alone(store):
    from curation_assets.lib.compaction import changes_since

    cols = ["image_id", "shard", "kept"]
    v0 = store.version(NAME)
    assert changes_since(store, SPEC, since=v0, shards=["a", "b"], columns=cols).height == 0
    store.append_changes(SPEC, rows("a", ["a1", "a2"], kept=False))
    v1 = store.version(NAME)
    store.append_changes(SPEC, rows("a", ["a2"], kept=True))
    store.append_changes(SPEC, rows("b", ["b1"]), deleted=True)
    got = changes_since(store, SPEC, since=v0, shards=["a", "b"], columns=cols).sort("image_id")
    assert got.columns == [*cols, "deleted", "revision"]
    # a2's newest change wins; b1's tombstone is marked; the shard is the image's own
    assert got.select(*cols, "deleted").rows() == [
        ("a1", "a", False, False),
        ("a2", "a", True, False),
        ("b1", "b", True, True),
    ]
    after_v1 = changes_since(store, SPEC, since=v1, shards=["a"], columns=cols)
    assert after_v1["image_id"].to_list() == ["a2"]  # only what came after v1, of shard a
    # a key filter reads only those keys, merged as every reader sees them
    assert read(store, keys=["a1", "b1"])[["image_id", "kept"]].rows() == [("a1", False)]
    with pytest.raises(ValueError, match="no row key"):
        store.read(dataclasses.replace(SPEC, revision_key=None), keys=["a1"])


def _counted(store: DeltaStore, shards: list[str]) -> list[tuple]:
    """What a merged read counts: the rule flag_counts must give without the merge."""
    return (
        store.read(SPEC, shards=shards)
        .group_by("shard")
        .agg(
            pl.col("kept").sum().cast(pl.Int64).alias("t"),
            (~pl.col("kept")).sum().cast(pl.Int64).alias("f"),
        )
        .sort("shard")
        .rows()
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_flag_counts_equal_a_merged_read_after_flips_tombstones_and_rewrites(tmp_path, seed):
    from curation_assets.lib.compaction import flag_counts

    rng = np.random.default_rng(seed)
    s = DeltaStore(str(tmp_path / "delta"))
    ids = {sh: [f"{sh}{i}" for i in range(12)] for sh in "abc"}
    s.replace_rows(SPEC, "shard", list(ids), [rows(sh, v) for sh, v in ids.items()])
    assert flag_counts(s, SPEC, ["a", "b", "c", "z"], "kept").rows() == _counted(s, list("abc"))
    for step in range(12):
        sh = str(rng.choice(list(ids)))
        some = [str(i) for i in rng.choice(ids[sh], size=4, replace=False)]
        move = step % 4
        if move == 0:  # flips either way
            s.append_changes(SPEC, rows(sh, some, kept=bool(rng.integers(2))))
        elif move == 1:  # tombstones (some of them of rows already deleted)
            s.append_changes(SPEC, rows(sh, some[:2]), deleted=True)
        elif move == 2:  # the shard rewritten: every older change superseded
            s.replace_rows(SPEC, "shard", [sh], rows(sh, ids[sh][: 8 + step % 5], kept=False))
        else:  # a change for a key with no base row is ignored
            s.append_changes(SPEC, rows(sh, [f"{sh}-gone"], kept=True))
        for wanted in (list("abc"), [sh]):
            got = flag_counts(s, SPEC, wanted, "kept")
            assert got.rows() == _counted(s, wanted), (step, wanted)
    fold(s, SPEC, force=True)  # folded: the same counts from base rows alone
    assert flag_counts(s, SPEC, list("abc"), "kept").rows() == _counted(s, list("abc"))
