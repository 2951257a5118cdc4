"""The tables the weights and export stages read, small and synthetic, written to Delta.

Two shards of images with 8-d unit embeddings. The "safety filter" removes an image with a
probability that grows with its first embedding coordinate and with a ``woman`` caption (so the
filter shifts both, as DALL·E 2's did; the second coordinate shows who is a woman, so the
probe can see it); among the filtered images, every tenth is a near
duplicate that dedup removed. Images are real files (``source_uri``) so the export can read
them.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import (
    DEDUPLICATED_IMAGES,
    FILTERED_IMAGES,
    IMAGE_EMBEDDINGS,
    IMAGE_UNIQUENESS,
    RAW_IMAGES,
    SAMPLE_WEIGHTS,
)
from curation_assets_tests.conftest import image_bytes

DIM = 8
SHARDS = ("shard-a", "shard-b")


@dataclass(frozen=True)
class WeightInputs:
    """What :func:`write_weight_inputs` wrote.

    Attributes:
        ids: Every image id (raw_images, image_embeddings).
        filtered: Ids that passed the filter.
        kept: Ids dedup kept (a subset of ``filtered``).
        x: (n, DIM) float32 embeddings, rows in the order of ``ids``.
    """

    ids: list[str]
    filtered: list[str]
    kept: list[str]
    x: np.ndarray


def write_weight_inputs(
    store: DeltaStore,
    folder: Path,
    n: int = 400,
    seed: int = 0,
    *,
    shards: tuple[str, ...] = SHARDS,
    images: bool = True,
    filter_shift: float = 0.0,
) -> WeightInputs:
    """Write raw_images, image_embeddings, filtered_images and deduplicated_images.

    Each shard is written with ``replace_shard`` (the others are untouched), so calling this
    again with other ``shards`` and another ``seed`` adds shards to the corpus.

    Args:
        store: Where to write.
        folder: Where the image files go (one small JPEG per image).
        n: Images in all (split over ``shards``).
        seed: Seed of the ids, embeddings, captions and filter.
        shards: The shards written.
        images: Write the image files (False: only the paths, for tests that never read
            them).
        filter_shift: Added to the filter's removal logit (> 0: these shards lose more).
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, DIM))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    ids = [f"{h:016x}" for h in rng.choice(2**62, size=n, replace=False)]
    shard_of = [shards[i % len(shards)] for i in range(n)]
    woman = rng.random(n) < 1.0 / (1.0 + np.exp(-8.0 * x[:, 1]))  # the embedding shows it
    captions = [
        None if i % 7 == 0 else ("a woman outdoors" if w else "a man outdoors")
        for i, w in enumerate(woman)
    ]
    folder.mkdir(parents=True, exist_ok=True)
    uris = []
    for i, image_id in enumerate(ids):
        path = folder / f"{image_id}.jpg"
        if images:
            path.write_bytes(image_bytes(i, size=(32, 24 + 8 * (i % 3))))
        uris.append(str(path))
    p_removed = 1.0 / (1.0 + np.exp(-(2.5 * x[:, 0] + 1.0 * woman - 1.5 + filter_shift)))
    passed = rng.random(n) >= p_removed
    base = pl.DataFrame(
        {
            "image_id": ids,
            "shard": shard_of,
            "source_uri": uris,
            "caption": captions,
            "width": np.full(n, 32, np.int32),
            "height": np.array([24 + 8 * (i % 3) for i in range(n)], np.int32),
        },
        schema_overrides={"caption": pl.String},
    )
    raw = base.with_columns(
        format=pl.Series(["JPEG" if i % 5 else "PNG" for i in range(n)]),
        n_bytes=pl.lit(100, pl.Int64),
        n_frames=pl.lit(1, pl.Int32),
        ingested_at=pl.lit(np.datetime64("2026-01-01T00:00:00")).dt.replace_time_zone("UTC"),
    )
    emb = base.select(
        "image_id",
        "shard",
        embedding=pl.Series(list(x), dtype=pl.List(pl.Float32)),
        model_id=pl.lit("test:model@none"),
        dim=pl.lit(DIM, pl.Int32),
    )
    filtered = base.filter(pl.Series(passed))
    duplicate = np.arange(filtered.height) % 10 == 9
    first = filtered["image_id"][0]
    dedup = filtered.select(
        "image_id",
        "shard",
        kept=pl.Series(~duplicate),
        duplicate_of=pl.Series([first if d else None for d in duplicate], dtype=pl.String),
        similarity=pl.Series([0.97 if d else None for d in duplicate], dtype=pl.Float32),
        component_id=pl.lit(None, pl.String),
        component_size=pl.lit(1, pl.Int64),
        row=pl.int_range(pl.len(), dtype=pl.Int64),
    )
    for shard in shards:
        store.replace_shard(RAW_IMAGES, shard, RAW_IMAGES.conform(raw.filter(shard=shard)))
        store.replace_shard(
            IMAGE_EMBEDDINGS, shard, IMAGE_EMBEDDINGS.conform(emb.filter(shard=shard))
        )
        store.replace_shard(
            FILTERED_IMAGES, shard, FILTERED_IMAGES.conform(filtered.filter(shard=shard))
        )
        store.replace_shard(
            DEDUPLICATED_IMAGES, shard, DEDUPLICATED_IMAGES.conform(dedup.filter(shard=shard))
        )
    kept = dedup.filter("kept")["image_id"].to_list()
    return WeightInputs(ids, filtered["image_id"].to_list(), kept, x)


def write_linear_weights(store: DeltaStore) -> None:
    """Per kept shard, ``sample_weights`` rising linearly from 0.5 to 1.5 (an export's input)."""
    from curation_assets.lib.export.run import kept_images

    for key in store.shard_files(DEDUPLICATED_IMAGES.name):
        images = kept_images(store, [key])
        w = pl.DataFrame(
            {
                "image_id": images["image_id"],
                "shard": images["shard"],
                "weight": np.linspace(0.5, 1.5, images.height),
                "raw_ratio": 1.0,
                "p_unfiltered": 0.5,
                "p_kept": 0.9,
                "clipped": False,
            }
        )
        store.replace_shard(SAMPLE_WEIGHTS, key, w)


def write_uniqueness(store: DeltaStore, shards: Sequence[str], seed: int = 0) -> pl.DataFrame:
    """Write ``image_uniqueness`` for ``shards``; returns ``image_id, shard, uniqueness``.

    A seeded score in [0, 0.6] per embedded image (every 25th exactly 0, as for an image with k
    copies). A shard without embeddings gets no rows (the table is still created).
    """
    frames = []
    for shard in shards:
        ids = store.read(IMAGE_EMBEDDINGS, shards=[shard], columns=["image_id"])["image_id"]
        rng = np.random.default_rng([seed, sum(shard.encode())])
        u = rng.uniform(0.0, 0.6, ids.len()).astype(np.float32)
        u[::25] = 0.0
        rows = pl.DataFrame(
            {
                "image_id": ids,
                "shard": shard,
                "uniqueness": u,
                "k": 5,
                "neighbours_found": 5,
                "nearest_id": ids.shift(1),
                "nearest_similarity": 1.0 - u,
                "index_images": 1000,
                "model_id": "test:model@none",
                "scored_at": datetime(2026, 1, 1, tzinfo=UTC),
            }
        )
        store.replace_shard(IMAGE_UNIQUENESS, shard, IMAGE_UNIQUENESS.conform(rows))
        frames.append(rows)
    return pl.concat(frames).select("image_id", "shard", "uniqueness")
