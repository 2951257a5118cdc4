"""The patch path: shards whose embeddings did not change are re-weighted from stored ratios.

Each test runs the same steps on two identical corpora (write_weight_inputs, 8-d, same seeds):
one with the patch, one with every shard scored from its embeddings as before the patch
existed (``redo_shards`` given no shard to patch). The four tables must be equal exactly, and
the patched shard's rows, stats row and counts equal what ``score_shard`` gives it with the
committed probe and scale.

Two caveats, of ``score_shard`` and not of the patch: the probe's matrix products round a
row's result differently in the last bit depending on how many rows its batch has (BLAS tail
kernels), and on the layout of the probe's arrays (a full run scores with the probe as fitted,
whose ``components`` is a strided view; later runs with the probe as loaded from
``weight_probes``, C-contiguous). So a re-score can move a few ratios by one ulp from the ones
stored. The exact tests therefore score one row at a time (``row_stable``) and first re-score
every shard with the loaded probe (a ``rescore``: the keywords change, :func:`_stores`); the
dedup test also runs with the default batch, where the tables agree to ~1e-15.
"""

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from curation_assets.lib import commits
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import (
    AUDIT_SHARD_COUNTS,
    BIAS_AUDIT,
    DEDUPLICATED_IMAGES,
    IMAGE_EMBEDDINGS,
    IMAGE_UNIQUENESS,
    SAMPLE_WEIGHTS,
    WEIGHT_SHARD_STATS,
)
from curation_assets.lib.weights import patch, update
from curation_assets.lib.weights.plan import committed_term
from curation_assets.lib.weights.probe import load_probe
from curation_assets.lib.weights.shards import read_shards, score_shard
from curation_assets.lib.weights.totals import stats_frame
from curation_assets.lib.weights.uniqueness import read_uniqueness
from curation_assets.lib.weights.update import WeightsOutcome, update_weights
from curation_assets_tests.lib.weights.test_update import (
    BASE,
    BUDGET,
    SETTINGS,
    _add,
    _corpus,
    _no_encoder,
)
from curation_assets_tests.weights_inputs import DIM, write_uniqueness

ON = {"uniqueness_power": 1.0, "uniqueness_floor": 0.01}
KW = {"keywords": ["outdoors"]}
"""The audit setting of every run after :func:`_stores`' first (its rescore's)."""
COUNT_KEYS = ["shard", "attribute", "value", "hit"]


class ColumnRecordingStore(DeltaStore):
    """A DeltaStore that records which shards and columns of which table were read."""

    def __init__(self, root_uri: str) -> None:
        super().__init__(root_uri)
        self.reads: list[tuple[str, tuple[str, ...] | None, tuple[str, ...] | None]] = []

    def read(self, spec, *, shards=None, columns=None, version=None, keys=None):
        wanted = None if shards is None else tuple(shards)
        self.reads.append((spec.name, wanted, None if columns is None else tuple(columns)))
        return super().read(spec, shards=wanted, columns=columns, version=version, keys=keys)

    def shard_uris(self, table, shards):
        """The files of some shards: a read of their every column (streamed: read_shards)."""
        wanted = tuple(shards)
        self.reads.append((table, wanted, None))
        return super().shard_uris(table, wanted)

    def embeddings_read(self) -> set[str]:
        """Shards whose ``embedding`` column was read (``"*"``: a read of every shard)."""
        out: set[str] = set()
        for table, shards, columns in self.reads:
            if table == IMAGE_EMBEDDINGS.name and (columns is None or "embedding" in columns):
                out |= set(shards) if shards is not None else {"*"}
        return out


def _one_row_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Score one row at a time: a row's ratio no longer depends on its batch."""
    monkeypatch.setattr(update, "SCORE_BATCH_SHARE", 1e-12)
    assert BUDGET.rows(DIM * 8, share=update.SCORE_BATCH_SHARE) == 1


@pytest.fixture
def row_stable(monkeypatch):
    """:func:`_one_row_batches` for the whole test."""
    _one_row_batches(monkeypatch)


