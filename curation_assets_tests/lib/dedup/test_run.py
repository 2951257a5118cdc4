"""Dedup over Delta tables: re-runs are no-ops, degenerate inputs succeed, kills converge."""

import threading

import numpy as np
import pytest

from curation_assets.lib import revisions
from curation_assets.lib.commits import last_commit
from curation_assets.lib.dedup import DEDUP_OUTPUTS, DEDUP_STAGE
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import DEDUP_MEMBERS, DEDUP_RUNS, FILTERED_IMAGES, STAGE_COMMITS
from curation_assets_tests.lib.dedup.helpers import (
    add_shard,
    dedup_tables,
    run_and_write,
    table_versions,
    vectors,
    write_centroids,
)


@pytest.fixture
def store(tmp_path):
    s = DeltaStore(str(tmp_path / "delta"))
    write_centroids(s)
    return s


def test_second_run_with_nothing_new_is_a_noop(store):
    add_shard(store, "a", vectors(40, 6, seed=1))
    first = run_and_write(store)
    assert first.plan.mode == "full" and first.stats["removed"] == 6
    before, versions = dedup_tables(store), table_versions(store)
    again = run_and_write(store)
    assert again.plan.mode == "current", again.plan.reason
    assert table_versions(store) == versions  # nothing written, not even a log row
    for name, df in dedup_tables(store).items():
        assert df.equals(before[name]), name
    assert again.stats["removed"] == 6
    assert again.recall["recall"] == first.recall["recall"]


def test_incremental_then_noop(store):
    add_shard(store, "a", vectors(30, 4, seed=2))
    run_and_write(store)
    add_shard(store, "b", vectors(10, 0, seed=3), start=100)
    inc = run_and_write(store)
    assert inc.plan.mode == "incremental" and inc.stats["new_rows"] == 10
    assert run_and_write(store).plan.mode == "current"
    assert store.read(DEDUP_RUNS).sort("run_at")["mode"].to_list() == ["full", "incremental"]


@pytest.mark.parametrize(
    ("n", "n_dups"),
    [(1, 0), (12, 0), (2, 1)],
    ids=["one image", "no near duplicates", "one pair"],
)
def test_degenerate_inputs_succeed_twice(store, n, n_dups):
    add_shard(store, "a", vectors(n, n_dups, seed=4))
    first = run_and_write(store)
    assert first.stats["images"] == n and first.stats["removed"] == n_dups
    if not first.recall["true_pairs"]:  # no pair to find: no NaN recall
        assert first.recall["recall"] == []
    assert all(np.isfinite(r) for r in first.recall["recall"])
    assert run_and_write(store).plan.mode == "current"


def test_every_image_filtered_out_succeeds(store):
    add_shard(store, "a", vectors(5, 0, seed=5))
    store.replace_shard(FILTERED_IMAGES, "a", FILTERED_IMAGES.empty())
    first = run_and_write(store)
    assert first.stats["images"] == 0 and first.pairs.height == 0
    assert run_and_write(store).plan.mode in ("current", "full")


class _Killed(Exception):
    pass


def _run_killed_after(store: DeltaStore, writes: int, monkeypatch) -> None:
    """A dedup run on ``store`` killed before its ``writes + 1``-th write of an output."""
    real = DeltaStore._write
    calls = {"n": 0}
    watched = {t.name for t in DEDUP_OUTPUTS} | {STAGE_COMMITS.name}

    def dying(self, name, data, **kwargs):
        if name in watched:
            calls["n"] += 1
            if calls["n"] > writes:
                raise _Killed
        return real(self, name, data, **kwargs)

    with monkeypatch.context() as mp:
        mp.setattr(DeltaStore, "_write", dying)
        with pytest.raises(_Killed):
            run_and_write(store)


