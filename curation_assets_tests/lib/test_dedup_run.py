"""Dedup over Delta tables: re-runs are no-ops, degenerate inputs succeed, kills converge."""

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from curation_assets.lib import dedup_run
from curation_assets.lib.cluster import assign
from curation_assets.lib.commits import STAGE_COMMITS, last_commit
from curation_assets.lib.dedup_run import (
    DEDUP_RUNS,
    DEDUPLICATED_IMAGES,
    DUPLICATE_PAIRS,
    N_CLUSTERINGS,
    assignments_frame,
    assignments_spec,
    centroids_spec,
    centroids_version,
    run_dedup,
    write_dedup,
)
from curation_assets.lib.embed import IMAGE_EMBEDDINGS
from curation_assets.lib.filter import FILTERED_IMAGES
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import RAW_IMAGES

MODEL = "test:model@none"
DIM = 16
POLICY = ("resolution", "earliest", "smallest_id")


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _vectors(n: int, n_dups: int, seed: int) -> np.ndarray:
    """``n`` random unit vectors; the last ``n_dups`` are tiny perturbations of the first."""
    rng = np.random.default_rng(seed)
    x = _unit(rng.normal(size=(n, DIM)))
    if n_dups:
        x[n - n_dups :] = _unit(x[:n_dups] + 0.01 * rng.normal(size=(n_dups, DIM)))
    return x


def _write_centroids(store: DeltaStore) -> None:
    rng = np.random.default_rng(123)
    for c in range(N_CLUSTERINGS):
        cent = _unit(rng.normal(size=(3, DIM)))
        store.replace_table(
            centroids_spec(c),
            pl.DataFrame(
                {
                    "centroid_id": np.arange(3, dtype=np.int32),
                    "centroid": pl.Series(list(cent), dtype=pl.List(pl.Float32)),
                    "train_size": np.ones(3, np.int64),
                    "version": centroids_version(cent),
                    "seed": c,
                    "model_id": MODEL,
                    "trained_at": datetime(2026, 1, 1, tzinfo=UTC),
                }
            ),
        )


def _add_shard(store: DeltaStore, shard: str, x: np.ndarray, *, start: int = 0) -> list[str]:
    """Write a shard's raw, embedding, filtered and assignment rows (every image kept)."""
    n = x.shape[0]
    ids = [f"{shard}-{start + i:04d}" for i in range(n)]
    at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=start)
    base = {
        "image_id": ids,
        "shard": shard,
        "source_uri": [f"/nowhere/{i}.jpg" for i in ids],
        "caption": None,
        "width": np.full(n, 64, np.int32),
        "height": np.full(n, 64, np.int32),
    }
    raw = pl.DataFrame(
        {
            **base,
            "format": "JPEG",
            "n_bytes": np.full(n, 100, np.int64),
            "n_frames": np.ones(n, np.int32),
            "ingested_at": at,
        },
        schema_overrides={"caption": pl.String},
    )
    store.replace_shard(RAW_IMAGES, shard, RAW_IMAGES.conform(raw))
    emb = pl.DataFrame(
        {
            "image_id": ids,
            "shard": shard,
            "embedding": pl.Series(list(x), dtype=pl.List(pl.Float32)),
            "model_id": MODEL,
            "dim": np.full(n, DIM, np.int32),
        }
    )
    store.replace_shard(IMAGE_EMBEDDINGS, shard, IMAGE_EMBEDDINGS.conform(emb))
    filtered = pl.DataFrame(base, schema_overrides={"caption": pl.String})
    store.replace_shard(FILTERED_IMAGES, shard, FILTERED_IMAGES.conform(filtered))
    for c in range(N_CLUSTERINGS):
        cent = dedup_run.load_centroids(store, c)
        assert cent is not None
        cluster, cos = assign(x, cent.matrix, top=1)
        store.replace_shard(
            assignments_spec(c),
            shard,
            assignments_frame(ids, shard, cluster[:, 0], cos[:, 0], cent.version),
        )
    return ids


def _dedup(store: DeltaStore) -> dedup_run.DedupOutcome:
    outcome = run_dedup(store, tau=0.95, policy=POLICY)
    write_dedup(store, outcome)
    return outcome


def _tables(store: DeltaStore) -> dict[str, pl.DataFrame]:
    return {
        DEDUPLICATED_IMAGES.name: store.read(DEDUPLICATED_IMAGES).sort("image_id"),
        DUPLICATE_PAIRS.name: store.read(DUPLICATE_PAIRS).sort("image_id_a", "image_id_b"),
    }


