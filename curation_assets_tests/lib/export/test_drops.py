"""Export drop patches: a shard that only lost images is republished from its own files.

Dedup flips old kept images to removed in place (change rows) and the weights stage deletes
their weight rows by tombstones; the export then neither re-reads the shard's inputs nor its
images' sources: the manifest is filtered, the tars' other samples copied, the Delta rows
tombstoned. The result must equal a rewrite from the inputs, tar bytes included.
"""

import shutil
import tarfile
from pathlib import Path

import polars as pl
import pytest

from curation_assets.lib.compaction import live_row_counts
from curation_assets.lib.export.manifest import curated_rows
from curation_assets.lib.export.run import kept_images
from curation_assets.lib.export.shards import shard_link
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import CURATED_DATASET, DEDUPLICATED_IMAGES, SAMPLE_WEIGHTS
from curation_assets_tests.lib.export.test_run import _manifest, _run, write_shard
from curation_assets_tests.weights_inputs import write_linear_weights, write_weight_inputs


def _drop_in_place(store: DeltaStore, shard: str, n: int) -> list[str]:
    """Dedup removes ``n`` of the shard's kept images in place; weights tombstone their rows."""
    kept = store.read(DEDUPLICATED_IMAGES, shards=[shard]).filter("kept").sort("image_id")
    flipped = kept[1 : 1 + n].with_columns(
        kept=pl.lit(False), duplicate_of=pl.lit(kept["image_id"][0])
    )
    store.append_changes(DEDUPLICATED_IMAGES, flipped)
    ids = flipped["image_id"].to_list()
    rows = store.read(SAMPLE_WEIGHTS, shards=[shard]).filter(pl.col("image_id").is_in(ids))
    store.append_changes(SAMPLE_WEIGHTS, rows, deleted=True)
    return ids


def _tar_bytes(out: Path, shard: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(shard_link(out, shard).glob("*.tar"))}


@pytest.fixture
def wds(tmp_path):
    """Two shards with real images, exported with WebDataset (7 samples a tar)."""
    store = DeltaStore(str(tmp_path / "delta"))
    write_weight_inputs(store, tmp_path / "images", n=120)
    write_linear_weights(store)
    out = tmp_path / "export"
    assert _run(store, out, webdataset=True, shard_size=7).summary["totals"]["failures"] == 0
    return store, out, tmp_path


def test_a_shard_that_only_lost_images_is_republished_from_its_own_files(wds, monkeypatch):
    from curation_assets.lib import revisions

    monkeypatch.setattr(revisions, "FOLD_SHARE", 1.0)  # no fold: the tombstones stay to see
    store, out, tmp = wds
    rows_files = store.shard_files(CURATED_DATASET.name)
    other = _tar_bytes(out, "shard-a")
    gone = _drop_in_place(store, "shard-b", 4)
    shutil.move(tmp / "images", tmp / "away")  # a re-read of any source would now fail
    outcome = _run(store, out, webdataset=True, shard_size=7)
    shutil.move(tmp / "away", tmp / "images")
    assert outcome.written.patched == ["shard-b"] and outcome.plan.rewrite == []
    assert outcome.summary["totals"]["failures"] == 0
    assert "1 of them only lost images" in outcome.plan.reason
    expected = curated_rows(kept_images(store), store.read(SAMPLE_WEIGHTS))
    assert not set(gone) & set(expected["image_id"])
    assert _manifest(out).equals(expected)
    assert store.read(CURATED_DATASET).sort("image_id").equals(expected)
    # the Delta rows were deleted in place: no shard's files were rewritten
    assert store.shard_files(CURATED_DATASET.name) == rows_files
    assert store.change_row_count(CURATED_DATASET.name) == len(gone)
    recorded = {k: e["rows"] for k, e in outcome.summary["shards"].items()}
    assert live_row_counts(store, CURATED_DATASET) == recorded
    assert _tar_bytes(out, "shard-a") == other  # the other shard is not touched
    assert _run(store, out, webdataset=True, shard_size=7).up_to_date
    # byte for byte what a full export from the inputs writes (the sources are back)
    full_out = tmp / "full"
    full = _run(store, full_out, webdataset=True, shard_size=7)
    assert _tar_bytes(out, "shard-b") == _tar_bytes(full_out, "shard-b")
    assert _manifest(full_out).equals(_manifest(out))
    mine, theirs = outcome.summary["shards"]["shard-b"], full.summary["shards"]["shard-b"]
    assert {k: v for k, v in mine.items() if k != "stamp"} == {
        k: v for k, v in theirs.items() if k != "stamp"
    }
    names = [
        n
        for t in sorted(shard_link(out, "shard-b").glob("*.tar"))
        for n in tarfile.open(t).getnames()
    ]
    assert not {n.split(".")[0] for n in names} & set(gone)