@pytest.mark.parametrize("kill_after", [0, 1, 2, 3, 4, 5])
def test_kill_between_writes_converges_to_the_clean_result(tmp_path, monkeypatch, kill_after):
    """Kill an incremental run after 0..5 of its table writes (always before the commit).

    Its writes: the new shard's layout, the changed shards of deduplicated_images (one
    commit), the pair graph (two tables), the run log, then the commit.
    """

    def build(root):
        s = DeltaStore(str(root))
        write_centroids(s)
        add_shard(s, "a", vectors(30, 5, seed=6))
        run_and_write(s)
        # the new shard holds near copies of old images: decisions of old rows change too
        add_shard(s, "b", vectors(30, 5, seed=6)[:8] * 0.999 + 0.0, start=200)
        return s

    clean = build(tmp_path / "clean")
    run_and_write(clean)
    expected = dedup_tables(clean)

    s = build(tmp_path / "killed")
    _run_killed_after(s, kill_after, monkeypatch)
    assert last_commit(s, "dedup") is not None
    rerun = run_and_write(s)
    assert rerun.plan.mode == "incremental", rerun.plan.reason
    if kill_after > 0:
        assert "recovering" in rerun.plan.reason
    for name, df in dedup_tables(s).items():
        assert df.equals(expected[name]), name
    assert s.read(DEDUP_RUNS).sort("run_at")["mode"].to_list() == ["full", "incremental"]
    assert s.read(STAGE_COMMITS).height == 2
    assert run_and_write(s).plan.mode == "current"


@pytest.mark.parametrize("kill_after", range(8))
def test_a_kill_around_the_appended_changes_converges(tmp_path, monkeypatch, kill_after):
    """Kill an incremental run whose old decisions change, after 0..7 of its table writes.

    Its writes: the new shard's layout and rows, the old shard's changed rows (an append to
    ``deduplicated_images``), the pair graph, the run log, the commit. The re-run rewrites a
    shard whose changes were appended without a commit, and equals the clean run.
    """
    monkeypatch.setattr(revisions, "FOLD_SHARE", 0.5)  # no fold: keep the changes appended

    def build(root):
        s = DeltaStore(str(root))
        write_centroids(s)
        x = vectors(30, 0, seed=9)
        add_shard(s, "a", x)
        run_and_write(s)
        copies = x[:5] + 0.001  # ingested earlier: the copies win, old decisions change
        add_shard(s, "b", copies / np.linalg.norm(copies, axis=1, keepdims=True), start=-100)
        return s

    clean = build(tmp_path / "clean")
    run_and_write(clean)
    assert clean.change_row_count("deduplicated_images") == 5
    expected = dedup_tables(clean)
    s = build(tmp_path / "killed")
    _run_killed_after(s, kill_after, monkeypatch)
    rerun = run_and_write(s)
    assert rerun.plan.mode == "incremental", rerun.plan.reason
    for name, df in dedup_tables(s).items():
        assert df.equals(expected[name]), name
    assert run_and_write(s).plan.mode == "current"


def test_changes_of_a_killed_run_are_undone_when_the_next_run_decides_otherwise(
    tmp_path, monkeypatch
):
    """Changes appended by a killed run are not left standing when the next run differs.

    Killed before its commit, a run leaves old decisions appended; the new shard is then
    filtered out, so the next run must rewrite the old shard (its decisions as committed).
    """
    from curation_assets.lib.dedup import write as dedup_write

    monkeypatch.setattr(revisions, "FOLD_SHARE", 0.5)  # no fold: keep the changes appended
    x = vectors(30, 0, seed=9)
    clean = DeltaStore(str(tmp_path / "clean"))
    write_centroids(clean)
    add_shard(clean, "a", x)
    run_and_write(clean)
    s = DeltaStore(str(tmp_path / "killed"))
    write_centroids(s)
    add_shard(s, "a", x)
    run_and_write(s)
    copies = x[:5] + 0.001  # ingested earlier: the copies win, old decisions change
    add_shard(s, "b", copies / np.linalg.norm(copies, axis=1, keepdims=True), start=-100)
    with monkeypatch.context() as mp:
        mp.setattr(dedup_write, "record_commit", lambda *a, **k: (_ for _ in ()).throw(_Killed))
        with pytest.raises(_Killed):
            run_and_write(s)
    assert s.change_row_count("deduplicated_images") == 5  # appended, not committed
    s.replace_shard(FILTERED_IMAGES, "b", FILTERED_IMAGES.empty())
    rerun = run_and_write(s)
    assert rerun.plan.mode == "incremental", rerun.plan.reason
    for name, df in dedup_tables(clean).items():
        assert dedup_tables(s)[name].equals(df), name


