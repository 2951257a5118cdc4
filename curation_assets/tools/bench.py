"""Benchmarks (printed as JSON by ``curation bench ...``); never timed tests."""

import logging
import resource
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import psutil
import torch

from curation_assets.lib.embed import (
    EmbedderSpec,
    EmbedStats,
    default_batch_size,
    embed_items,
    embeddings_frame,
    load_embedder,
)
from curation_assets.lib.ingest import decode_image
from curation_assets.lib.shards import Item, ShardInfo, inspect_shard, iter_items
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import IMAGE_EMBEDDINGS

logger = logging.getLogger(__name__)


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _items(shard: ShardInfo, limit: int | None) -> Iterator[Item]:
    for i, item in enumerate(iter_items(shard)):
        if limit is not None and i >= limit:
            return
        yield item


def bench_embed(
    images: Path,
    spec: EmbedderSpec,
    *,
    limit: int | None = None,
    batch_size: int = 0,
    workers: int = 2,
    forward_images: int = 512,
    repeats: int = 3,
) -> dict[str, Any]:
    """End-to-end vs bare-forward embedding throughput on a folder/tar/manifest of images.

    End to end = read + sha256 + decode + preprocess + forward + Delta write of every image
    (the same code path as the ``image_embeddings`` asset). Bare forward = the model's forward
    pass alone on already-preprocessed tensors of the first ``forward_images`` images, in the
    same process. Both are repeated ``repeats`` times; medians are reported.

    Memory: measured on a first, untimed end-to-end pass, before any bare-forward tensors
    exist: peak RSS, and RSS at the end minus RSS after the first 10 % of images, which stays
    near zero when memory is flat in the number of images. Timed passes then alternate
    end-to-end and bare forward so that drift of a noisy machine affects both alike.
    """
    shard = inspect_shard(images, min_age_s=0.0)
    if shard is None:
        msg = f"{images} is not a folder, tar or CSV/parquet manifest of images"
        raise ValueError(msg)
    t_load = time.perf_counter()
    embedder = load_embedder(spec)
    load_s = time.perf_counter() - t_load
    batch_size = batch_size or default_batch_size(embedder.device)
    n_items = sum(1 for _ in _items(shard, limit))
    # Warm-up: one batch, so lazy initialisation is not timed.
    warm = [decode_image(it.data).image for it in _items(shard, batch_size) if it.data]
    embedder.encode_images(torch.stack([embedder.preprocess(im) for im in warm if im]))

    with tempfile.TemporaryDirectory(prefix="curation-bench-") as tmp:
        store = DeltaStore(tmp)

        def end_to_end() -> tuple[int, float, float]:
            """One pass; returns (rows, seconds, RSS growth after the first 10 % in MiB)."""
            stats = EmbedStats()
            rss_at_10: float | None = None

            def frames() -> Iterator[pl.DataFrame]:
                nonlocal rss_at_10
                for ids, vectors in embed_items(
                    embedder,
                    _items(shard, limit),
                    wanted=None,
                    batch_size=batch_size,
                    workers=workers,
                    stats=stats,
                ):
                    if rss_at_10 is None and stats.embedded >= 0.1 * n_items:
                        rss_at_10 = _rss_mb()
                    yield embeddings_frame("bench", ids, vectors, embedder)

            t0 = time.perf_counter()
            rows = store.replace_shard(IMAGE_EMBEDDINGS, "bench", frames())
            return rows, time.perf_counter() - t0, _rss_mb() - (rss_at_10 or _rss_mb())

        # Memory first, before any bare-forward tensors exist.
        embedded, _, rss_growth = end_to_end()
        peak_e2e = _peak_rss_mb()

        tensors = []
        for it in _items(shard, None):
            if len(tensors) >= forward_images:
                break
            decoded = decode_image(it.data) if it.data is not None else None
            if decoded is not None and decoded.image is not None:
                tensors.append(embedder.preprocess(decoded.image))
        batches = [
            torch.stack(tensors[i : i + batch_size]) for i in range(0, len(tensors), batch_size)
        ]

        # Interleaved, so drift of this noisy machine hits both sides alike.
        e2e_runs: list[float] = []
        fwd_runs: list[float] = []
        for _ in range(repeats):
            _, seconds, _ = end_to_end()
            e2e_runs.append(seconds)
            t0 = time.perf_counter()
            for b in batches:
                embedder.encode_images(b)
            fwd_runs.append(time.perf_counter() - t0)

    e2e_ips = embedded / float(np.median(e2e_runs))
    fwd_ips = len(tensors) / float(np.median(fwd_runs))
    return {
        "benchmark": "embed",
        "images_dir": str(images),
        "model_id": embedder.model_id,
        "device": str(embedder.device),
        "dim": embedder.dim,
        "batch_size": batch_size,
        "decode_workers": workers,
        "torch_threads": torch.get_num_threads(),
        "items_enumerated": n_items,
        "images_embedded": embedded,
        "repeats": repeats,
        "model_load_s": round(load_s, 2),
        "end_to_end_s_runs": [round(x, 2) for x in e2e_runs],
        "end_to_end_images_per_s": round(e2e_ips, 1),
        "bare_forward_images": len(tensors),
        "bare_forward_s_runs": [round(x, 2) for x in fwd_runs],
        "bare_forward_images_per_s": round(fwd_ips, 1),
        "end_to_end_over_bare_forward": round(e2e_ips / fwd_ips, 3),
        "peak_rss_mb_end_to_end": round(peak_e2e, 1),
        "rss_growth_mb_after_10pct": round(rss_growth, 1),
    }
