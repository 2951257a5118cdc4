"""The bucketed dedup: full, incremental, bucketed, unit-by-unit and in-memory runs agree.

Pair for pair (ids, similarity, found_by) and decision for decision (kept, duplicate_of,
similarity, group), on a corpus with planted near-duplicates spread across shards.
"""

import json
import pickle
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from curation_assets.lib.cluster import centroids_frame, train_clusterings
from curation_assets.lib.commits import last_commit, record_commit
from curation_assets.lib.dedup import dedup, newrows, run_dedup
from curation_assets.lib.dedup import layout as layout_module
from curation_assets.lib.dedup.io import DEDUP_STAGE
from curation_assets.lib.dedup.layout import (
    SCRATCH_FOLDER,
    Layout,
    choose_layout,
    clear_scratch,
    read_unit,
    stage,
)
from curation_assets.lib.dedup.merge import merge
from curation_assets.lib.dedup.newrows import (
    NewRows,
    NewRowsWork,
    chunk_rows,
    forget_indexes,
    half_to_float,
)
from curation_assets.lib.dedup.units import search_unit
from curation_assets.lib.memory import MemoryBudget
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import (
    DEDUP_MEMBERS,
    DEDUPLICATED_IMAGES,
    DUPLICATE_MEMBERS,
    DUPLICATE_PAIRS,
    DUPLICATE_VECTORS,
    FILTERED_IMAGES,
    N_CLUSTERINGS,
    centroids_spec,
)
from curation_assets.tools.synthetic import clip_like_embeddings
from curation_assets_tests.lib.dedup.helpers import MODEL, POLICY, add_shard, run_and_write
from curation_assets_tests.servers_s3 import s3_server  # noqa: F401 - the fixture

N_SHARDS, PER_SHARD, DIM = 6, 150, 16
TAU = 0.95


@pytest.fixture(scope="module")
def corpus() -> tuple[np.ndarray, list]:
    """900 rows, 30 % in planted groups scattered over every shard; five trained clusterings."""
    x, _ = clip_like_embeddings(N_SHARDS * PER_SHARD, DIM, dup_fraction=0.3, seed=5)
    models = train_clusterings(x, 8, niter=5)
    return x, models


def _store(root, corpus, options: dict[str, str] | None = None) -> DeltaStore:
    x, models = corpus
    store = DeltaStore(str(root), options)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    for c, model in enumerate(models):
        store.replace_table(centroids_spec(c), centroids_frame(model, MODEL, now))
    return store


def _add(store: DeltaStore, corpus, shards) -> None:
    x, _ = corpus
    for s in shards:
        rows = x[s * PER_SHARD : (s + 1) * PER_SHARD]
        add_shard(store, f"s{s}", rows, start=100 * s)


def _tables(store: DeltaStore) -> tuple[pl.DataFrame, pl.DataFrame]:
    images = store.read(DEDUPLICATED_IMAGES).sort("image_id")
    pairs = store.read(DUPLICATE_PAIRS).sort("image_id_a", "image_id_b")
    return images, pairs


def _assert_same(a, b) -> None:
    for left, right, name in zip(a, b, ("deduplicated_images", "duplicate_pairs"), strict=True):
        assert left.height == right.height, name
        assert left.equals(right), name


def test_incremental_equals_full_pair_for_pair_and_decision_for_decision(tmp_path, corpus):
    full = _store(tmp_path / "full", corpus)
    _add(full, corpus, range(N_SHARDS))
    out = run_and_write(full)
    assert out.plan.mode == "full" and out.stats["pairs"] > 50 and out.stats["removed"] > 50
    expected = _tables(full)

    inc = _store(tmp_path / "inc", corpus)
    _add(inc, corpus, range(3))
    run_and_write(inc)
    _add(inc, corpus, [3])
    step = run_and_write(inc)
    assert step.plan.mode == "incremental" and step.stats["new_rows"] == PER_SHARD
    assert step.stats["search"] == "new_rows"
    _add(inc, corpus, [4, 5])  # two shards in one update
    step = run_and_write(inc)
    assert step.plan.mode == "incremental" and step.stats["new_rows"] == 2 * PER_SHARD
    assert step.stats["previously_kept_now_removed"] >= 0
    _assert_same(_tables(inc), expected)
    assert run_and_write(inc).plan.mode == "current"


