"""The local merge: an update merges only the components it can change, with equal results.

Each scenario builds one committed state, copies it, and runs the same update twice: merging
the affected subgraph (the default) and re-merging the whole graph (``local_merge=False``).
Every table the stage writes, and every figure a commit keeps, must be equal.
"""

import shutil

import numpy as np
import polars as pl
import pytest
from deltalake import DeltaTable

from curation_assets.lib.commits import last_commit
from curation_assets.lib.dedup import localgraph
from curation_assets.lib.dedup.io import stored_pairs
from curation_assets.lib.dedup.localgraph import local_graph
from curation_assets.lib.dedup.run import DedupOutcome
from curation_assets.lib.dedup.sweep import committed_stored_pairs
from curation_assets.lib.explain.snapshot import AsOf, Snapshot
from curation_assets.lib.memory import MemoryBudget
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import (
    CANDIDATE_PAIRS,
    DEDUPLICATED_IMAGES,
    DUPLICATE_MEMBERS,
    DUPLICATE_PAIRS,
    FILTERED_IMAGES,
)
from curation_assets_tests.lib.dedup.helpers import (
    DIM,
    add_shard,
    run_and_write,
    unit,
    write_centroids,
)

FLOOR = 0.9
FIGURES = (
    "images",
    "kept",
    "removed",
    "pairs",
    "new_pairs",
    "candidate_pairs",
    "images_on_pairs",
    "components_with_duplicates",
    "largest_component",
    "removed_below_tau",
    "found_by_count",
    "pairs_per_clustering",
    "previously_kept_now_removed",
)


@pytest.fixture(autouse=True, params=["fold", "append"])
def graph_writes(request, monkeypatch) -> str:
    """Each scenario twice: the subgraph appended as change rows, and the tables folded.

    These graphs are small, so an update's rows exceed the default fold share and the tables
    are rewritten ("fold"); "append" raises the share so that every update appends.
    """
    if request.param == "append":
        monkeypatch.setattr(localgraph, "GRAPH_FOLD_SHARE", 1e9)
    return request.param


