"""On a CUDA device: the embedders' fp16 vectors match fp32 CPU, and Ray tasks share the GPU.

Marked ``gpu``; skipped where torch sees no CUDA device (CI has none: these ran on the lent
H200 machine, see the README's "Scale out" figures).
"""

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from curation_assets.lib.embed import EmbedderSpec, EmbedShardWork, load_embedder
from curation_assets.lib.embed.models import resolve_device
from curation_assets.lib.engine import LocalEngine, RayEngine
from curation_assets.lib.shards import ShardReader
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import IMAGE_EMBEDDINGS
from curation_assets.lib.vectors import embedding_matrix
from curation_assets.tools.bench_embed import ingest_all
from curation_assets_tests.conftest import TINY_CLIP_CONFIG, write_images
from curation_assets_tests.lib.test_embed import _photo

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _photos() -> list[Image.Image]:
    names = ["chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png", "motorcycle_left.png"]
    photos = [_photo(n) for n in names]
    return photos + [ImageOps.mirror(p) for p in photos]


def _spec(backend: str, device: str) -> EmbedderSpec:
    if backend == "timm":
        return EmbedderSpec(device=device)
    return EmbedderSpec(
        backend="open_clip",
        model_name="tiny",
        pretrained=None,
        model_config=str(TINY_CLIP_CONFIG),
        device=device,
    )


def test_auto_device_is_cuda_with_fp16():
    assert resolve_device("auto").type == "cuda"
    e = load_embedder(_spec("timm", "auto"))
    assert e.device.type == "cuda" and e.dtype == torch.float16


@pytest.mark.parametrize("backend", ["timm", "open_clip"])
def test_fp16_cuda_vectors_match_fp32_cpu(backend):
    """Autocast fp16 on the GPU moves each vector by well under the dedup threshold's margin."""
    photos = _photos()
    gpu, cpu = load_embedder(_spec(backend, "cuda")), load_embedder(_spec(backend, "cpu"))
    pixels = torch.stack([gpu.preprocess(p) for p in photos])
    a = gpu.encode_images(pixels)
    b = cpu.encode_images(pixels)
    assert a.dtype == np.float32 and a.shape == b.shape
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-4)
    cos = (a * b).sum(axis=1)
    assert cos.min() > 0.999, cos
    if backend == "open_clip":
        return  # random tiny weights: no neighbour structure to compare
    # real weights: each photo's nearest other image is its mirror, on both devices
    for v in (a, b):
        sims = v @ v.T
        np.fill_diagonal(sims, -1)
        half = len(photos) // 2
        assert list(sims.argmax(axis=1)) == [*range(half, 2 * half), *range(half)]


def _ingested(tmp_path, n_shards: int = 4, per_shard: int = 24) -> tuple[DeltaStore, str]:
    src = tmp_path / "src"
    for i in range(n_shards):
        write_images(src / f"s{i}", per_shard, start=i * per_shard)
    ingest_all(src, tmp_path / "delta", threads=2)
    return DeltaStore(str(tmp_path / "delta")), str(src)


def _vectors(store: DeltaStore) -> dict[str, np.ndarray]:
    rows = store.read(IMAGE_EMBEDDINGS).sort("image_id")
    return dict(zip(rows["image_id"], embedding_matrix(rows["embedding"]), strict=True))


def test_ray_tasks_share_one_gpu_and_equal_the_local_engine(tmp_path, monkeypatch):
    """gpus_per_task=0.5: two shard tasks at once on the one GPU, each in its own worker."""
    ray = pytest.importorskip("ray")
    store, src = _ingested(tmp_path)
    keys = [f"s{i}" for i in range(4)]

    def work(device: str) -> EmbedShardWork:
        return EmbedShardWork(
            root_uri=store.root_uri,
            storage_options={},
            source=ShardReader(root=src),
            spec=_spec("timm", device),
            batch_size=0,
            workers=2,
            norm_tolerance=1e-3,
            progress_every_s=60.0,
        )

    local = list(LocalEngine().map_shards(work("cpu"), keys, wants_gpu=True))
    expected = _vectors(store)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # no ~/.ray/auth_token (servers_ray.py)
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False)
    try:
        engine = RayEngine("auto", gpus_per_task=0.5)
        results = list(engine.map_shards(work("auto"), keys, wants_gpu=True))
    finally:
        ray.shutdown()
    assert {r.key for r in results} == set(keys) and len(local) == 4
    assert {r.value.device.split(":")[0] for r in results} == {"cuda"}  # "cuda" when auto
    assert engine.peak_in_flight == 4  # two GPU slots, each with one shard queued behind it
    assert len({r.pid for r in results}) == 2  # two worker processes, each with its model
    assert sum(r.value.model_loaded for r in results) == 2
    assert all(c.passed for r in results for c in r.value.checks)
    got = _vectors(store)
    assert got.keys() == expected.keys()
    cos = np.array([float(got[k] @ expected[k]) for k in expected])
    assert cos.min() > 0.999, cos.min()
