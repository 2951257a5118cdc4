"""Drop patches: a shard that only lost kept images is redone from those rows alone.

Two identical corpora: one updated with the drop patch, one with every changed shard scored
from its embeddings. Rows and stats must be equal exactly (the same arithmetic on the same
stored ratios); audit counts exactly but for ``weight_sum``, which the drop patch gets by
subtraction (to 1e-13).
"""

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import (
    AUDIT_SHARD_COUNTS,
    BIAS_AUDIT,
    DEDUPLICATED_IMAGES,
    IMAGE_EMBEDDINGS,
    RAW_IMAGES,
    SAMPLE_WEIGHTS,
    WEIGHT_SHARD_STATS,
)
from curation_assets.lib.weights.update import update_weights
from curation_assets_tests.lib.weights.test_patch import (
    COUNT_KEYS,
    KW,
    ColumnRecordingStore,
    _assert_rescored,
    _one_row_batches,
    _run,
)
from curation_assets_tests.lib.weights.test_update import BUDGET, SETTINGS, _corpus, _no_encoder


def _prepared(tmp, correct_for: str, rare: bool = False) -> tuple[list[DeltaStore], list[str]]:
    """Two corpora after a full run and a rescore; returns them and shard-b's kept ids.

    ``rare``: shard-b's first kept image is the only one of its format (``TIFF``).
    """
    stores = [_corpus(tmp / f"store{i}") for i in range(2)]
    kept: list[str] = []
    for store in stores:
        if rare:
            raw = store.read(RAW_IMAGES, shards=["shard-b"])
            first = _kept(store, "shard-b")[0]
            raw = raw.with_columns(
                format=pl.when(pl.col("image_id") == first).then(pl.lit("TIFF")).otherwise("format")
            )
            store.replace_shard(RAW_IMAGES, "shard-b", RAW_IMAGES.conform(raw))
        assert _run(store, keywords=[], correct_for=correct_for).plan.mode == "full"
        assert _run(store, correct_for=correct_for).plan.mode == "rescore"
        kept = _kept(store, "shard-b")
    return stores, kept


def _kept(store: DeltaStore, shard: str) -> list[str]:
    rows = store.read(DEDUPLICATED_IMAGES, shards=[shard]).sort("image_id")
    return rows.filter(pl.col("kept"))["image_id"].to_list()


def _remove(store: DeltaStore, shard: str, ids: list[str], *, by: str) -> None:
    """Dedup now removes ``ids`` (kept before) as duplicates of ``by``."""
    rows = store.read(DEDUPLICATED_IMAGES, shards=[shard])
    hit = pl.col("image_id").is_in(ids)
    rows = rows.with_columns(
        kept=pl.when(hit).then(False).otherwise("kept"),
        duplicate_of=pl.when(hit).then(pl.lit(by)).otherwise("duplicate_of"),
        similarity=pl.when(hit).then(pl.lit(0.97, pl.Float32)).otherwise("similarity"),
        component_id=pl.when(hit).then(pl.lit(by)).otherwise("component_id"),
    )
    store.replace_shard(DEDUPLICATED_IMAGES, shard, DEDUPLICATED_IMAGES.conform(rows))


def _remove_in_place(store: DeltaStore, shard: str, ids: list[str], *, by: str) -> None:
    """As :func:`_remove`, but the way an incremental dedup run does it: change rows appended."""
    rows = store.read(DEDUPLICATED_IMAGES, shards=[shard]).filter(pl.col("image_id").is_in(ids))
    rows = rows.with_columns(
        kept=pl.lit(False),
        duplicate_of=pl.lit(by),
        similarity=pl.lit(0.97, pl.Float32),
        component_id=pl.lit(by),
    )
    store.append_changes(DEDUPLICATED_IMAGES, DEDUPLICATED_IMAGES.conform(rows))


#: Stats columns a drop patch from change rows gets by subtraction (to rounding).
SUMS = ["weight_sum", "weight_sq_sum", "ratio_sum_unclipped", "raw_ratio_sum"]


def _compare(a: DeltaStore, b: DeltaStore, *, stats_by_subtraction: bool = False) -> None:
    for spec, keys in (
        (SAMPLE_WEIGHTS, ["image_id"]),
        (WEIGHT_SHARD_STATS, ["shard"]),
        (AUDIT_SHARD_COUNTS, COUNT_KEYS),
    ):
        got, want = a.read(spec).sort(keys), b.read(spec).sort(keys)
        if spec is WEIGHT_SHARD_STATS and stats_by_subtraction:
            assert got.drop(SUMS).equals(want.drop(SUMS))
            for c in SUMS:
                np.testing.assert_allclose(got[c], want[c], rtol=1e-12, err_msg=c)
        elif spec is AUDIT_SHARD_COUNTS:
            assert got.drop("weight_sum").equals(want.drop("weight_sum"))
            np.testing.assert_allclose(got["weight_sum"], want["weight_sum"], rtol=1e-13)
        else:
            assert got.equals(want), spec.name
    assert_frame_equal(
        a.read(BIAS_AUDIT), b.read(BIAS_AUDIT), check_exact=False, rel_tol=1e-12, abs_tol=1e-12
    )