@pytest.mark.parametrize("where", ["before_tombstones", "before_commit"])
def test_a_killed_drop_patch_is_rewritten_by_the_next_run(wds, monkeypatch, where):
    from curation_assets.lib.export import run

    store, out, _ = wds
    _drop_in_place(store, "shard-b", 3)
    with monkeypatch.context() as mp:  # killed after the files (and the tombstones)
        kill = lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt)  # noqa: E731
        if where == "before_tombstones":
            mp.setattr(DeltaStore, "append_changes", kill)
        else:
            mp.setattr(run, "record_commit", kill)
        with pytest.raises(KeyboardInterrupt):
            _run(store, out, webdataset=True, shard_size=7)
    if where == "before_commit":  # written, not committed: readers already see them gone
        assert store.change_row_count(CURATED_DATASET.name) == 3
    again = _run(store, out, webdataset=True, shard_size=7)
    # its files (and rows) moved since the commit: rewritten from the inputs
    assert again.plan.rewrite == ["shard-b"] and not again.written.patched
    expected = curated_rows(kept_images(store), store.read(SAMPLE_WEIGHTS))
    assert _manifest(out).equals(expected)
    assert store.read(CURATED_DATASET).sort("image_id").equals(expected)
    recorded = {k: e["rows"] for k, e in again.summary["shards"].items()}
    assert live_row_counts(store, CURATED_DATASET) == recorded
    assert _run(store, out, webdataset=True, shard_size=7).up_to_date


@pytest.fixture
def exported(tmp_path):
    """Two shards without images, exported once."""
    store = DeltaStore(str(tmp_path / "delta"))
    for i in range(2):
        write_shard(store, f"shard-{i}", 30, seed=i)
    out = tmp_path / "export"
    _run(store, out)
    return store, out


def test_decisions_and_weights_that_disagree_are_rewritten_from_the_inputs(exported):
    store, out = exported
    kept = store.read(DEDUPLICATED_IMAGES, shards=["shard-1"]).filter("kept").sort("image_id")
    # a newly kept image beside a drop: not a drop patch (its weight row is rewritten too)
    store.append_changes(DEDUPLICATED_IMAGES, kept[:2].with_columns(kept=pl.lit(False)))
    weights = store.read(SAMPLE_WEIGHTS, shards=["shard-1"])
    store.replace_shard(
        SAMPLE_WEIGHTS,
        "shard-1",
        weights.filter(~pl.col("image_id").is_in(kept["image_id"][:2].to_list())),
    )
    outcome = _run(store, out)
    assert outcome.plan.rewrite == ["shard-1"] and not outcome.written.patched
    expected = curated_rows(kept_images(store), store.read(SAMPLE_WEIGHTS))
    assert _manifest(out).equals(expected)
    assert store.read(CURATED_DATASET).sort("image_id").equals(expected)


def test_live_row_counts_drop_tombstoned_rows_until_a_rewrite_supersedes_them(exported):
    store, _ = exported
    before = live_row_counts(store, CURATED_DATASET)
    rows = store.read(CURATED_DATASET, shards=["shard-0"]).head(3)
    store.append_changes(CURATED_DATASET, rows, deleted=True)
    assert live_row_counts(store, CURATED_DATASET) == {**before, "shard-0": before["shard-0"] - 3}
    # the shard rewritten whole (its rows newer than the tombstones): all its rows count again
    store.replace_rows(CURATED_DATASET, "shard", ["shard-0"], [rows])
    assert live_row_counts(store, CURATED_DATASET) == {**before, "shard-0": 3}
    assert store.read(CURATED_DATASET, shards=["shard-0"]).height == 3
