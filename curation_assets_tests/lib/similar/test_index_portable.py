"""Index files named relative to the index root: a moved home, old absolute rows, and S3 (moto)."""

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from curation_assets.lib.cluster import train_kmeans
from curation_assets.lib.similar import brute_force, load_quantizer, manifest, quantizer_frame
from curation_assets.lib.similar.index import files_root_for, model_slug, search
from curation_assets.lib.similar.run import index_shard
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables.similar import SIMILARITY_INDEX, SIMILARITY_QUANTIZER
from curation_assets_tests.lib.similar.test_index import MODEL, NOW, _vectors, _write_shard
from curation_assets_tests.servers_s3 import S3Server, s3_server  # noqa: F401


def _index(store: DeltaStore) -> tuple[np.ndarray, list[str]]:
    """Two shards indexed under the default index root; all vectors and ids in order."""
    xs = {f"s{i}": _vectors(80, 16, i) for i in range(2)}
    ids = [i for s, x in xs.items() for i in _write_shard(store, s, x)]
    allx = np.concatenate(list(xs.values()))
    model = train_kmeans(allx, 4, seed=0, max_points_per_centroid=64)
    store.replace_table(SIMILARITY_QUANTIZER, quantizer_frame(model, MODEL, NOW))
    quantizer = load_quantizer(store)
    assert quantizer is not None
    for s in xs:
        index_shard(store, files_root_for(store), s, quantizer, NOW)
    return allx, ids


def _exact(store: DeltaStore, allx: np.ndarray, ids: list[str]) -> None:
    q = _vectors(10, 16, 42)
    hits = search(store, q, 5, nprobe=4)
    _, ref = brute_force(allx, q, 5)
    assert hits.searched_shards == 2
    assert hits.image_ids == [[ids[j] for j in row] for row in ref]


def test_rows_are_relative_and_a_moved_root_still_searches(tmp_path: Path):
    store = DeltaStore(str(tmp_path / "a" / "delta"))
    allx, ids = _index(store)
    files = manifest(store)["file"].to_list()
    assert len(files) == 2 and all(
        f.startswith(f"{model_slug(MODEL)}/shard=s") and f.endswith(".faiss") for f in files
    )
    shutil.move(tmp_path / "a", tmp_path / "b")
    _exact(DeltaStore(str(tmp_path / "b" / "delta")), allx, ids)


def test_old_absolute_rows_are_read_where_written_or_under_the_moved_root(tmp_path: Path):
    store = DeltaStore(str(tmp_path / "a" / "delta"))
    allx, ids = _index(store)
    rows = store.read(SIMILARITY_INDEX)
    prefix = store.uri("_similarity") + "/"
    absolute = rows.with_columns((pl.lit(prefix) + pl.col("file")).alias("file"))
    for shard in rows["shard"].to_list():  # as an earlier version wrote them
        store.replace_shard(SIMILARITY_INDEX, shard, absolute.filter(pl.col("shard") == shard))
    assert all(Path(f).is_absolute() for f in manifest(store)["file"])
    _exact(store, allx, ids)
    shutil.move(tmp_path / "a", tmp_path / "b")
    _exact(DeltaStore(str(tmp_path / "b" / "delta")), allx, ids)


@pytest.mark.cluster
def test_index_files_on_s3(s3_server: S3Server):  # noqa: F811
    store = DeltaStore(s3_server.uri("similar", "delta"), s3_server.options)
    allx, ids = _index(store)
    keys = [k for k in s3_server.keys("similar/delta/_similarity/") if k.endswith(".faiss")]
    assert len(keys) == 2
    assert sorted(f"similar/delta/_similarity/{f}" for f in manifest(store)["file"]) == keys
    _exact(store, allx, ids)
    quantizer = load_quantizer(store)
    assert quantizer is not None
    again = index_shard(store, files_root_for(store), "s0", quantizer, NOW)
    assert again.removed_files == 1 and again.file.startswith("s3://")
    left = s3_server.keys("similar/delta/_similarity/")
    assert len([k for k in left if "shard=s0" in k and k.endswith(".faiss")]) == 1
    _exact(store, allx, ids)