def _drop_and_compare(stores, kept, correct_for, ids, monkeypatch) -> None:
    from curation_assets.lib.weights import patch, update

    store, old = stores
    for s in stores:
        _remove(s, "shard-b", ids, by=kept[-1])
    watched = ColumnRecordingStore(store.root_uri)
    files = store.shard_files(SAMPLE_WEIGHTS.name)["shard-b"]
    out = update_weights(
        watched, {**SETTINGS, **KW, "correct_for": correct_for}, BUDGET, _no_encoder
    )
    assert out.plan.shards == ["shard-b"]
    assert (out.summary["shards_drop_patched"], out.summary["shards_scored"]) == (1, 0)
    # the dropped rows are deleted by tombstones: the shard itself is not rewritten
    assert out.written == 0 and out.summary["rows_deleted_in_place"] == len(ids)
    assert store.shard_files(SAMPLE_WEIGHTS.name)["shard-b"] == files
    # nothing of the shard's other rows is read: no embedding ids, and raw rows only here
    assert not [r for r in watched.reads if r[0] == IMAGE_EMBEDDINGS.name]
    assert not set(ids) & set(store.read(SAMPLE_WEIGHTS)["image_id"])

    def score_all(store, shards, source, **kwargs):
        return patch.redo_shards(store, shards, patch.PatchSource({}), **kwargs)

    with monkeypatch.context() as mp:
        mp.setattr(update, "redo_shards", score_all)
        ref = update_weights(
            old, {**SETTINGS, **KW, "correct_for": correct_for}, BUDGET, _no_encoder
        )
    assert (ref.summary["shards_scored"], ref.summary["shards_drop_patched"]) == (1, 0)
    _compare(store, old)
    if correct_for == SETTINGS["correct_for"]:  # the helper re-scores with SETTINGS
        _assert_rescored(store, "shard-b", out, sums_exact=False)


@pytest.mark.parametrize(
    ("correct_for", "n_removed", "leaves_reference"),
    [("filter", 5, True), ("filter_and_dedup", 3, False)],
)
def test_removed_images_leave_the_reference_only_under_filter(
    tmp_path, monkeypatch, correct_for, n_removed, leaves_reference
):
    _one_row_batches(monkeypatch)  # a row's ratio does not depend on its batch
    stores, kept = _prepared(tmp_path, correct_for)
    n_ref = stores[0].read(WEIGHT_SHARD_STATS).filter(shard="shard-b")["n_reference"].item()
    _drop_and_compare(stores, kept, correct_for, kept[:n_removed], monkeypatch)
    stats = stores[0].read(WEIGHT_SHARD_STATS).filter(shard="shard-b")
    assert stats["n_reference"].item() == n_ref - (n_removed if leaves_reference else 0)


def test_a_value_no_reference_image_holds_any_more_is_not_counted(tmp_path, monkeypatch):
    _one_row_batches(monkeypatch)  # a row's ratio does not depend on its batch
    stores, kept = _prepared(tmp_path, "filter", rare=True)
    tiff = pl.col("value") == "TIFF"
    assert stores[0].read(AUDIT_SHARD_COUNTS).filter(tiff).height == 1
    _drop_and_compare(stores, kept, "filter", kept[:1], monkeypatch)
    assert stores[0].read(AUDIT_SHARD_COUNTS).filter(tiff).height == 0


def test_any_other_change_is_left_to_the_patch(tmp_path, monkeypatch):
    """A removed image revived beside a drop: the shard is scored, as the patch does."""
    _one_row_batches(monkeypatch)
    stores, kept = _prepared(tmp_path, "filter")
    store = stores[0]
    rows = store.read(DEDUPLICATED_IMAGES, shards=["shard-b"])
    removed = rows.filter(~pl.col("kept"))["image_id"].sort()[0]
    _remove(store, "shard-b", kept[:2], by=kept[-1])
    rows = store.read(DEDUPLICATED_IMAGES, shards=["shard-b"]).with_columns(
        kept=pl.when(pl.col("image_id") == removed).then(True).otherwise("kept")
    )
    store.replace_shard(DEDUPLICATED_IMAGES, "shard-b", DEDUPLICATED_IMAGES.conform(rows))
    out = _run(store)
    assert (out.summary["shards_drop_patched"], out.summary["shards_scored"]) == (0, 1)
    assert removed in set(store.read(SAMPLE_WEIGHTS)["image_id"])


