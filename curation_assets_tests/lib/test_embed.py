import os

import numpy as np
import pytest
import skimage
import torch
from PIL import Image, ImageOps

from curation_assets.lib.embed import (
    EmbedderConfigError,
    EmbedderSpec,
    EmbedStats,
    OpenClipEmbedder,
    embed_items,
    embeddings_frame,
    load_embedder,
)
from curation_assets.lib.ingest import sha256_hex
from curation_assets.lib.shards import Item
from curation_assets.lib.vectors import embedding_matrix
from curation_assets_tests.conftest import image_bytes

SKIMAGE_DATA = os.path.join(os.path.dirname(skimage.__file__), "data")


def _photo(name: str) -> Image.Image:
    return Image.open(os.path.join(SKIMAGE_DATA, name)).convert("RGB")


@pytest.fixture(scope="module")
def timm_embedder():
    return load_embedder(EmbedderSpec())


@pytest.fixture(scope="module")
def clip_embedder():
    from curation_assets_tests.conftest import TINY_CLIP_CONFIG

    spec = EmbedderSpec(
        backend="open_clip", model_name="tiny", pretrained=None, model_config=str(TINY_CLIP_CONFIG)
    )
    return load_embedder(spec)


def test_offline_weights_give_normalized_1280d_vectors_that_see_near_duplicates(timm_embedder):
    """Real ImageNet weights: an edited copy is closer to its original than other photos."""
    e = timm_embedder
    assert e.dim == 1280 and e.model_id.startswith("timm:tf_efficientnet_lite0@efficientnet-lite0")
    cat, coffee, rocket = _photo("chelsea.png"), _photo("coffee.png"), _photo("rocket.jpg")
    w, h = cat.size
    edits = [ImageOps.mirror(cat), cat.crop((w // 10, h // 10, w, h)), cat.rotate(5)]
    v = e.encode_images(torch.stack([e.preprocess(im) for im in [cat, *edits, coffee, rocket]]))
    assert v.dtype == np.float32 and v.shape == (6, 1280)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    sims = v @ v[0]
    assert sims[1:4].min() > sims[4:].max() + 0.1, sims


def test_open_clip_real_code_path_with_a_tiny_random_model(clip_embedder):
    e = clip_embedder
    assert isinstance(e, OpenClipEmbedder)
    assert e.model_id == "open_clip:tiny-clip-test@random-init" and e.dim == 32
    x = torch.stack([e.preprocess(Image.new("RGB", (90, 70), (i * 60, 20, 20))) for i in range(3)])
    v = e.encode_images(x)
    assert v.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert e.has_text_tower
    t = e.encode_text(["a photo of a hat", "a photo of a shoe"])
    assert t.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)


def test_open_clip_loads_a_local_checkpoint_and_reproduces_its_vectors(clip_embedder, tmp_path):
    ckpt = tmp_path / "tiny.pt"
    torch.save(clip_embedder.model.state_dict(), ckpt)
    from curation_assets_tests.conftest import TINY_CLIP_CONFIG

    spec = EmbedderSpec(
        backend="open_clip",
        model_name="tiny",
        pretrained=str(ckpt),
        model_config=str(TINY_CLIP_CONFIG),
    )
    reloaded = OpenClipEmbedder(spec)
    assert reloaded.model_id.startswith("open_clip:tiny-clip-test@file:tiny.pt#")
    x = torch.stack([clip_embedder.preprocess(Image.new("RGB", (64, 64), (30, 90, 150)))])
    np.testing.assert_allclose(reloaded.encode_images(x), clip_embedder.encode_images(x), atol=1e-5)


def test_text_tower_absent_is_a_clear_error(timm_embedder):
    assert not timm_embedder.has_text_tower
    with pytest.raises(EmbedderConfigError, match="no text tower"):
        timm_embedder.encode_text(["x"])


def test_bad_configuration_names_the_fix(tmp_path):
    with pytest.raises(EmbedderConfigError, match="open_clip has no model"):
        OpenClipEmbedder(EmbedderSpec(backend="open_clip", model_name="nope", pretrained=None))
    with pytest.raises(EmbedderConfigError, match="neither"):
        load_embedder(EmbedderSpec(pretrained=str(tmp_path / "missing.pth")))
    with pytest.raises(EmbedderConfigError, match="unknown embedder backend"):
        load_embedder(EmbedderSpec(backend="onnx"))  # type: ignore[arg-type]


def test_pipeline_embeds_each_wanted_image_once_and_reports_failures(clip_embedder):
    blobs = [image_bytes(i) for i in range(7)]
    items = [Item(f"s/{i}.jpg", b) for i, b in enumerate(blobs)]
    items.append(Item("s/copy.jpg", blobs[0]))  # exact duplicate: embedded once
    items.append(Item("s/bad.jpg", blobs[1][:50]))  # wanted but undecodable
    wanted = {sha256_hex(b) for b in blobs[:6]} | {sha256_hex(blobs[1][:50])}
    stats = EmbedStats()
    out = list(
        embed_items(clip_embedder, items, wanted=wanted, batch_size=4, workers=2, stats=stats)
    )
    ids = [i for batch_ids, _ in out for i in batch_ids]
    assert ids == [sha256_hex(b) for b in blobs[:6]]
    assert [len(b) for b, _ in out] == [4, 2]
    assert stats.embedded == 6 and stats.skipped == 2
    assert [f[0] for f in stats.failed] == ["s/bad.jpg"]
    frame = embeddings_frame("s", out[0][0], out[0][1], clip_embedder)
    np.testing.assert_array_equal(embedding_matrix(frame["embedding"]), out[0][1])


@pytest.mark.parametrize("which", ["timm", "open_clip"])
def test_split_transform_equals_the_models_own_transform(which, timm_embedder, clip_embedder):
    """uint8 from the decode threads + batched Normalize == the model's torchvision transform."""
    e = timm_embedder if which == "timm" else clip_embedder
    images = [_photo("coffee.png"), _photo("chelsea.png").resize((90, 200))]
    u8 = torch.stack([e.preprocess(im) for im in images])
    assert u8.dtype == torch.uint8
    reference = torch.stack([e.pixels.transform(im) for im in images])
    assert reference.dtype == torch.float32
    torch.testing.assert_close(e.pixels.to_model_input(u8), reference, atol=1e-6, rtol=0)


def test_embedding_checks_find_bad_norms_dims_and_missing_images(tmp_path):
    import polars as pl

    from curation_assets.lib.embed import embedding_checks
    from curation_assets.lib.storage import DeltaStore
    from curation_assets.lib.tables import IMAGE_EMBEDDINGS, RAW_IMAGES

    store = DeltaStore(str(tmp_path))
    ids = pl.DataFrame({"image_id": ["i0", "i1", "i2"], "shard": "s"})
    columns = [
        pl.col(c) if c in ids.columns else pl.lit(None).alias(c) for c in RAW_IMAGES.column_names
    ]
    raw = ids.select(columns).cast(RAW_IMAGES.schema)
    store.replace_shard(RAW_IMAGES, "s", raw)
    v = np.eye(2, 4, dtype=np.float32)
    v[1] *= 1.5  # norm 1.5
    emb = pl.DataFrame(
        {"image_id": ["i0", "i1"], "shard": "s", "embedding": v.tolist(), "model_id": "m", "dim": 4}
    )
    store.replace_shard(IMAGE_EMBEDDINGS, "s", emb)
    checks = {c.name: c for c in embedding_checks(store, "s", 4, "m", 1e-3)}
    assert not checks["dims_and_norms"].passed
    assert checks["dims_and_norms"].metadata["max_norm_error"] == pytest.approx(0.5)
    assert not checks["every_image_embedded"].passed  # i2 neither embedded nor quarantined
    assert checks["every_image_embedded"].metadata["unaccounted"] == 1
    wrong = {c.name: c for c in embedding_checks(store, "s", 8, "other", 1.0)}
    assert wrong["dims_and_norms"].metadata["rows_with_wrong_dim"] == 4  # 2 lengths + 2 dims
    assert wrong["dims_and_norms"].metadata["rows_from_other_models"] == 2
