"""Embedding stage: ``image_embeddings`` per shard."""

from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from curation_assets.defs.metadata import check_result, table_metadata, table_schema
from curation_assets.defs.partitions import (
    ShardLoop,
    ShardReport,
    shard_backfill_policy,
    shard_reader,
    shards_partitions,
)
from curation_assets.defs.resources import DeltaStorage, Engine, ImageEmbedder, ShardSource
from curation_assets.defs.retries import fail_fast, transient_retry
from curation_assets.lib.tables import IMAGE_EMBEDDINGS

if TYPE_CHECKING:
    from curation_assets.lib.embed import EmbedOutcome

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
    engine: Engine,
):
    """Decode each ingested image again (overlapped with the forward pass) and embed it.

    Each shard is one task of the ``engine`` (in this process, or on a Ray cluster, a GPU per
    task when it has GPUs); the model is loaded once per process that embeds, whatever the
    number of shards it covers.
    """
    # torch is imported here, by the step that embeds, not by every run worker that loads
    # the definitions
    from curation_assets.lib.embed import EmbedShardWork

    work = EmbedShardWork(
        root_uri=delta.root_uri,
        storage_options=delta.task_options(),
        source=shard_reader(shard_source),
        spec=embedder.spec(),
        batch_size=config.batch_size,
        workers=config.decode_workers,
        norm_tolerance=config.norm_tolerance,
        progress_every_s=config.progress_every_s,
    )
    shards = ShardLoop(context, ["image_embeddings"])

    def report(key: str, out: "EmbedOutcome") -> ShardReport:
        context.log.info(
            f"{key}: {out.rows} embeddings ({out.model_id}, dim {out.dim}) in "
            f"{out.seconds:.1f}s = {out.images_per_s:.1f} images/s; forward "
            f"{out.forward_seconds:.1f}s; {out.quarantined} failed"
        )
        metadata = table_metadata(
            IMAGE_EMBEDDINGS,
            delta.uri(IMAGE_EMBEDDINGS),
            out.rows,
            model_id=out.model_id,
            dim=out.dim,
            device=out.device,
            batch_size=out.batch_size,
            quarantined=out.quarantined,
            seconds=round(out.seconds, 3),
            images_per_s=round(out.images_per_s, 1),
            forward_share=round(out.forward_seconds / out.seconds, 3) if out.seconds else 0,
            model_loaded=out.model_loaded,
        )
        return {"image_embeddings": metadata}, [check_result(c) for c in out.checks]

    yield from shards.run_on(engine.engine(), work, report, wants_gpu=True)


defs = dg.Definitions(assets=[image_embeddings])
