"""Similarity on real photos (clothing-small, EfficientNet-Lite0) with a planted copy.

The pair's members are each other's nearest neighbours and the least unique images.
"""

import io

import dagster as dg
import polars as pl
import pytest
from PIL import Image

from curation_assets.defs.similar import image_uniqueness, similarity_index, similarity_quantizer
from curation_assets.lib.embed import Embedder
from curation_assets.lib.ingest import sha256_hex
from curation_assets.lib.similar import load_quantizer
from curation_assets.lib.similar.query import resolve_target, similar_images
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables.similar import IMAGE_UNIQUENESS
from curation_assets_tests.defs.helpers import materialize_shard, resources

pytestmark = pytest.mark.integration


def test_near_duplicate_pair_are_each_others_top_neighbours(tmp_path, clothing_dir):
    photos = sorted((clothing_dir / "test").rglob("*.jpg"))[:40]
    shard = tmp_path / "sources" / "photos"
    shard.mkdir(parents=True)
    for p in photos:
        (shard / f"{p.parent.name}_{p.name}").write_bytes(p.read_bytes())
    original = photos[7].read_bytes()
    img = Image.open(io.BytesIO(original)).convert("RGB")
    edited = img.resize((img.width * 9 // 10, img.height * 9 // 10))
    buf = io.BytesIO()
    edited.save(buf, format="JPEG", quality=70)
    (shard / "planted_copy.jpg").write_bytes(buf.getvalue())
    res = resources(tmp_path, tmp_path / "sources", tiny_clip=False)
    instance = dg.DagsterInstance.ephemeral()
    assert materialize_shard(instance, res, "photos").success
    assert dg.materialize([similarity_quantizer], instance=instance, resources=res).success
    run = dg.materialize(
        [similarity_index, image_uniqueness],
        partition_key="photos",
        instance=instance,
        resources=res,
        run_config={"ops": {"image_uniqueness": {"config": {"k": 1, "nprobe": 64}}}},
    )
    assert run.success
    store = DeltaStore(str(tmp_path / "delta"))
    a, b = sha256_hex(original), sha256_hex(buf.getvalue())
    q = load_quantizer(store)
    assert q is not None

    def no_embedder() -> Embedder:
        raise AssertionError("corpus images use their stored embedding")

    for one, other in [(a, b), (b, a)]:
        hits = similar_images(store, resolve_target(store, one, no_embedder), 3, nprobe=q.nlist)
        assert hits["image_id"][0] == other
    scores = store.read(IMAGE_UNIQUENESS).sort("uniqueness")
    assert set(scores["image_id"].head(2)) == {a, b}  # k = 1: the pair is the least unique
    assert scores.filter(pl.col("image_id") == a)["nearest_id"][0] == b
