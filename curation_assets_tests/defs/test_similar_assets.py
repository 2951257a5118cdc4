"""Similarity assets and `curation similar`'s targets with the tiny open_clip model.

Through dg.materialize: quantizer, per-shard index, uniqueness; then the query targets (image
id, corpus file, new file, text) and the message for an embedder without a text tower.
"""

from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest

from curation_assets.defs.similar import image_uniqueness, similarity_index, similarity_quantizer
from curation_assets.lib.embed import EmbedderConfigError, EmbedderSpec, load_embedder
from curation_assets.lib.similar import brute_force, brute_force_uniqueness, load_quantizer
from curation_assets.lib.similar.query import resolve_target, similar_images, write_contact_sheet
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import IMAGE_EMBEDDINGS, RAW_IMAGES
from curation_assets.lib.tables.similar import IMAGE_UNIQUENESS, SIMILARITY_INDEX
from curation_assets.lib.vectors import embedding_matrix
from curation_assets_tests.conftest import TINY_CLIP_CONFIG, write_images
from curation_assets_tests.defs.helpers import check_results, materialize_shard, resources

EXACT = {"ops": {"image_uniqueness": {"config": {"nprobe": 4096}}}}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("similar")
    source = tmp / "sources"
    for i, shard in enumerate(["a", "b"]):
        write_images(source / shard, 30, start=100 * i)
    res = resources(tmp, source)
    instance = dg.DagsterInstance.ephemeral()
    for shard in ["a", "b"]:
        assert materialize_shard(instance, res, shard).success
    quant = dg.materialize([similarity_quantizer], instance=instance, resources=res)
    runs = {
        shard: dg.materialize(
            [similarity_index, image_uniqueness],
            partition_key=shard,
            instance=instance,
            resources=res,
            run_config=EXACT,
        )
        for shard in ["a", "b"]
    }
    store = DeltaStore(str(tmp / "delta"))
    return {
        "tmp": tmp,
        "source": source,
        "res": res,
        "instance": instance,
        "store": store,
        "quant": quant,
        "runs": runs,
    }


def _tiny() -> EmbedderSpec:
    return EmbedderSpec(
        backend="open_clip",
        model_name="tiny",
        pretrained=None,
        model_config=str(TINY_CLIP_CONFIG),
        device="cpu",
    )


def test_assets_index_and_score_each_shard_with_metadata(built):
    store = built["store"]
    assert built["quant"].success
    meta = built["quant"].asset_materializations_for_node("similarity_quantizer")[0].metadata
    assert meta["nlist"].value == 8  # sqrt(60) rounded to a power of two
    for run in built["runs"].values():
        assert run.success
        assert check_results(run) == {"every_embedding_indexed": True, "every_image_scored": True}
        m = {
            e.asset_key.to_user_string(): e.metadata
            for e in run.get_asset_materialization_events()
            for e in [e.materialization]
        }
        assert m["similarity_index"]["n_vectors"].value == 30
        assert Path(m["similarity_index"]["file"].value).is_file()
        u = m["image_uniqueness"]
        assert u["dagster/row_count"].value == 30 and "█" in u["uniqueness_histogram"].value
        assert u["most_and_least_unique"].value.count("data:image/jpeg;base64,") == 8
    # scored as of scoring: shard a saw only itself (b was not indexed yet), b saw both
    scores = store.read(IMAGE_UNIQUENESS)
    assert set(scores.filter(pl.col("shard") == "a")["index_images"]) == {30}
    assert set(scores.filter(pl.col("shard") == "b")["index_images"]) == {60}
    # b's scores equal the brute-force 5th-neighbour distance over both shards
    emb = store.read(IMAGE_EMBEDDINGS).sort("image_id")
    ref = dict(
        zip(
            emb["image_id"],
            brute_force_uniqueness(embedding_matrix(emb["embedding"]), 5),
            strict=True,
        )
    )
    b = scores.filter(pl.col("shard") == "b")
    np.testing.assert_allclose(
        b["uniqueness"].to_numpy(), [ref[i] for i in b["image_id"]], atol=1e-5
    )


def test_query_by_id_by_corpus_file_and_by_new_file(built):
    store = built["store"]
    emb = store.read(IMAGE_EMBEDDINGS).sort("image_id")
    x = embedding_matrix(emb["embedding"])
    ids = emb["image_id"].to_list()
    q = load_quantizer(store)
    assert q is not None

    def no_embedder():
        raise AssertionError("a corpus image must use its stored embedding")

    t = resolve_target(store, ids[3][:12], no_embedder)
    assert (t.kind, t.image_id) == ("image_id", ids[3])
    got = similar_images(store, t, 5, nprobe=q.nlist)
    sims, rows = brute_force(x, x[3:4], 6)
    expected = [ids[r] for r in rows[0] if r != 3][:5]
    assert got["image_id"].to_list() == expected and got["rank"].to_list() == [1, 2, 3, 4, 5]
    assert got["source_uri"].null_count() == 0
    # the same image given as its file path
    uri = store.read(RAW_IMAGES).filter(pl.col("image_id") == ids[3])["source_uri"][0]
    t2 = resolve_target(store, uri, no_embedder)
    assert t2.kind == "corpus_file" and similar_images(store, t2, 5, nprobe=q.nlist).equals(got)
    # a new image, not in the corpus: embedded with the configured (tiny) model
    new = write_images(built["tmp"] / "new", 1, start=999)[0]
    t3 = resolve_target(store, str(new), lambda: load_embedder(_tiny()))
    assert t3.kind == "new_file" and t3.image_id is None
    res = similar_images(store, t3, 3, nprobe=q.nlist)
    sims3, rows3 = brute_force(x, t3.vector, 3)
    assert res["image_id"].to_list() == [ids[r] for r in rows3[0]]
    np.testing.assert_allclose(res["similarity"].to_numpy(), sims3[0], atol=1e-5)
    sheet = write_contact_sheet(t3, res, built["tmp"] / "sheet.html")
    assert sheet.read_text().count("data:image/jpeg;base64,") == 4  # query + 3


def test_text_query_and_the_message_without_a_text_tower(built):
    store = built["store"]
    t = resolve_target(store, "a red dress", lambda: load_embedder(_tiny()))
    assert (
        t.kind == "text"
        and t.vector.shape[0] == 1
        and t.model_id == load_embedder(_tiny()).model_id
    )
    res = similar_images(store, t, 4, nprobe=64)
    assert res.height == 4 and (np.diff(res["similarity"].to_numpy()) <= 1e-6).all()
    timm = EmbedderSpec(backend="timm", pretrained=None, device="cpu")
    with pytest.raises(EmbedderConfigError, match="backend to 'open_clip'"):
        resolve_target(store, "a red dress", lambda: load_embedder(timm))


def test_unknown_id_and_undecodable_file_are_clear_errors(built):
    from curation_assets.lib.similar import SimilarityIndexError

    store = built["store"]
    with pytest.raises(SimilarityIndexError, match="no image with id"):
        resolve_target(store, "deadbeefdeadbeef", load_embedder)
    bad = built["tmp"] / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(SimilarityIndexError, match="not a readable image"):
        resolve_target(store, str(bad), load_embedder)
    assert store.read(SIMILARITY_INDEX).height == 2