def test_a_run_killed_after_its_tombstones_is_finished_by_the_next(tmp_path, monkeypatch):
    """Tombstones appended, then killed before the commit: the next run rewrites the shard."""
    from curation_assets.lib.weights import update

    _one_row_batches(monkeypatch)
    (torn, clean), kept = _prepared(tmp_path, "filter")
    for s in (torn, clean):
        _remove(s, "shard-b", kept[:3], by=kept[-1])
    assert _run(clean).summary["rows_deleted_in_place"] == 3
    with monkeypatch.context() as mp:
        mp.setattr(update, "record_commit", lambda *a, **k: (_ for _ in ()).throw(KeyError))
        with pytest.raises(KeyError):
            _run(torn)
    assert torn.change_row_count(SAMPLE_WEIGHTS.name) == 3  # written, not committed
    again = _run(torn)
    assert again.plan.mode == "incremental" and "recovering" in again.plan.reason
    # the shard the killed run changed is rewritten whole, superseding its tombstones
    assert (again.written, again.summary["rows_deleted_in_place"]) == (1, 0)
    _compare(torn, clean)
    assert _run(torn).plan.mode == "current"


def _in_place_and_compare(stores, kept, ids, monkeypatch, correct_for="filter") -> DeltaStore:
    """Drop ``ids`` from shard-b by change rows in both corpora; drop-patch one, score one."""
    from curation_assets.lib.weights import patch, update

    store, old = stores
    for s in stores:
        _remove_in_place(s, "shard-b", ids, by=kept[-1])
    watched = ColumnRecordingStore(store.root_uri)
    files = store.shard_files(SAMPLE_WEIGHTS.name)["shard-b"]
    settings = {**SETTINGS, **KW, "correct_for": correct_for}
    out = update_weights(watched, settings, BUDGET, _no_encoder)
    assert out.plan.shards == ["shard-b"]
    assert (out.summary["shards_drop_patched"], out.summary["shards_scored"]) == (1, 0)
    assert out.written == 0 and out.summary["rows_deleted_in_place"] == len(ids)
    assert store.shard_files(SAMPLE_WEIGHTS.name)["shard-b"] == files
    # neither the shard's embeddings nor its decisions are read: the change rows say it all
    assert not [r for r in watched.reads if r[0] in (IMAGE_EMBEDDINGS.name, RAW_IMAGES.name)]
    assert not [r for r in watched.reads if r[0] == DEDUPLICATED_IMAGES.name]

    def score_all(store, shards, source, **kwargs):
        return patch.redo_shards(store, shards, patch.PatchSource({}), **kwargs)

    with monkeypatch.context() as mp:
        mp.setattr(update, "redo_shards", score_all)
        ref = update_weights(old, settings, BUDGET, _no_encoder)
    assert (ref.summary["shards_scored"], ref.summary["shards_drop_patched"]) == (1, 0)
    _compare(store, old, stats_by_subtraction=True)
    return store


@pytest.mark.parametrize("correct_for", ["filter", "filter_and_dedup"])
def test_a_shard_dedup_changed_in_place_is_patched_from_its_change_rows(
    tmp_path, monkeypatch, correct_for
):
    _one_row_batches(monkeypatch)
    stores, kept = _prepared(tmp_path, correct_for)
    _in_place_and_compare(stores, kept, kept[1:4], monkeypatch, correct_for)


@pytest.mark.parametrize("end", ["smallest", "largest"])
def test_dropping_the_smallest_or_largest_weight_reads_the_rest(tmp_path, monkeypatch, end):
    _one_row_batches(monkeypatch)
    stores, kept = _prepared(tmp_path, "filter")
    rows = stores[0].read(SAMPLE_WEIGHTS, shards=["shard-b"]).sort("weight")
    assert not rows["clipped"].any()  # the bounds are held by unclipped rows here
    which = rows["image_id"][0] if end == "smallest" else rows["image_id"][-1]
    store = _in_place_and_compare(stores, kept, [which], monkeypatch)
    stats = store.read(WEIGHT_SHARD_STATS).filter(shard="shard-b")
    left = rows.filter(pl.col("image_id") != which)["weight"]
    assert (stats["weight_min"].item(), stats["weight_max"].item()) == (left.min(), left.max())


def test_a_newly_kept_change_row_is_left_to_the_patch(tmp_path, monkeypatch):
    """A removed image revived by a change row beside drops: the shard is scored."""
    _one_row_batches(monkeypatch)
    stores, kept = _prepared(tmp_path, "filter")
    store = stores[0]
    removed = store.read(DEDUPLICATED_IMAGES, shards=["shard-b"]).filter(~pl.col("kept"))
    revived = removed.sort("image_id").head(1).with_columns(kept=pl.lit(True))
    _remove_in_place(store, "shard-b", kept[:2], by=kept[-1])
    store.append_changes(DEDUPLICATED_IMAGES, revived)
    out = _run(store)
    assert (out.summary["shards_drop_patched"], out.summary["shards_scored"]) == (0, 1)
    assert revived["image_id"][0] in set(store.read(SAMPLE_WEIGHTS)["image_id"])
    assert not set(kept[:2]) & set(store.read(SAMPLE_WEIGHTS)["image_id"])