def test_a_shard_rewritten_with_the_same_rows_changes_nothing(store):
    """Another instance re-ingests a shard: new files, the same rows. No log row, no rewrite."""
    x = vectors(30, 4, seed=8)
    add_shard(store, "a", x)
    run_and_write(store)
    before, versions = dedup_tables(store), table_versions(store)
    add_shard(store, "a", x)  # the same rows, written again
    again = run_and_write(store)
    assert again.plan.mode == "current" and "same rows" in again.plan.reason
    assert store.read(DEDUP_RUNS).height == 1
    for name, df in dedup_tables(store).items():
        assert df.equals(before[name]), name
    assert table_versions(store)["stage_commits"] == versions["stage_commits"] + 1
    assert run_and_write(store).plan.mode == "current"  # the commit records the new inputs


def test_copies_that_lose_rewrite_only_their_own_shard(store):
    """New copies of old images join their groups without winning: old shards stay as they are."""
    x = vectors(30, 0, seed=9)
    add_shard(store, "a", x)
    run_and_write(store)
    files = store.shard_files("deduplicated_images")["a"]
    copies = x[:5] + 0.001  # near copies, ingested later: the old images stay kept
    add_shard(store, "b", copies / np.linalg.norm(copies, axis=1, keepdims=True), start=100)
    inc = run_and_write(store)
    assert inc.plan.mode == "incremental" and inc.stats["removed"] == 5
    assert inc.write_shards == ["b"] and inc.stats["previously_kept_now_removed"] == 0
    assert (inc.stats["rewritten_shards"], inc.stats["patched_shards"]) == (1, 0)
    assert store.shard_files("deduplicated_images")["a"] == files


@pytest.mark.parametrize("folded", [False, True])
def test_copies_that_win_append_the_old_shards_changes_and_equal_a_full_run(
    tmp_path, monkeypatch, folded
):
    """Earlier-ingested copies win their groups: old decisions are appended, not rewritten.

    The old images' new decisions go to the changes partition (merge-on-read), the old shard's
    files stay, and the tables equal a full run's. Once the changes reach the fold share (5 of
    30 rows here), the run folds them into the shard instead.
    """
    monkeypatch.setattr(revisions, "FOLD_SHARE", 0.1 if folded else 0.5)

    def shards(s):
        x = vectors(30, 0, seed=9)
        add_shard(s, "a", x)
        copies = x[:5] + 0.001
        return lambda: add_shard(
            s, "b", copies / np.linalg.norm(copies, axis=1, keepdims=True), start=-100
        )

    store = DeltaStore(str(tmp_path / "inc"))
    write_centroids(store)
    land_b = shards(store)
    run_and_write(store)
    files = store.shard_files("deduplicated_images")["a"]
    land_b()
    inc = run_and_write(store)
    assert inc.plan.mode == "incremental" and inc.stats["previously_kept_now_removed"] == 5
    # the figures say so: b written whole, a patched with its 5 changed rows
    assert inc.stats["rewritten_shards"] == 1
    assert (inc.stats["patched_shards"], inc.stats["patched_rows"]) == (1, 5)
    assert (store.shard_files("deduplicated_images")["a"] == files) is not folded
    assert store.change_row_count("deduplicated_images") == (0 if folded else 5)
    full = DeltaStore(str(tmp_path / "full"))
    write_centroids(full)
    shards(full)()
    assert run_and_write(full).plan.mode == "full"
    for name, df in dedup_tables(full).items():
        assert dedup_tables(store)[name].equals(df), name
    assert run_and_write(store).plan.mode == "current"


class _ReversedEngine:
    """An engine whose units complete last-first (as Ray's may): results must not care."""

    name = "reversed"

    def __init__(self) -> None:
        self.keys: list[str] = []

    def map_shards(self, work, keys, *, wants_gpu=False, on_progress=None):
        from curation_assets.lib.engine import LocalEngine

        self.keys += list(keys)  # one call per clustering
        done = list(LocalEngine().map_shards(work, keys))
        yield from reversed(done)


