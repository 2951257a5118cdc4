"""The ready ids a dedup run spills from its layout to its write: counts in memory, ids on disk."""

from pathlib import Path

import polars as pl
import pytest

from curation_assets.lib.dedup import run_dedup, write_dedup
from curation_assets.lib.dedup.readyids import IDS_FOLDER, ReadyIds, clear_ids, ready_ids
from curation_assets.lib.memory import MemoryBudget
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import DEDUPLICATED_IMAGES
from curation_assets_tests.lib.dedup.helpers import (
    add_shard,
    dedup_tables,
    run_and_write,
    vectors,
    write_centroids,
)


def test_ids_come_back_per_shard_sorted_from_the_files_that_hold_them(tmp_path):
    store = DeltaStore(str(tmp_path / "delta"))
    ready = ready_ids(store)
    ready.add({"b": pl.Series(["b2", "b0", "b1"]), "a": pl.Series(["a0"])})
    ready.add({"c": pl.Series(["c1", "c0"]), "empty": pl.Series([], dtype=pl.String)})
    folder = Path(store.uri(IDS_FOLDER))
    assert sorted(p.name for p in folder.iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    assert dict(ready) == {"b": 3, "a": 1, "c": 2} and ready.total == 6
    assert "empty" not in ready  # a shard with no ready image is not laid out
    got = {s: ids.to_list() for s, ids in ready.ids(["c", "b", "missing"]).items()}
    assert got == {"c": ["c0", "c1"], "b": ["b0", "b1", "b2"]}
    assert ready.ids([]) == {}
    # a new run starts from nothing: a killed run's files are gone
    again = ready_ids(store)
    assert len(again) == 0 and not folder.exists()
    with pytest.raises(FileNotFoundError):
        ready.ids(["a"])  # the old run's object reads files that were deleted


def test_an_object_without_a_folder_holds_counts_only():
    empty = ReadyIds()
    assert len(empty) == 0 and empty.total == 0 and empty.ids(["a"]) == {}
    empty.add({"a": pl.Series([], dtype=pl.String)})  # nothing to write
    with pytest.raises(ValueError, match="folder"):
        empty.add({"a": pl.Series(["a0"])})


def test_a_run_spills_its_ids_the_write_reads_them_and_the_stage_deletes_them(tmp_path):
    """Several layout groups (a small budget): the rows written equal a run that kept them."""
    stores = [DeltaStore(str(tmp_path / name / "delta")) for name in ("spilled", "twin")]
    for s in stores:
        write_centroids(s)
        for i, name in enumerate("abcd"):
            add_shard(s, name, vectors(150, 6, seed=20 + i), start=1000 * i)
    small = MemoryBudget(0.02)  # lay_out flushes every ~1.3 MB of member rows
    spilled = stores[0]
    outcome = run_dedup(spilled, tau=0.95, policy=None, budget=small)
    folder = Path(spilled.uri(IDS_FOLDER))
    files = sorted(folder.iterdir())
    assert len(files) >= 2, files  # one file per layout group
    assert dict(outcome.ready) == {s: 150 for s in "abcd"}
    write_dedup(spilled, outcome)
    written = spilled.read(DEDUPLICATED_IMAGES)
    assert written.group_by("shard").len().sort("shard")["len"].to_list() == [150] * 4
    assert (
        outcome.ready.ids(["c"])["c"].to_list()
        == written.filter(pl.col("shard") == "c")["image_id"].sort().to_list()
    )
    clear_ids(spilled)
    assert not folder.exists()
    # through the stage (as the asset runs it) nothing is left once written
    again = run_and_write(spilled, budget=small, force_full=True)
    assert again.plan.mode == "full" and not folder.exists()
    run_and_write(stores[1], budget=small)
    for name, df in dedup_tables(spilled).items():
        assert df.equals(dedup_tables(stores[1])[name]), name


def test_decisions_are_written_in_commits_of_bounded_rows(tmp_path, monkeypatch):
    """More rows than one commit holds: several commits, the same rows as one commit."""
    from curation_assets.lib.dedup import decisions

    stores = [DeltaStore(str(tmp_path / name / "delta")) for name in ("small", "one")]
    for s in stores:
        write_centroids(s)
        for i, name in enumerate("abc"):
            add_shard(s, name, vectors(40, 3, seed=40 + i), start=1000 * i)
    run_and_write(stores[1])
    monkeypatch.setattr(decisions, "ROWS_PER_COMMIT", 70)  # two shards are 80 rows
    before = stores[0].version(DEDUPLICATED_IMAGES.name)
    run_and_write(stores[0])
    assert stores[0].version(DEDUPLICATED_IMAGES.name) - (before or 0) >= 3  # one per shard
    for name, df in dedup_tables(stores[0]).items():
        assert df.equals(dedup_tables(stores[1])[name]), name


def test_a_failed_run_leaves_no_spilled_ids(tmp_path, monkeypatch):
    from curation_assets.lib.dedup import run as run_module

    store = DeltaStore(str(tmp_path / "delta"))
    write_centroids(store)
    add_shard(store, "a", vectors(60, 4, seed=31))

    def lost(*args, **kwargs):
        raise RuntimeError("merge lost")

    monkeypatch.setattr(run_module, "merge", lost)
    with pytest.raises(RuntimeError, match="merge lost"):
        run_and_write(store)
    assert not Path(store.uri(IDS_FOLDER)).exists()
    monkeypatch.undo()
    assert run_and_write(store).plan.mode == "full"