def _versions(store: DeltaStore) -> dict[str, int | None]:
    names = [DEDUPLICATED_IMAGES.name, DUPLICATE_PAIRS.name, DEDUP_RUNS.name, "stage_commits"]
    return {t: store.version(t) for t in names}


@pytest.fixture
def store(tmp_path):
    s = DeltaStore(str(tmp_path / "delta"))
    _write_centroids(s)
    return s


def test_second_run_with_nothing_new_is_a_noop(store):
    _add_shard(store, "a", _vectors(40, 6, seed=1))
    first = _dedup(store)
    assert first.plan.mode == "full" and first.stats["removed"] == 6
    before, versions = _tables(store), _versions(store)
    again = _dedup(store)
    assert again.plan.mode == "current", again.plan.reason
    assert _versions(store) == versions  # nothing written, not even a log row
    for name, df in _tables(store).items():
        assert df.equals(before[name]), name
    assert again.stats["removed"] == 6 and again.recall == first.recall


def test_incremental_then_noop(store):
    _add_shard(store, "a", _vectors(30, 4, seed=2))
    _dedup(store)
    _add_shard(store, "b", _vectors(10, 0, seed=3), start=100)
    inc = _dedup(store)
    assert inc.plan.mode == "incremental" and inc.stats["new_rows"] == 10
    assert _dedup(store).plan.mode == "current"
    assert store.read(DEDUP_RUNS).sort("run_at")["mode"].to_list() == ["full", "incremental"]


@pytest.mark.parametrize(
    ("n", "n_dups"),
    [(1, 0), (12, 0), (2, 1)],
    ids=["one image", "no near duplicates", "one pair"],
)
def test_degenerate_inputs_succeed_twice(store, n, n_dups):
    _add_shard(store, "a", _vectors(n, n_dups, seed=4))
    first = _dedup(store)
    assert first.images.height == n and int((~first.images["kept"]).sum()) == n_dups
    if not first.recall["true_pairs"]:  # no pair to find: no NaN recall
        assert first.recall["recall"] == []
    assert all(np.isfinite(r) for r in first.recall["recall"])
    assert _dedup(store).plan.mode == "current"


def test_every_image_filtered_out_succeeds(store):
    _add_shard(store, "a", _vectors(5, 0, seed=5))
    store.replace_shard(FILTERED_IMAGES, "a", FILTERED_IMAGES.empty())
    first = _dedup(store)
    assert first.images.height == 0 and first.pairs.height == 0
    assert _dedup(store).plan.mode in ("current", "full")


class _Killed(Exception):
    pass


@pytest.mark.parametrize("kill_after", [0, 1, 2, 3])
def test_kill_between_writes_converges_to_the_clean_result(tmp_path, monkeypatch, kill_after):
    """Kill an incremental run after 0..3 of its table writes (always before the commit)."""

    def build(root):
        s = DeltaStore(str(root))
        _write_centroids(s)
        _add_shard(s, "a", _vectors(30, 5, seed=6))
        _dedup(s)
        # the new shard holds near copies of old images: decisions of old rows change too
        _add_shard(s, "b", _vectors(30, 5, seed=6)[:8] * 0.999 + 0.0, start=200)
        return s

    clean = build(tmp_path / "clean")
    _dedup(clean)
    expected = _tables(clean)

    s = build(tmp_path / "killed")
    real = DeltaStore._write
    calls = {"n": 0}
    watched = {t.name for t in dedup_run.DEDUP_OUTPUTS} | {STAGE_COMMITS.name}

    def dying(self, name, data, **kwargs):
        if name in watched:
            calls["n"] += 1
            if calls["n"] > kill_after:
                raise _Killed
        return real(self, name, data, **kwargs)

    monkeypatch.setattr(DeltaStore, "_write", dying)
    with pytest.raises(_Killed):
        _dedup(s)
    monkeypatch.setattr(DeltaStore, "_write", real)
    assert last_commit(s, "dedup") is not None
    rerun = _dedup(s)
    assert rerun.plan.mode == "incremental", rerun.plan.reason
    if kill_after > 1:
        assert "recovering" in rerun.plan.reason
    for name, df in _tables(s).items():
        assert df.equals(expected[name]), name
    assert s.read(DEDUP_RUNS).sort("run_at")["mode"].to_list() == ["full", "incremental"]
    assert s.read(STAGE_COMMITS).height == 2
    assert _dedup(s).plan.mode == "current"
