"""The per-shard similarity index and uniqueness against brute force, incremental, killed.

Synthetic vectors in real Delta tables.
"""

import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from curation_assets.lib.cluster import train_kmeans
from curation_assets.lib.memory import MemoryBudget
from curation_assets.lib.similar import (
    brute_force,
    brute_force_uniqueness,
    load_quantizer,
    manifest,
    quantizer_frame,
    search,
)
from curation_assets.lib.similar.index import SimilarityIndexError
from curation_assets.lib.similar.run import index_shard, score_shard
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import IMAGE_EMBEDDINGS
from curation_assets.lib.tables.similar import SIMILARITY_INDEX, SIMILARITY_QUANTIZER

MODEL = "test:random@0"
NOW = datetime(2025, 1, 1, tzinfo=UTC)


def _vectors(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _write_shard(store: DeltaStore, shard: str, x: np.ndarray) -> list[str]:
    ids = [f"{shard}-{i:04d}".ljust(64, "0") for i in range(x.shape[0])]
    store.replace_shard(
        IMAGE_EMBEDDINGS,
        shard,
        pl.DataFrame(
            {
                "image_id": ids,
                "shard": shard,
                "embedding": pl.Series(list(x), dtype=pl.List(pl.Float32)),
                "model_id": MODEL,
                "dim": x.shape[1],
            }
        ),
    )
    return ids


@pytest.fixture
def corpus(tmp_path: Path):
    """Three shards of 120 vectors (d = 16), a quantizer of 8 lists, every shard indexed."""
    store = DeltaStore(str(tmp_path / "delta"))
    xs = {f"s{i}": _vectors(120, 16, i) for i in range(3)}
    ids = {s: _write_shard(store, s, x) for s, x in xs.items()}
    allx = np.concatenate(list(xs.values()))
    model = train_kmeans(allx, 8, seed=0, max_points_per_centroid=64)
    store.replace_table(SIMILARITY_QUANTIZER, quantizer_frame(model, MODEL, NOW))
    quantizer = load_quantizer(store)
    assert quantizer is not None
    root = tmp_path / "files"
    for s in xs:
        index_shard(store, root, s, quantizer, NOW)
    return store, root, xs, ids, quantizer


def test_search_over_shard_files_equals_brute_force(corpus):
    store, _, xs, ids, quantizer = corpus
    allx = np.concatenate(list(xs.values()))
    all_ids = [i for s in xs for i in ids[s]]
    q = _vectors(25, 16, 99)
    hits = search(store, q, 10, nprobe=quantizer.nlist, quantizer=quantizer)
    ref_s, ref_i = brute_force(allx, q, 10)
    assert hits.searched_shards == 3 and hits.index_images == 360
    np.testing.assert_allclose(hits.similarity, ref_s, atol=1e-5)
    assert hits.image_ids == [[all_ids[j] for j in row] for row in ref_i]
    # approximate search (2 of 8 lists) finds a subset, never a better score than exact
    approx = search(store, q, 10, nprobe=2, quantizer=quantizer)
    assert (approx.similarity <= ref_s + 1e-5).all()


def test_new_shard_leaves_other_files_alone(corpus):
    store, root, xs, _, quantizer = corpus
    before = manifest(store).select("shard", "file")
    stats = {f: os.stat(f) for f in before["file"]}
    _write_shard(store, "s3", _vectors(50, 16, 3))
    row = index_shard(store, root, "s3", quantizer, NOW)
    after = manifest(store).select("shard", "file")
    assert after.filter(pl.col("shard") != "s3").equals(before)
    for f, st in stats.items():
        now = os.stat(f)
        assert (now.st_ino, now.st_mtime_ns, now.st_size) == (st.st_ino, st.st_mtime_ns, st.st_size)
    assert row.n_vectors == 50 and row.removed_files == 0
    # rebuilding a shard replaces its file and removes the superseded one
    again = index_shard(store, root, "s3", quantizer, NOW)
    assert again.file != row.file and again.removed_files == 1 and not Path(row.file).exists()


def test_killed_write_leaves_the_previous_index_usable(corpus, tmp_path):
    """SIGKILL at the manifest commit after the new file was written: the old one still serves."""
    store, root, xs, _, quantizer = corpus
    old = manifest(store).filter(pl.col("shard") == "s1")["file"][0]
    q = _vectors(5, 16, 7)
    expected = search(store, q, 5, nprobe=quantizer.nlist)
    script = textwrap.dedent(
        f"""
        from datetime import UTC, datetime
        from pathlib import Path
        from curation_assets.lib.similar import load_quantizer
        from curation_assets.lib.similar.run import index_shard
        from curation_assets.lib.storage import DeltaStore
        store = DeltaStore({str(tmp_path / "delta")!r})
        index_shard(store, Path({str(root)!r}), "s1", load_quantizer(store), datetime.now(UTC))
        """
    )
    env = {**os.environ, "CURATION_FAILPOINT": f"before:{SIMILARITY_INDEX.name}"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    files = sorted(p for p in Path(old).parent.iterdir())
    assert len(files) == 2  # the old file and the orphan new one; no temp file visible
    assert manifest(store).filter(pl.col("shard") == "s1")["file"][0] == old
    hits = search(store, q, 5, nprobe=quantizer.nlist)
    assert hits.image_ids == expected.image_ids
    # the next build converges: one file, the manifest's
    row = index_shard(store, root, "s1", quantizer, NOW)
    assert [p for p in Path(old).parent.iterdir()] == [Path(row.file)]


def test_uniqueness_equals_brute_force_kth_neighbour(corpus):
    store, _, xs, ids, quantizer = corpus
    allx = np.concatenate(list(xs.values()))
    ref = brute_force_uniqueness(allx, 5)
    got = []
    for s in xs:
        scored = score_shard(
            store,
            s,
            quantizer,
            k=5,
            nprobe=quantizer.nlist,
            budget=MemoryBudget(1),
            scored_at=NOW,
        )
        frame = scored.frame
        assert frame["image_id"].to_list() == ids[s]
        assert (frame["index_images"] == 360).all() and (frame["neighbours_found"] == 5).all()
        got.append(frame["uniqueness"].to_numpy())
    np.testing.assert_allclose(np.concatenate(got), ref, atol=1e-5)


def test_search_refuses_another_model_and_reports_stale_shards(corpus, tmp_path):
    store, root, xs, _, quantizer = corpus
    with pytest.raises(SimilarityIndexError, match="use that embedder"):
        search(store, _vectors(1, 16, 1), 3, nprobe=2, model_id="other:model@x")
    # a retrained quantizer makes the old shard files stale: skipped and named, not mixed in
    model = train_kmeans(np.concatenate(list(xs.values())), 4, seed=1, max_points_per_centroid=64)
    store.replace_table(SIMILARITY_QUANTIZER, quantizer_frame(model, MODEL, NOW))
    fresh = load_quantizer(store)
    assert fresh is not None and fresh.version != quantizer.version
    index_shard(store, root, "s0", fresh, NOW)
    hits = search(store, _vectors(2, 16, 5), 3, nprobe=4)
    assert hits.searched_shards == 1 and set(hits.skipped_shards) == {"s1", "s2"}
    with pytest.raises(SimilarityIndexError, match="older similarity_quantizer"):
        score_shard(store, "s1", fresh, k=3, nprobe=4, budget=MemoryBudget(64), scored_at=NOW)