def test_units_on_an_engine_completing_out_of_order_give_the_same_tables(tmp_path):
    """Each (clustering, bucket) unit is one engine task; results merge in unit order."""
    from curation_assets.lib.memory import MemoryBudget

    stores = [DeltaStore(str(tmp_path / name / "delta")) for name in ("local", "engine")]
    for s in stores:
        write_centroids(s)
        add_shard(s, "a", vectors(600, 8, seed=11))
    small = MemoryBudget(0.05)  # several buckets: several units per clustering
    local = run_and_write(stores[0], budget=small)
    engine = _ReversedEngine()
    other = run_and_write(stores[1], budget=small, engine=engine)
    assert len(engine.keys) == local.stats["units"] > 5 and other.stats["engine"] == "reversed"
    assert local.stats["engine"] == "local"
    for name, df in dedup_tables(stores[0]).items():
        assert df.equals(dedup_tables(stores[1])[name]), name
    assert other.stats["removed"] == local.stats["removed"] == 8


class _LosingEngine:
    """An engine that loses the units of clustering 2 (a worker died)."""

    name = "losing"

    def map_shards(self, work, keys, *, wants_gpu=False, on_progress=None):
        from curation_assets.lib.engine import LocalEngine

        if keys and keys[0].startswith("2:"):
            raise RuntimeError("unit 2:0 lost")
        yield from LocalEngine().map_shards(work, keys)


def test_a_failed_search_leaves_no_staged_copy_and_the_next_run_completes(tmp_path):
    from pathlib import Path

    from curation_assets.lib.dedup import run_dedup
    from curation_assets.lib.dedup.layout import SCRATCH_FOLDER
    from curation_assets.lib.memory import MemoryBudget

    stores = [DeltaStore(str(tmp_path / name / "delta")) for name in ("failed", "clean")]
    for s in stores:
        write_centroids(s)
        add_shard(s, "a", vectors(600, 8, seed=11))
    small = MemoryBudget(0.05)
    with pytest.raises(RuntimeError, match="2:0 lost"):
        run_dedup(stores[0], tau=0.95, policy=None, budget=small, engine=_LosingEngine())
    scratch = Path(stores[0].uri(SCRATCH_FOLDER))
    assert not scratch.exists()  # clustering 2's staged copy is gone
    again = run_and_write(stores[0], budget=small)
    assert again.plan.mode == "full"
    run_and_write(stores[1], budget=small)
    for name, df in dedup_tables(stores[0]).items():
        assert df.equals(dedup_tables(stores[1])[name]), name


def test_a_dedup_waits_for_the_stage_lock_then_does_its_work(store):
    """A second run on the root waits: it must not empty the layout or scratch another reads."""
    add_shard(store, "a", vectors(40, 6, seed=11))
    done: list = []
    with store.lock(DEDUP_STAGE):
        waiting = threading.Thread(target=lambda: done.append(run_and_write(store)))
        waiting.start()
        waiting.join(timeout=2.0)
        assert waiting.is_alive()  # held back by the lock
        assert last_commit(store, DEDUP_STAGE) is None
        assert not store.exists(DEDUP_MEMBERS.name)  # nothing laid out yet
    waiting.join(timeout=120)
    assert not waiting.is_alive() and done[0].plan.mode == "full"
    assert last_commit(store, DEDUP_STAGE) is not None


def test_two_dedups_at_once_on_one_root_equal_one_run(tmp_path):
    """Two runs at once on one Delta root: one does the work, the other finds it current.

    Each has its own store object, as two Dagster instances would. The tables equal one run's
    on a twin root.
    """
    roots = [DeltaStore(str(tmp_path / name)) for name in ("shared", "twin")]
    for s in roots:
        write_centroids(s)
        add_shard(s, "a", vectors(60, 8, seed=12))
        add_shard(s, "b", vectors(30, 3, seed=13), start=100)
    shared = roots[0]
    outcomes: list = []
    errors: list[BaseException] = []

    def one() -> None:
        try:  # each with its own store object, as two processes would have
            outcomes.append(run_and_write(DeltaStore(shared.root_uri)))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert sorted(o.plan.mode for o in outcomes) == ["current", "full"]
    run_and_write(roots[1])
    want, got = dedup_tables(roots[1]), dedup_tables(shared)
    for name, df in want.items():
        assert got[name].equals(df), name
