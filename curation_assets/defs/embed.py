"""Embedding stage: ``image_embeddings`` per shard."""

from collections.abc import Iterator
from datetime import UTC, datetime

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from curation_assets.defs.metadata import table_metadata, table_schema
from curation_assets.defs.partitions import shards_partitions
from curation_assets.defs.resources import DeltaStorage, ImageEmbedder, ShardSource
from curation_assets.defs.retries import fail_fast, transient_retry
from curation_assets.lib.embed import EmbedStats, default_batch_size, embed_items, embeddings_frame
from curation_assets.lib.ingest import DecodeLimits
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import IMAGE_EMBEDDINGS, QUARANTINE, RAW_IMAGES
from curation_assets.lib.vectors import embedding_matrix

GROUP = "embed"


class EmbedConfig(dg.Config):
    """Batching and parallelism of the embedding pass."""

    batch_size: int = Field(
        default=0, description="Images per forward pass; 0 = auto (16 on CPU, 128 on CUDA)."
    )
    decode_workers: int = Field(
        default=2, description="Threads decoding/preprocessing ahead of the model."
    )
    norm_tolerance: float = Field(
        default=1e-3, description="Check: every vector's L2 norm must be within 1 ± this."
    )
    progress_every_s: float = Field(default=10.0, description="Seconds between progress logs.")


def _check_vectors(
    store: DeltaStore, shard: str, dim: int, model_id: str, tol: float
) -> dg.AssetCheckResult:
    df = store.read(IMAGE_EMBEDDINGS, shards=[shard], columns=["embedding", "model_id", "dim"])
    lengths = df["embedding"].list.len()
    bad_dim = int((lengths != dim).sum()) + int((df["dim"] != dim).sum())
    other_models = int((df["model_id"] != model_id).sum())
    if df.height and bad_dim == 0:
        x = embedding_matrix(df["embedding"])
        finite = bool(np.isfinite(x).all())
        norms = np.linalg.norm(x, axis=1)
        worst = float(np.abs(norms - 1.0).max())
    else:
        finite, worst = True, 0.0
    passed = bad_dim == 0 and other_models == 0 and finite and worst <= tol
    return dg.AssetCheckResult(
        check_name="dims_and_norms",
        asset_key="image_embeddings",
        passed=passed,
        metadata={
            "dim": dim,
            "rows_with_wrong_dim": bad_dim,
            "rows_from_other_models": other_models,
            "all_finite": finite,
            "max_norm_error": worst,
        },
    )


def _check_complete(store: DeltaStore, shard: str) -> dg.AssetCheckResult:
    raw = store.read(RAW_IMAGES, shards=[shard], columns=["image_id"])
    emb = store.read(IMAGE_EMBEDDINGS, shards=[shard], columns=["image_id"])
    failed = store.scan(QUARANTINE).filter(
        (pl.col("shard") == shard) & (pl.col("stage") == "embed")
    )
    n_failed = failed.select(pl.len()).collect().item()
    missing = raw.join(emb, on="image_id", how="anti").height - n_failed
    extra = emb.join(raw, on="image_id", how="anti").height
    return dg.AssetCheckResult(
        check_name="every_image_embedded",
        asset_key="image_embeddings",
        passed=missing == 0 and extra == 0,
        metadata={
            "raw_images": raw.height,
            "embedded": emb.height,
            "quarantined_at_embed": n_failed,
            "unaccounted": missing,
            "not_in_raw_images": extra,
        },
    )


@dg.asset(
    description=(
        "One L2-normalized float32 embedding per image of raw_images (open_clip CLIP in "
        "production, offline EfficientNet-Lite0 by default), with the model id. Images that "
        "cannot be embedded go to quarantine with stage 'embed'."
    ),
    partitions_def=shards_partitions,
    deps=["raw_images"],
    kinds={"deltalake", "polars", "pytorch"},
    group_name=GROUP,
    pool="gpu",
    retry_policy=transient_retry,
    metadata={"dagster/column_schema": table_schema(IMAGE_EMBEDDINGS)},
    check_specs=[
        dg.AssetCheckSpec(
            "dims_and_norms",
            asset="image_embeddings",
            blocking=True,
            description="Every vector has the model's dimension, is finite and has norm 1.",
        ),
        dg.AssetCheckSpec(
            "every_image_embedded",
            asset="image_embeddings",
            blocking=True,
            description="Every raw_images row is embedded or quarantined at embed.",
        ),
    ],
)
@fail_fast
def image_embeddings(
    context: dg.AssetExecutionContext,
    config: EmbedConfig,
    delta: DeltaStorage,
    shard_source: ShardSource,
    embedder: ImageEmbedder,
) -> dg.MaterializeResult:
    """Decode each ingested image again (overlapped with the forward pass) and embed it."""
    key = context.partition_key
    store = delta.store()
    model = embedder.load()
    shard = shard_source.shard(key)
    wanted = set(store.read(RAW_IMAGES, shards=[key], columns=["image_id"])["image_id"])
    stats = EmbedStats()
    total = len(wanted)
    batch_size = config.batch_size or default_batch_size(model.device)
    done: set[str] = set()

    def progress(s: EmbedStats) -> None:
        context.log.info(f"{key}: embedded {s.embedded}/{total} ({s.images_per_s:.1f} images/s)")

    def frames() -> Iterator[pl.DataFrame]:
        batches = embed_items(
            model,
            shard_source.items(shard),
            wanted=wanted,
            batch_size=batch_size,
            workers=config.decode_workers,
            limits=DecodeLimits(max_pixels=2**62),  # ingest already enforced the limits
            stats=stats,
            on_progress=progress,
            progress_every_s=config.progress_every_s,
        )
        for ids, vectors in batches:
            done.update(ids)
            yield embeddings_frame(key, ids, vectors, model)

    rows = store.replace_shard(IMAGE_EMBEDDINGS, key, frames())
    now = datetime.now(UTC)
    failed = list(stats.failed)
    met = done | {image_id for _, image_id, _, _ in failed}
    # An id of raw_images never met while re-reading the shard: its source changed or vanished.
    failed += [
        (None, image_id, "embed_failed", "image no longer found in the shard's source")
        for image_id in sorted(wanted - met)
    ]
    failures = pl.DataFrame(
        [
            {
                "shard": key,
                "source_uri": uri,
                "stage": "embed",
                "reason": reason,
                "detail": detail,
                "image_id": image_id,
                "quarantined_at": now,
            }
            for uri, image_id, reason, detail in failed
        ],
        schema=QUARANTINE.schema,
    )
    store.replace_shard(QUARANTINE, key, failures, where={"stage": "embed"})
    context.log.info(
        f"{key}: {rows} embeddings ({model.model_id}, dim {model.dim}) in {stats.seconds:.1f}s "
        f"= {stats.images_per_s:.1f} images/s; forward {stats.forward_seconds:.1f}s; "
        f"{failures.height} failed"
    )
    return dg.MaterializeResult(
        metadata=table_metadata(
            IMAGE_EMBEDDINGS,
            delta.uri(IMAGE_EMBEDDINGS),
            rows,
            model_id=model.model_id,
            dim=model.dim,
            device=str(model.device),
            batch_size=batch_size,
            quarantined=failures.height,
            seconds=round(stats.seconds, 3),
            images_per_s=round(stats.images_per_s, 1),
            forward_share=round(stats.forward_seconds / stats.seconds, 3) if stats.seconds else 0,
        ),
        check_results=[
            _check_vectors(store, key, model.dim, model.model_id, config.norm_tolerance),
            _check_complete(store, key),
        ],
    )


defs = dg.Definitions(assets=[image_embeddings])