@pytest.mark.parametrize("search", ["one_pass", "units"])
def test_both_incremental_searches_over_many_buckets_equal_a_full_run(tmp_path, corpus, search):
    """One pass over clustering 0's buckets, or every unit the new rows touch: as a full run.

    The same pairs (similarities, found_by) and decisions, with many buckets; the one-pass
    search indexes its new rows in several chunks (a pass each) at this budget.
    """
    small = MemoryBudget(0.05)  # a few hundred rows a bucket
    full = _store(tmp_path / "full", corpus)
    _add(full, corpus, range(N_SHARDS))
    run_and_write(full, budget=small)
    inc = _store(tmp_path / "inc", corpus)
    _add(inc, corpus, range(3))
    first = run_and_write(inc, budget=small)
    assert min(first.layout.buckets) > 1
    for shards in ([3], [4, 5]):
        _add(inc, corpus, shards)
        step = run_and_write(inc, budget=small, new_rows=search)
        assert step.plan.mode == "incremental"
        assert step.stats["search"] == ("new_rows" if search == "one_pass" else "units")
        if search == "one_pass":  # every bucket of clustering 0, once per chunk of new rows
            chunks = -(-len(shards) * PER_SHARD // chunk_rows(small, DIM, N_CLUSTERINGS))
            assert chunks > 1 and len({u["chunk"] for u in step.units}) == chunks
            assert step.stats["units"] == first.layout.buckets[0] * chunks
        else:
            assert first.layout.buckets[0] < step.stats["units"] <= sum(first.layout.buckets)
    _assert_same(_tables(inc), _tables(full))  # found_by and similarity included


@pytest.mark.parametrize("block", [7, 2 * PER_SHARD])
def test_the_one_pass_search_streams_each_bucket_in_blocks(tmp_path, corpus, monkeypatch, block):
    """A bucket read a few rows at a time finds what a full run finds: pairs and decisions.

    Every batch the search holds is at most ``2 · BLOCK`` rows (the bucket is never read
    whole): a file of more rows is read in slices of ``BLOCK`` (7), smaller files are read
    together (``2 · PER_SHARD``: the full run's file and the shards laid out since). A pair of
    two new rows that fall in different blocks is still reported once.
    """
    monkeypatch.setattr(newrows, "BLOCK", block)
    files_read: list[int] = []
    real_rows = layout_module._parquet_rows

    def counted_rows(uris, options):
        files_read.append(len(uris))
        return real_rows(uris, options)

    monkeypatch.setattr(layout_module, "_parquet_rows", counted_rows)
    batches: list[int] = []
    real = newrows.iter_parts

    def counted(*args, **kwargs):
        for frame, parts in real(*args, **kwargs):
            batches.append(frame.height)
            assert sum(p.shape[0] for p in parts) == frame.height
            yield frame, parts

    monkeypatch.setattr(newrows, "iter_parts", counted)
    full = _store(tmp_path / "full", corpus)
    _add(full, corpus, range(N_SHARDS))
    run_and_write(full)
    inc = _store(tmp_path / "inc", corpus)
    _add(inc, corpus, range(3))
    run_and_write(inc)
    for shards in ([3], [4, 5]):
        _add(inc, corpus, shards)
        step = run_and_write(inc)
        assert step.plan.mode == "incremental" and step.stats["search"] == "new_rows"
    # the layout as laid out: 4 shards at the first update, 6 at the second (new rows included)
    assert sum(batches) == (4 + 6) * PER_SHARD
    if block == 7:
        assert max(batches) == 7
    else:  # files read together
        assert max(batches) <= 2 * block and max(files_read) > 1
    _assert_same(_tables(inc), _tables(full))


def test_new_rows_over_their_budget_share_are_searched_by_units(tmp_path, corpus):
    store = _store(tmp_path / "s", corpus)
    _add(store, corpus, range(2))
    run_and_write(store)
    _add(store, corpus, [2])
    step = run_and_write(store, budget=MemoryBudget(0.05))  # room for ~100 of its 150 rows
    assert step.plan.mode == "incremental" and step.stats["search"] == "units"
    _add(store, corpus, [3])
    step = run_and_write(store, budget=MemoryBudget(8))
    assert step.plan.mode == "incremental" and step.stats["search"] == "new_rows"


def test_a_layout_without_every_clusters_ids_is_laid_out_anew(tmp_path, corpus):
    store = _store(tmp_path / "s", corpus)
    _add(store, corpus, range(2))
    out = run_and_write(store)
    commit = last_commit(store, DEDUP_STAGE)
    assert commit is not None
    old = Layout(out.layout.ks, out.layout.buckets, format=1).key()
    assert "format" in out.layout.key() and Layout.from_key(old).format == 1
    unversioned = {k: v for k, v in json.loads(old).items() if k != "format"}
    config = {**commit.config, "layout": json.dumps(unversioned)}
    record_commit(
        store,
        DEDUP_STAGE,
        inputs=commit.inputs,
        outputs=commit.outputs,
        config=config,
        summary=commit.summary,
    )
    _add(store, corpus, [2])
    step = run_and_write(store)
    assert step.plan.mode == "full" and "every clustering" in step.plan.reason


def test_a_refiltered_shard_is_redone_incrementally_and_matches_a_full_run(tmp_path, corpus):
    inc = _store(tmp_path / "inc", corpus)
    _add(inc, corpus, range(4))
    run_and_write(inc)
    kept = inc.read(FILTERED_IMAGES, shards=["s1"])
    inc.replace_shard(FILTERED_IMAGES, "s1", kept.head(90))  # a classifier retrain drops 60
    step = run_and_write(inc)
    assert step.plan.mode == "incremental" and "1 changed" in step.plan.reason
    assert step.stats["images"] == 3 * PER_SHARD + 90

    full = _store(tmp_path / "full", corpus)
    _add(full, corpus, range(4))
    full.replace_shard(FILTERED_IMAGES, "s1", kept.head(90))
    run_and_write(full)
    _assert_same(_tables(inc), _tables(full))


def test_many_small_buckets_equal_one_bucket(tmp_path, corpus):
    one = _store(tmp_path / "one", corpus)
    _add(one, corpus, range(N_SHARDS))
    run_and_write(one)
    many = _store(tmp_path / "many", corpus)
    _add(many, corpus, range(N_SHARDS))
    small = MemoryBudget(0.05)  # 52 KiB: a few hundred rows a unit
    out = run_and_write(many, budget=small)
    assert min(out.layout.buckets) > 1 and out.stats["units"] == sum(out.layout.buckets)
    per_unit = max(u["rows"] for u in out.units)
    assert per_unit < N_SHARDS * PER_SHARD / 2, per_unit
    _assert_same(_tables(many), _tables(one))


def test_units_in_any_order_merge_to_the_same_graph(tmp_path, corpus):
    store = _store(tmp_path / "s", corpus)
    _add(store, corpus, range(N_SHARDS))
    out = run_and_write(store, budget=MemoryBudget(0.05))
    assert out.layout is not None
    at = store.version(DEDUP_MEMBERS.name)
    assert at is not None
    results = []
    for c in reversed(range(N_CLUSTERINGS)):  # each clustering staged as the run stages it
        if c:
            stage(store, out.layout, c, version=at)
        buckets = reversed(range(out.layout.buckets[c]))
        results += [search_unit(store, c, b, TAU, version=at) for b in buckets]
    clear_scratch(store)
    merged = merge(
        DUPLICATE_PAIRS.empty(),
        DUPLICATE_MEMBERS.empty(),
        [r.pairs for r in results],
        [r.endpoints for r in results],
        redone=set(),
        policy=POLICY,
        tau=TAU,
        n_clusterings=N_CLUSTERINGS,
    )
    assert merged.pairs.equals(out.pairs)
    assert merged.members.equals(out.members)


def test_equals_the_in_memory_library_on_the_same_vectors(tmp_path, corpus):
    store = _store(tmp_path / "s", corpus)
    _add(store, corpus, range(N_SHARDS))
    run_and_write(store)
    images, pairs = _tables(store)
    # what dedup compares: the float16 vectors of dedup_members, rows sorted by image_id
    rows = read_unit(store, 0, 0)
    order = np.argsort(rows.frame["image_id"].to_numpy())
    frame = rows.frame[order]
    x = rows.x[order]
    assignments = [frame["clusters"].list.get(c).to_numpy() for c in range(N_CLUSTERINGS)]
    lib = dedup(x, frame["image_id"].to_numpy(), frame, assignments, TAU, POLICY)
    lib_images = lib.images_frame().sort("image_id")
    assert lib_images["kept"].to_list() == images["kept"].to_list()
    assert lib_images["duplicate_of"].to_list() == images["duplicate_of"].to_list()
    np.testing.assert_array_equal(
        lib_images["similarity"].to_numpy(), images["similarity"].to_numpy()
    )
    lib_pairs = lib.pairs_frame()
    got = set(pairs.select("image_id_a", "image_id_b", "found_by").rows())
    want = set(lib_pairs.select("image_id_i", "image_id_j", "found_by").rows())
    assert got == want and len(got) == pairs.height


def test_layout_buckets_follow_the_budget():
    small = choose_layout(1_000_000, 512, [1024] * 5, MemoryBudget(64))
    large = choose_layout(1_000_000, 512, [1024] * 5, MemoryBudget(4096))
    assert small.buckets[0] > large.buckets[0] >= 1
    rows_per_unit = 1_000_000 / small.buckets[0]
    assert rows_per_unit * (6 * 512 + 160) <= 64 * 2**20 * 0.25 * 1.01
    assert choose_layout(10, 16, [4] * 5, MemoryBudget(1)).buckets == (1,) * 5
    assert small.bucket_of(0, np.array([0, 1023])).tolist() == [0, small.buckets[0] - 1]


def test_a_unit_reads_only_its_partition(tmp_path, corpus):
    """Clustering 0's units read dedup_members; another's, staged as files, read those."""
    store = _store(tmp_path / "s", corpus)
    _add(store, corpus, range(2))
    out = run_and_write(store, budget=MemoryBudget(0.05))
    assert out.layout is not None and out.stats["staged_rows"] == 2 * PER_SHARD * 4
    members = store.read(DEDUP_MEMBERS)
    assert members.height == 2 * PER_SHARD  # one copy at rest
    assert members["clustering"].unique().to_list() == [0]
    scratch = Path(store.uri(SCRATCH_FOLDER))
    assert not scratch.exists()  # deleted after the search
    for b in range(3):
        unit = read_unit(store, 0, b)
        want = members.filter(pl.col("bucket") == b)
        assert unit.frame.height == want.height and unit.x.shape == (want.height, DIM)
    at = store.version(DEDUP_MEMBERS.name)
    assert at is not None
    staged = stage(store, out.layout, 2, version=at, buckets={0, 1})
    assert sorted(p.parent.name for p in scratch.rglob("*.parquet")) == [
        "bucket=0",
        "bucket=1",
    ]  # one file per staged bucket (one group here)
    bucket = out.layout.bucket_of(2, members["clusters"].list.get(2).to_numpy())
    assert staged == int((bucket < 2).sum()) > 0
    vector = dict(zip(members["image_id"], members["vector"], strict=True))
    for b in range(out.layout.buckets[2]):
        unit = read_unit(store, 2, b)
        want = members["image_id"].filter(pl.Series(bucket == b)) if b < 2 else []
        assert sorted(unit.frame["image_id"]) == sorted(want), b
        in_bucket = out.layout.bucket_of(2, unit.frame["cluster"].to_numpy()) == b
        assert in_bucket.all()
        for i, image_id in enumerate(unit.frame["image_id"]):  # clustering 0's float16 bytes
            assert unit.x[i].tobytes() == vector[image_id]
    clear_scratch(store)
    assert not scratch.exists()


def test_the_one_pass_work_pickles_and_finds_what_the_run_found(tmp_path, corpus):
    """What an engine ships (a Ray task's arguments) finds the same pairs in another process."""
    store = _store(tmp_path / "s", corpus)
    _add(store, corpus, range(3))
    small = MemoryBudget(0.3)
    first = run_and_write(store, budget=small)
    _add(store, corpus, [3])
    outcome = run_dedup(store, tau=TAU, policy=POLICY, budget=small, new_rows="one_pass")
    assert outcome.stats["search"] == "new_rows" and first.layout is not None
    members = store.read(DEDUP_MEMBERS).filter(
        (pl.col("clustering") == 0) & (pl.col("shard") == "s3")
    )
    work = NewRowsWork(
        store.root_uri,
        {},
        TAU,
        NewRows.of(members, first.layout.ks),
        store.version("dedup_members"),
    )
    shipped = pickle.loads(pickle.dumps(work))
    lines: list[str] = []
    found = [shipped(str(b), lines.append) for b in range(first.layout.buckets[0])]
    forget_indexes()
    pairs = pl.concat([r.pairs for r in found]).unique().sort(pl.all())
    assert pairs.height > 0 and len(lines) == first.layout.buckets[0]
    # the run's own search found the same pairs (each once, whichever clusterings found it)
    assert (
        pairs.select("image_id_a", "image_id_b").unique().height
        == (outcome.merged.stats["new_pairs"])
    )
    assert ((pairs["shard_a"] == "s3") | (pairs["shard_b"] == "s3")).all()


def test_half_to_float_is_numpys_conversion_bit_for_bit():
    # every finite float16 (subnormals, ±0, the extremes), through faiss' decoder
    bits = np.arange(2**16, dtype=np.uint16).view(np.float16)
    finite = bits[np.isfinite(bits)]
    h = np.resize(finite, (finite.size // 512 + 1) * 512).reshape(-1, 512)
    out = np.full(h.shape, np.nan, np.float32)
    half_to_float(h, out)
    assert np.array_equal(out.view(np.uint32), h.astype(np.float32).view(np.uint32))
    # a strided view and another dtype take numpy's path, with the same values
    strided = np.empty((h.shape[0], 256), np.float32)
    half_to_float(h[:, ::2], strided)
    assert np.array_equal(strided, h[:, ::2].astype(np.float32))
    wide = np.empty(h.shape, np.float32)
    half_to_float(h.astype(np.float32), wide)
    assert np.array_equal(wide, h.astype(np.float32))


def test_the_recall_reference_is_held_at_its_cap_when_whole_shards_overshoot_it(
    tmp_path, corpus, monkeypatch
):
    """Shards come whole; past the cap a seeded share of their rows is read, not all of them."""
    from curation_assets.lib.dedup import sampling

    monkeypatch.setattr(sampling, "RECALL_MIN_REFERENCE", 100)
    store = _store(tmp_path / "full", corpus)
    _add(store, corpus, range(N_SHARDS))
    out = run_and_write(store)  # full: a tenth of 900 rows, at least 100: one shard of 150
    sample = out.recall["sample"]
    assert sample["reference_shards"] == 1 and sample["reference_fraction"] == pytest.approx(2 / 3)
    assert 60 <= sample["reference_rows"] <= 140  # a binomial draw around 100, not 150
    assert "a 0.667 share of their rows" in out.recall["measured_on"]
    again = _store(tmp_path / "again", corpus)
    _add(again, corpus, range(N_SHARDS))
    redo = run_and_write(again).recall["sample"]  # seeded: the same rows, the same result
    assert {k: v for k, v in redo.items() if not k.startswith("seconds")} == {
        k: v for k, v in sample.items() if not k.startswith("seconds")
    }


@pytest.mark.cluster
def test_the_one_pass_search_streams_an_s3_layout_as_a_local_one(tmp_path, corpus, s3_server):  # noqa: F811
    """The bucket's files are read from the object store, one slice at a time, as locally."""
    local = _store(tmp_path / "local", corpus)
    remote = _store(s3_server.uri(f"dedup-{tmp_path.name}", "delta"), corpus, s3_server.options)
    for store in (local, remote):
        _add(store, corpus, range(3))
        run_and_write(store)
        _add(store, corpus, [3])
        step = run_and_write(store)
        assert step.plan.mode == "incremental" and step.stats["search"] == "new_rows"
    _assert_same(_tables(remote), _tables(local))


def test_an_update_adds_and_reads_only_the_vectors_it_needs(tmp_path, corpus, monkeypatch):
    """duplicate_vectors: a full run writes the graph's; an update appends the images new to it.

    The members table holds no vector; an update reads the committed vectors of the old
    members of the groups it re-decides only, and decides as a full run does.
    """
    from curation_assets.lib.dedup import io

    asked: list[int] = []
    real = io.committed_vectors

    def counted(store, outputs):
        read = real(store, outputs)

        def lookup(ids):
            asked.append(ids.len())
            got = read(ids)
            assert sorted(got["image_id"]) == sorted(ids)  # every one asked for, once
            return got

        return lookup

    monkeypatch.setattr(io, "committed_vectors", counted)
    store = _store(tmp_path / "inc", corpus)
    _add(store, corpus, range(4))
    run_and_write(store)
    members = store.read(DUPLICATE_MEMBERS)
    vectors = store.read(DUPLICATE_VECTORS)
    assert "vector" not in members.columns and members.height > 0
    assert sorted(vectors["image_id"]) == sorted(members["image_id"])  # full: the graph's
    layout = store.read(DEDUP_MEMBERS).select("image_id", pl.col("vector").alias("laid_out"))
    same = vectors.join(layout, on="image_id").select(pl.col("vector") == pl.col("laid_out"))
    assert same.height == vectors.height and same.to_series().all()  # the layout's float16
    assert asked == []  # a full run reads no committed vector
    for shards in ([4], [5]):
        _add(store, corpus, shards)
        step = run_and_write(store)
        assert step.plan.mode == "incremental"
        now, added = store.read(DUPLICATE_MEMBERS), store.read(DUPLICATE_VECTORS)
        new_on_graph = set(now["image_id"]) - set(members["image_id"])
        assert added.height - vectors.height == len(new_on_graph) > 0  # appended, only those
        assert set(added["image_id"]) >= set(now["image_id"])
        members, vectors = now, added
    assert 0 < sum(asked) < members.height  # old groups a new pair joined, not the graph
    full = _store(tmp_path / "full", corpus)
    _add(full, corpus, range(N_SHARDS))
    run_and_write(full)
    _assert_same(_tables(store), _tables(full))
    key = ["image_id", "shard"]
    assert store.read(DUPLICATE_MEMBERS).sort(key).equals(full.read(DUPLICATE_MEMBERS).sort(key))


def test_a_graph_that_kept_its_vectors_in_its_members_is_built_anew(tmp_path, corpus):
    store = _store(tmp_path / "s", corpus)
    _add(store, corpus, range(2))
    run_and_write(store)
    commit = last_commit(store, DEDUP_STAGE)
    assert commit is not None and DUPLICATE_VECTORS.name in commit.outputs
    record_commit(  # as an older version committed it: no duplicate_vectors
        store,
        DEDUP_STAGE,
        inputs=commit.inputs,
        outputs={k: v for k, v in commit.outputs.items() if k != DUPLICATE_VECTORS.name},
        config=commit.config,
        summary=commit.summary,
    )
    _add(store, corpus, [2])
    step = run_and_write(store)
    assert step.plan.mode == "full" and "duplicate_vectors" in step.plan.reason


def test_a_member_without_a_vector_is_a_torn_state_not_a_guess():
    from curation_assets.lib.dedup.merge import _lookup

    fresh = pl.DataFrame({"image_id": ["a"], "vector": [b"\x00\x3c"]})
    lookup = _lookup(fresh, lambda ids: DUPLICATE_VECTORS.empty())
    assert lookup(pl.Series(["a"])).to_list() == [b"\x00\x3c"]
    with pytest.raises(RuntimeError, match="1 images on the pair graph have no vector"):
        lookup(pl.Series(["a", "b"]))


def test_stale_vectors_are_compacted_a_run_after_they_leave_the_graph(
    tmp_path, corpus, monkeypatch
):
    """duplicate_vectors keeps the rows of the new and the committed graph, once per image.

    Shards leave the filtered set: their images' rows stay that run (the committed graph, which
    a run killed before its commit reads back, still holds them) and go at the next update's
    compaction. Decisions stay a full run's, and a later update reads the compacted table.
    """
    from curation_assets.lib.dedup import io

    monkeypatch.setattr(io, "COMPACT_MIN_ROWS", 0)
    monkeypatch.setattr(io, "STALE_SHARE", 0.0)  # due at the first stale or repeated row
    store = _store(tmp_path / "inc", corpus)
    _add(store, corpus, range(4))
    run_and_write(store)
    first = store.read(DUPLICATE_MEMBERS)["image_id"]
    for shard in ("s0", "s1"):  # e.g. a retrained classifier filters them out
        store.replace_shard(FILTERED_IMAGES, shard, FILTERED_IMAGES.empty())
    run_and_write(store)
    second = store.read(DUPLICATE_MEMBERS)["image_id"]
    left = set(first) - set(second)
    assert left and set(store.read(DUPLICATE_VECTORS)["image_id"]) >= set(first)  # kept a run
    for shards in ([4], [5]):
        _add(store, corpus, shards)
        step = run_and_write(store)
        assert step.plan.mode == "incremental"
        now = store.read(DUPLICATE_MEMBERS)["image_id"]
        vectors = store.read(DUPLICATE_VECTORS)
        assert vectors["image_id"].is_unique().all()  # one row per image
        assert set(vectors["image_id"]) == set(now) | set(second)  # stale rows gone
        second = now
    full = _store(tmp_path / "full", corpus)
    _add(full, corpus, range(2, N_SHARDS))
    run_and_write(full)
    _assert_same(_tables(store), _tables(full))
    key = ["image_id", "shard"]
    assert store.read(DUPLICATE_MEMBERS).sort(key).equals(full.read(DUPLICATE_MEMBERS).sort(key))


def test_vectors_are_only_appended_below_the_stale_share(tmp_path, corpus, monkeypatch):
    """Under :data:`~.io.STALE_SHARE` of stale rows the table is appended to, not rewritten."""
    from curation_assets.lib.dedup import io

    monkeypatch.setattr(io, "COMPACT_MIN_ROWS", 0)
    store = _store(tmp_path / "s", corpus)
    _add(store, corpus, range(4))
    run_and_write(store)
    first = set(store.read(DUPLICATE_MEMBERS)["image_id"])
    store.replace_shard(FILTERED_IMAGES, "s0", FILTERED_IMAGES.empty())
    run_and_write(store)
    _add(store, corpus, [4])
    run_and_write(store)
    now = set(store.read(DUPLICATE_MEMBERS)["image_id"])
    vectors = store.read(DUPLICATE_VECTORS)
    stale = vectors.height - len(now)
    assert 0 < stale <= io.STALE_SHARE * vectors.height  # some, under the share
    assert set(vectors["image_id"]) >= first | now  # nothing dropped
    modes = [h["operationParameters"].get("mode") for h in store.history(DUPLICATE_VECTORS.name)]
    assert modes.count("Overwrite") == 1 and "Append" in modes  # the full run's only