def _near(x: np.ndarray, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return unit(x + noise * rng.normal(size=x.shape))


def _base() -> dict[str, np.ndarray]:
    """Three shards: groups within and across them, close copies (≥ τ) and band ones."""
    rng = np.random.default_rng(5)
    a = unit(rng.normal(size=(40, DIM)))
    b = np.concatenate([_near(a[:8], 0.01, 1), unit(rng.normal(size=(24, DIM)))])
    c = np.concatenate(
        [
            _near(a[8:14], 0.08, 2),  # band pairs with a
            _near(b[10:16], 0.01, 3),  # groups with b
            _near(b[20:23], 0.08, 4),  # on the graph only by a band pair with b
            unit(rng.normal(size=(20, DIM))),
        ]
    )
    return {"a": a, "b": b, "c": c}


def _table(store: DeltaStore, spec, keys: list[str]) -> pl.DataFrame:
    return store.read(spec).sort(keys)


def _tables(store: DeltaStore) -> dict[str, pl.DataFrame]:
    return {
        "pairs": _table(store, DUPLICATE_PAIRS, ["image_id_a", "image_id_b"]),
        "band": _table(store, CANDIDATE_PAIRS, ["image_id_a", "image_id_b"]),
        "members": _table(store, DUPLICATE_MEMBERS, ["image_id"]),
        "decisions": store.read(DEDUPLICATED_IMAGES)
        .select("image_id", "shard", "kept", "duplicate_of", "similarity", "component_id")
        .sort("image_id"),
    }


def _committed_base(path) -> tuple[DeltaStore, DedupOutcome]:
    """The base shards at ``path``, deduplicated in full (a band kept down to FLOOR)."""
    store = DeltaStore(str(path))
    write_centroids(store)
    for name, x in _base().items():
        add_shard(store, name, x)
    return store, run_and_write(store, tau_min=FLOOR)


def _both(tmp_path, update) -> tuple:
    """The committed base in two copies, ``update`` applied to each, then local vs whole."""
    store, first = _committed_base(tmp_path / "local")
    assert first.plan.mode == "full" and first.stats["candidate_pairs"] > 0
    shutil.copytree(tmp_path / "local", tmp_path / "whole")
    whole = DeltaStore(str(tmp_path / "whole"))
    update(store)
    update(whole)
    a = run_and_write(store)
    b = run_and_write(whole, local_merge=False)
    return store, whole, a, b


def _assert_equal(store, whole, a, b) -> None:
    assert a.plan.mode == b.plan.mode == "incremental"
    assert a.merged.local is not None and b.merged.local is None
    for name, df in _tables(whole).items():
        assert _tables(store)[name].equals(df), name
    for key in FIGURES:
        assert a.stats[key] == b.stats[key], key
    # the subgraph really is a part: fewer members than the graph
    assert a.merged.members.height < _tables(store)["members"].height


def test_copies_that_win_and_lose_in_a_new_shard(tmp_path):
    base = _base()

    def land(s: DeltaStore) -> None:
        copies = np.concatenate([_near(base["a"][20:24], 0.01, 7), _near(base["c"][:3], 0.08, 8)])
        add_shard(s, "d", copies, start=-50)  # ingested earlier: some copies win their groups

    store, whole, a, b = _both(tmp_path, land)
    _assert_equal(store, whole, a, b)
    assert a.stats["previously_kept_now_removed"] > 0


def test_a_changed_shard_whose_images_leave_the_graph(tmp_path):
    def drop(s: DeltaStore) -> None:
        kept = s.read(FILTERED_IMAGES, shards=["b"])
        gone = [f"b-{i:04d}" for i in (*range(5), 20, 21, 22)]
        s.replace_shard(FILTERED_IMAGES, "b", kept.filter(~pl.col("image_id").is_in(gone)))

    store, whole, a, b = _both(tmp_path, drop)
    _assert_equal(store, whole, a, b)
    # c's band copies of b-0020..22 had no other pair: they left the graph
    members = set(_tables(store)["members"]["image_id"])
    assert not {f"c-{i:04d}" for i in range(12, 15)} & members


def test_two_updates_in_a_row_stay_equal(tmp_path):
    base = _base()

    def land(s: DeltaStore) -> None:
        add_shard(s, "d", _near(base["b"][16:20], 0.01, 9), start=-20)

    store, whole, a, b = _both(tmp_path, land)
    _assert_equal(store, whole, a, b)
    for s in (store, whole):
        add_shard(s, "e", _near(base["a"][30:36], 0.05, 10), start=-90)
    a = run_and_write(store)
    b = run_and_write(whole, local_merge=False)
    _assert_equal(store, whole, a, b)


@pytest.mark.parametrize("shards", [["b"], ["c"]])
def test_the_subgraph_holds_whole_components_and_every_pair_touching_them(tmp_path, shards):
    store, out = _committed_base(tmp_path)
    assert out.plan.commit is None  # a full run: read the graph as committed now
    outputs = last_commit(store, "dedup").outputs
    local = local_graph(store, outputs, shards, [])
    members = store.read(DUPLICATE_MEMBERS)
    affected = members.filter(pl.col("component_id").is_in(local.components.implode()))
    assert local.members.sort("image_id").equals(affected.sort("image_id"))
    assert set(members.filter(pl.col("shard").is_in(shards))["image_id"]) <= set(
        local.members["image_id"]
    )
    ids = local.members["image_id"].implode()
    every = stored_pairs(store, outputs)
    touching = every.filter(pl.col("image_id_a").is_in(ids) | pl.col("image_id_b").is_in(ids))
    assert local.pairs.equals(touching)
    # a pair ≥ τ never joins an affected component to another one
    strong = touching.filter(pl.col("similarity") >= 0.95)
    assert strong["image_id_a"].is_in(ids).all() and strong["image_id_b"].is_in(ids).all()


def test_the_sweep_reads_the_committed_pairs_within_the_budget(tmp_path):
    base = _base()

    def land(s: DeltaStore) -> None:
        add_shard(s, "d", _near(base["a"][:4], 0.01, 11), start=-10)

    store, _, a, _ = _both(tmp_path, land)
    outputs = last_commit(store, "dedup").outputs
    pairs, n = committed_stored_pairs(store, MemoryBudget(64))
    assert pairs is not None and n == a.stats["pairs"] + a.stats["candidate_pairs"]
    assert pairs.equals(stored_pairs(store, outputs).select(pairs.columns))
    skipped, n_again = committed_stored_pairs(store, MemoryBudget(n * 400 * 4 / 2**20 * 0.9))
    # from the Delta log: change rows not folded yet make it an upper bound
    assert skipped is None and n_again >= n


def test_a_run_with_nothing_to_do_reads_no_graph(tmp_path, monkeypatch):
    from curation_assets.lib.dedup import io

    store, first = _committed_base(tmp_path)

    def unread(*args, **kwargs):
        raise AssertionError("the committed graph was read")

    monkeypatch.setattr(io, "committed_graph", unread)
    again = run_and_write(store)
    assert again.plan.mode == "current"
    assert again.merged.local is not None and again.members.height == 0
    assert again.stats["pairs"] == first.stats["pairs"] > 0


def _files(store: DeltaStore, spec, back: int = 0) -> set[str]:
    table = DeltaTable(store.uri(spec.name))
    if back:
        table.load_as_version(table.version() - back)
    return {u.rsplit("/", 1)[-1] for u in table.file_uris()}


def _raw(store: DeltaStore, spec) -> pl.DataFrame:
    return pl.scan_delta(store.uri(spec.name)).collect()


def test_an_update_appends_the_subgraph_and_tombstones(tmp_path, graph_writes):
    """The graph tables keep every committed file; the change rows are the subgraph's."""
    base = _base()

    def drop_and_land(s: DeltaStore) -> None:
        kept = s.read(FILTERED_IMAGES, shards=["b"])
        gone = [f"b-{i:04d}" for i in (20, 21, 22)]  # c's band copies of these leave the graph
        s.replace_shard(FILTERED_IMAGES, "b", kept.filter(~pl.col("image_id").is_in(gone)))
        add_shard(s, "d", _near(base["a"][20:24], 0.01, 7), start=-50)

    store, whole, a, b = _both(tmp_path, drop_and_land)
    _assert_equal(store, whole, a, b)
    for spec in (DUPLICATE_PAIRS, CANDIDATE_PAIRS, DUPLICATE_MEMBERS):
        raw = _raw(store, spec)
        if graph_writes == "fold":
            assert "deleted" not in raw.columns, spec.name  # rewritten whole
            continue
        # the files of the version before the update's append are all still there
        assert _files(store, spec, back=1) <= _files(store, spec), spec.name
        changes = raw.filter(pl.col("deleted").is_not_null())
        assert changes.height, spec.name
        # a tombstone deletes a row the table held before the update (not the other table's)
        keys = list(spec.change_key)
        held = store.read(spec, version=store.version(spec.name) - 1).select(keys)
        dead = changes.filter(pl.col("deleted")).select(keys)
        assert dead.join(held, on=keys, how="anti").is_empty(), spec.name
        assert changes["revision"].n_unique() == 1
        # every live change row is a row of the subgraph: ∝ the update, not the graph
        assert changes.filter(~pl.col("deleted")).height < store.read(spec).height or (
            spec is CANDIDATE_PAIRS
        )
    if graph_writes == "append":
        dead = _raw(store, DUPLICATE_MEMBERS).filter(pl.col("deleted").fill_null(False))
        assert {f"c-{i:04d}" for i in range(12, 15)} <= set(dead["image_id"])


@pytest.mark.parametrize("bound", ["share", "budget"])
def test_change_rows_are_folded_at_the_share(tmp_path, monkeypatch, graph_writes, bound):
    """Appends until the change rows would reach the share of the base rows, then a rewrite.

    Or the budget's cap on them, whichever is smaller.
    """
    if graph_writes == "fold":
        pytest.skip("the share is set here")
    base = _base()
    store, _ = _committed_base(tmp_path)
    counts = [localgraph.graph_row_counts(store, DUPLICATE_MEMBERS)]
    if bound == "share":
        monkeypatch.setattr(localgraph, "GRAPH_FOLD_SHARE", 0.4)
    else:  # the default budget holds 18 change rows
        monkeypatch.setattr(localgraph, "CHANGE_ROW_BYTES", MemoryBudget().bytes // 8 // 18)
    limit = (lambda b: 0.4 * b) if bound == "share" else (lambda b: 18)
    for k, (name, rows) in enumerate((("d", (20, 24)), ("e", (24, 28)), ("f", (28, 32)))):
        add_shard(store, name, _near(base["a"][rows[0] : rows[1]], 0.01, 20 + k), start=-5 * k)
        run_and_write(store)
        counts.append(localgraph.graph_row_counts(store, DUPLICATE_MEMBERS))
    assert counts[0][1] == 0
    changes = [c for _, c in counts]
    assert any(c > 0 for c in changes)  # appended at least once
    # a fold leaves no change rows; the change rows never reach the share of the base rows
    assert all(c < limit(b) for b, c in counts)
    assert 0 in changes[1:], counts
    whole = DeltaStore(str(tmp_path / "again"))
    write_centroids(whole)
    for name, x in _base().items():
        add_shard(whole, name, x)
    for k, (name, rows) in enumerate((("d", (20, 24)), ("e", (24, 28)), ("f", (28, 32)))):
        add_shard(whole, name, _near(base["a"][rows[0] : rows[1]], 0.01, 20 + k), start=-5 * k)
    run_and_write(whole, tau_min=FLOOR)
    for name, df in _tables(whole).items():
        assert _tables(store)[name].equals(df), name


def test_a_killed_runs_appended_rows_are_not_read_by_the_next_run(tmp_path, graph_writes):
    """Rows appended after the commit (a run killed before it) make the next run rewrite."""
    if graph_writes == "fold":
        pytest.skip("appends only")
    base = _base()
    store, _ = _committed_base(tmp_path)
    commit = last_commit(store, "dedup")
    assert commit is not None
    outputs = commit.outputs
    orphan = store.read(DUPLICATE_MEMBERS).head(3).with_columns(kept=pl.lit(False))
    localgraph.append_graph_changes(store, DUPLICATE_MEMBERS, orphan, DUPLICATE_MEMBERS.empty())
    assert store.version("duplicate_members") != outputs["duplicate_members"]
    shutil.copytree(tmp_path, tmp_path.parent / "whole")
    whole = DeltaStore(str(tmp_path.parent / "whole"))
    for s in (store, whole):
        add_shard(s, "d", _near(base["a"][20:24], 0.01, 7), start=-50)
    a = run_and_write(store)
    b = run_and_write(whole, local_merge=False)
    assert "deleted" not in _raw(store, DUPLICATE_MEMBERS).columns  # rewritten, orphan gone
    for name, df in _tables(whole).items():
        assert _tables(store)[name].equals(df), name
    assert a.stats["removed"] == b.stats["removed"]


def test_explain_reads_the_graph_as_merged(tmp_path, graph_writes):
    """`curation explain`'s filtered reads see a changed member's new group, not its old one."""
    base = _base()

    def land(s: DeltaStore) -> None:  # copies of grouped images, ingested earlier: they win
        add_shard(s, "d", _near(base["a"][:4], 0.01, 12), start=-50)

    store, *_ = _both(tmp_path, land)
    snap = Snapshot(store, AsOf())
    members = store.read(DUPLICATE_MEMBERS)
    pairs = store.read(DUPLICATE_PAIRS)
    groups = members.filter(pl.col("shard") == "a", ~pl.col("kept"))["component_id"].to_list()
    images = members.filter(pl.col("shard") == "d")["image_id"].to_list()
    if graph_writes == "append":  # members whose group changed: a base row and a change row
        raw = _raw(store, DUPLICATE_MEMBERS)
        moved = (
            raw.filter(pl.col("deleted").is_null())
            .join(raw.filter(~pl.col("deleted")), on=["image_id", "shard"], suffix="_new")
            .filter(pl.col("component_id") != pl.col("component_id_new"))
        )
        assert moved.height
        groups = moved["component_id"].to_list() + moved["component_id_new"].to_list()
        images = moved["image_id"].to_list()
    for group in groups[:6]:
        got, _ = snap.read(DUPLICATE_MEMBERS, where=[[("component_id", "=", group)]])
        want = members.filter(pl.col("component_id") == group)
        assert got.sort("image_id").equals(want.sort("image_id")), group
    for image in images[:6]:
        got, _ = snap.read(
            DUPLICATE_PAIRS, where=[[("image_id_a", "=", image)], [("image_id_b", "=", image)]]
        )
        want = pairs.filter((pl.col("image_id_a") == image) | (pl.col("image_id_b") == image))
        assert got.sort("image_id_a", "image_id_b").equals(want.sort("image_id_a", "image_id_b"))
