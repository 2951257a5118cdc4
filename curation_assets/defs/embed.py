"""Embedding stage: ``image_embeddings`` per shard."""

import dagster as dg
from pydantic import Field

from curation_assets.defs.metadata import check_result, table_metadata, table_schema
from curation_assets.defs.partitions import ShardLoop, shard_backfill_policy, shards_partitions
from curation_assets.defs.resources import DeltaStorage, ImageEmbedder, ShardSource
from curation_assets.defs.retries import fail_fast, transient_retry
from curation_assets.lib.embed import EmbedStats, default_batch_size, embed_shard, embedding_checks
from curation_assets.lib.tables import IMAGE_EMBEDDINGS

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
    backfill_policy=shard_backfill_policy,
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
):
    """Decode each ingested image again (overlapped with the forward pass) and embed it.

    The model is loaded once per run, whatever the number of shards it covers.
    """
    store = delta.store()
    model = embedder.load()
    batch_size = config.batch_size or default_batch_size(model.device)
    shards = ShardLoop(context, ["image_embeddings"])

    def embed_one(key: str) -> None:
        stats = EmbedStats()

        def progress(s: EmbedStats) -> None:
            context.log.info(
                f"{key}: embedded {s.embedded}/{s.wanted} ({s.images_per_s:.1f} images/s)"
            )

        rows, failures = embed_shard(
            store,
            key,
            model,
            shard_source.items(shard_source.shard(key)),
            batch_size=batch_size,
            workers=config.decode_workers,
            stats=stats,
            on_progress=progress,
            progress_every_s=config.progress_every_s,
        )
        context.log.info(
            f"{key}: {rows} embeddings ({model.model_id}, dim {model.dim}) in "
            f"{stats.seconds:.1f}s = {stats.images_per_s:.1f} images/s; forward "
            f"{stats.forward_seconds:.1f}s; {failures.height} failed"
        )
        metadata = table_metadata(
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
        )
        checks = embedding_checks(store, key, model.dim, model.model_id, config.norm_tolerance)
        shards.done(key, {"image_embeddings": metadata}, [check_result(c) for c in checks])

    yield from shards.run(embed_one)


defs = dg.Definitions(assets=[image_embeddings])