def _run(store: DeltaStore, *, old: bool = False, **changes) -> WeightsOutcome:
    """One weights run with :data:`KW`; ``old``: every shard scored from its embeddings."""
    settings = {**SETTINGS, **KW, **changes}
    if not old:
        return update_weights(store, settings, BUDGET, _no_encoder)

    def score_all(store, shards, source, **kwargs):
        return patch.redo_shards(store, shards, patch.PatchSource({}), **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(update, "redo_shards", score_all)
        return update_weights(store, settings, BUDGET, _no_encoder)


def _stores(tmp: Path, n: int = 2, changes: dict | None = None) -> list[DeltaStore]:
    """``n`` identical corpora, each after a full run then a rescore with the loaded probe.

    The first is the one patched, the second the one scored the old way.
    """
    changes = changes or {}
    stores = [_corpus(tmp / f"store{i}") for i in range(n)]
    for store in stores:
        if "uniqueness_power" in changes:
            write_uniqueness(store, BASE)
        assert _run(store, keywords=[], **changes).plan.mode == "full"
        assert _run(store, **changes).plan.mode == "rescore"
    return stores


def _tables(store: DeltaStore) -> dict[str, pl.DataFrame]:
    return {
        SAMPLE_WEIGHTS.name: store.read(SAMPLE_WEIGHTS).sort("image_id"),
        WEIGHT_SHARD_STATS.name: store.read(WEIGHT_SHARD_STATS).sort("shard"),
        AUDIT_SHARD_COUNTS.name: store.read(AUDIT_SHARD_COUNTS).sort(COUNT_KEYS),
        BIAS_AUDIT.name: store.read(BIAS_AUDIT),
    }


def _assert_same_tables(a: DeltaStore, b: DeltaStore, *, exact: bool = True) -> None:
    """Equal tables: every float bit for bit, or (not ``exact``) to 1e-13 (last-bit ratios)."""
    got, want = _tables(a), _tables(b)
    for name in got:
        if exact:
            assert got[name].equals(want[name]), name
        else:
            assert_frame_equal(
                got[name], want[name], check_exact=False, rel_tol=1e-13, abs_tol=1e-13
            )


def _assert_rescored(
    store: DeltaStore, shard: str, out: WeightsOutcome, *, sums_exact: bool = True
) -> None:
    """The shard's stored rows, stats row and counts are what score_shard gives it now.

    ``sums_exact=False``: the counts' ``weight_sum`` to 1e-13 (a drop patch subtracts).
    """
    summary = out.summary
    probe = load_probe(store, summary["probe_id"])
    frame, x, model_id = read_shards(store, [shard], SETTINGS["correct_for"])[shard]
    commit = commits.last_commit(store, "weights")
    assert commit is not None
    term = committed_term(commit)
    scored = score_shard(
        shard,
        frame,
        x,
        probe.model,
        model_id=model_id,
        probe_id=probe.probe_id,
        train_folds=probe.train_folds,
        scale=summary["scale"],
        w_min=SETTINGS["w_min"],
        w_max=SETTINGS["w_max"],
        batch_size=BUDGET.rows(DIM * 8, share=update.SCORE_BATCH_SHARE),
        keywords=KW["keywords"],
        uniqueness=term,
        uniqueness_scores=read_uniqueness(store, [shard]).get(shard) if term else None,
    )
    stored = store.read(SAMPLE_WEIGHTS, shards=[shard]).sort("image_id")
    assert stored.equals(scored.weights)
    stats = store.read(WEIGHT_SHARD_STATS).filter(shard=shard)
    assert stats.equals(stats_frame([scored.stats]))
    counts = store.read(AUDIT_SHARD_COUNTS).filter(shard=shard).sort(COUNT_KEYS)
    want = scored.counts.sort(COUNT_KEYS)
    if sums_exact:
        assert counts.equals(want)
    else:
        assert counts.drop("weight_sum").equals(want.drop("weight_sum"))
        np.testing.assert_allclose(counts["weight_sum"], want["weight_sum"], rtol=1e-13)


def _edit_dedup(store: DeltaStore, shard: str, *, drop: bool = True, revive: bool = False) -> str:
    """Change one shard's dedup rows as an incremental dedup does; returns the changed id.

    ``drop``: its first kept image becomes a duplicate of its third; always: the second kept
    image joins the group of the fourth (its component_id); ``revive``: its first removed
    image becomes kept.
    """
    rows = store.read(DEDUPLICATED_IMAGES, shards=[shard]).sort("image_id")
    kept = np.flatnonzero(rows["kept"].to_numpy())
    ids = rows["image_id"]
    target = int(np.flatnonzero(~rows["kept"].to_numpy())[0]) if revive else int(kept[0])
    i = pl.int_range(pl.len())
    if drop or revive:
        now_kept = revive
        rows = rows.with_columns(
            kept=pl.when(i == target).then(pl.lit(now_kept)).otherwise("kept"),
            duplicate_of=pl.when(i == target)
            .then(pl.lit(None if now_kept else ids[int(kept[2])], pl.String))
            .otherwise("duplicate_of"),
            similarity=pl.when(i == target)
            .then(pl.lit(None if now_kept else 0.98, pl.Float32))
            .otherwise("similarity"),
        )
    grown = pl.lit(ids[int(kept[3])], pl.String)  # joins another image's group
    rows = rows.with_columns(
        component_id=pl.when(i == int(kept[1])).then(grown).otherwise("component_id")
    )
    store.replace_shard(DEDUPLICATED_IMAGES, shard, DEDUPLICATED_IMAGES.conform(rows))
    return str(ids[target])


@pytest.mark.parametrize("batch", ["one_row", "default"])
@pytest.mark.parametrize("path", ["drop", "patch"])
def test_a_dedup_only_change_is_patched_without_embeddings_and_equals_a_rescore(
    tmp_path, monkeypatch, batch, path
):
    """A kept image removed: drop-patched (its rows alone), or patched with the drop off."""
    exact = batch == "one_row"
    if exact:
        _one_row_batches(monkeypatch)
    if path == "patch":
        monkeypatch.setattr(patch, "drop_patch", lambda *a, **k: {})
    store, old = _stores(tmp_path)
    before = store.shard_files(SAMPLE_WEIGHTS.name)
    for s in (store, old):
        dropped = _edit_dedup(s, "shard-b")
    watched = ColumnRecordingStore(store.root_uri)
    out = update_weights(watched, {**SETTINGS, **KW}, BUDGET, _no_encoder)
    assert out.plan.mode == "incremental" and out.plan.shards == ["shard-b"]
    drop = path == "drop"  # rows deleted by a tombstone, not the shard rewritten
    assert (out.summary["shards_patched"], out.summary["shards_scored"]) == (1, 0)
    assert (out.written, out.summary["rows_deleted_in_place"]) == ((0, 1) if drop else (1, 0))
    assert out.summary["shards_drop_patched"] == drop
    drop_note = "; 1 only lost kept images: those rows alone" if path == "drop" else ""
    assert out.plan.reason == (
        "scores 1 changed or new shards of 3; 1 patched from their stored raw ratios "
        f"(embeddings unchanged{drop_note}), 0 scored from their embeddings"
    )
    assert watched.embeddings_read() == set()  # the image ids only, never an embedding
    ids_read = (IMAGE_EMBEDDINGS.name, ("shard-b",), ("image_id", "shard")) in watched.reads
    assert ids_read == (path == "patch")  # the drop patch reads none of the shard's rows
    after = store.shard_files(SAMPLE_WEIGHTS.name)
    assert {s: after[s] for s in ("shard-a", "shard-c")} == {
        s: before[s] for s in ("shard-a", "shard-c")
    }
    assert dropped not in set(store.read(SAMPLE_WEIGHTS)["image_id"])
    reference = _run(old, old=True)
    assert (reference.summary["shards_scored"], reference.summary["shards_patched"]) == (1, 0)
    # the drop patch subtracts the dropped rows' weights from the counts' sums: to rounding
    _assert_same_tables(store, old, exact=exact and path == "patch")
    if exact:
        _assert_rescored(store, "shard-b", out, sums_exact=path == "patch")
        if path == "patch":
            assert out.totals == reference.totals
    assert _run(store).plan.mode == "current"


def test_a_patch_that_changes_no_row_rewrites_nothing(tmp_path, row_stable):
    (store,) = _stores(tmp_path, 1)
    before = store.shard_files(SAMPLE_WEIGHTS.name)
    _edit_dedup(store, "shard-a", drop=False)  # a component grows: no decision changes
    out = _run(store)
    assert out.plan.shards == ["shard-a"] and out.summary["shards_patched"] == 1
    assert out.written == 0 and store.shard_files(SAMPLE_WEIGHTS.name) == before
    _assert_rescored(store, "shard-a", out)


def test_a_newly_kept_image_falls_back_to_scoring_the_shard(tmp_path, row_stable):
    store, old = _stores(tmp_path)
    for s in (store, old):
        revived = _edit_dedup(s, "shard-c", drop=False, revive=True)
    watched = ColumnRecordingStore(store.root_uri)
    out = update_weights(watched, {**SETTINGS, **KW}, BUDGET, _no_encoder)
    assert out.plan.shards == ["shard-c"]
    assert (out.summary["shards_patched"], out.summary["shards_scored"], out.written) == (0, 1, 1)
    assert out.plan.reason == "scores 1 changed or new shards of 3"
    assert watched.embeddings_read() == {"shard-c"}
    assert revived in set(store.read(SAMPLE_WEIGHTS)["image_id"])
    _run(old, old=True)
    _assert_same_tables(store, old)
    _assert_rescored(store, "shard-c", out)


def test_a_changed_uniqueness_score_is_patched_and_equals_a_rescore(tmp_path, row_stable):
    on = {**ON, "mean_tolerance": 0.5}  # no rescale: the first pass alone
    store, old = _stores(tmp_path, changes=on)
    for s in (store, old):
        write_uniqueness(s, ["shard-a"], seed=5)  # shard-a's scores change
    watched = ColumnRecordingStore(store.root_uri)
    out = update_weights(watched, {**SETTINGS, **KW, **on}, BUDGET, _no_encoder)
    assert out.plan.shards == ["shard-a"] and out.summary["shards_patched"] == 1
    assert out.summary["shards_scored"] == 0 and out.written == 1
    assert watched.embeddings_read() == set()
    assert {s for t, s, _ in watched.reads if t == IMAGE_UNIQUENESS.name} == {("shard-a",)}
    _run(old, old=True, **on)
    _assert_same_tables(store, old)
    _assert_rescored(store, "shard-a", out)


def test_a_mean_drift_rescales_every_shard_without_reading_embeddings(tmp_path, row_stable):
    store, old = _stores(tmp_path)
    for s in (store, old):
        _add(s, tmp_path, "shard-d", 300, seed=7, filter_shift=1.5)
    drift = {"mean_tolerance": 1e-6, "refit_prior_shift": 1.0}
    watched = ColumnRecordingStore(store.root_uri)
    out = update_weights(watched, {**SETTINGS, **KW, **drift}, BUDGET, _no_encoder)
    assert out.plan.mode == "incremental" and "rescaled every shard" in out.plan.reason
    assert "(4 patched from their stored raw ratios, 0 scored" in out.plan.reason
    assert (out.summary["shards_scored"], out.summary["shards_patched"], out.written) == (1, 4, 5)
    assert watched.embeddings_read() == {"shard-d"}  # the new shard's first scoring only
    reference = _run(old, old=True, **drift)
    assert (reference.summary["shards_scored"], reference.written) == (5, 5)
    assert reference.summary["scale"] == out.summary["scale"]
    _assert_same_tables(store, old)
    for shard in (*BASE, "shard-d"):
        _assert_rescored(store, shard, out)
    w = store.read(SAMPLE_WEIGHTS)["weight"].to_numpy()
    assert abs(w.mean() - 1.0) <= 1e-6


def test_zero_shot_concepts_with_an_encoder_are_never_patched(tmp_path):
    basis = np.eye(DIM, dtype=np.float32)

    def load_encoder():
        return (lambda texts: basis[[0 if t == "a photo." else 1 for t in texts]]), "test"

    settings = {**SETTINGS, "concepts": {"c": "x"}}
    store = _corpus(tmp_path)
    assert update_weights(store, settings, BUDGET, load_encoder).plan.mode == "full"
    _edit_dedup(store, "shard-b")
    watched = ColumnRecordingStore(store.root_uri)
    out = update_weights(watched, settings, BUDGET, load_encoder)
    assert out.plan.shards == ["shard-b"]
    assert (out.summary["shards_patched"], out.summary["shards_scored"]) == (0, 1)
    assert watched.embeddings_read() == {"shard-b"}  # the concepts are read off them
    assert "concept" in set(store.read(AUDIT_SHARD_COUNTS, shards=["shard-b"])["attribute"])
