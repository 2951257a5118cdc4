"""Cluster stage: five k-means clusterings (global) → per-shard cluster assignments."""

from datetime import UTC, datetime
from typing import Literal

import dagster as dg
from pydantic import Field

from curation_assets.defs.automation import CENTROIDS
from curation_assets.defs.metadata import check_result, markdown_bars, table_metadata, table_schema
from curation_assets.defs.partitions import (
    ShardLoop,
    ShardReport,
    shard_backfill_policy,
    shards_partitions,
)
from curation_assets.defs.resources import Compute, DeltaStorage, Engine
from curation_assets.defs.retries import fail_fast, transient_retry
from curation_assets.lib.cluster import (
    DEFAULT_SEEDS,
    AssignOutcome,
    AssignShardWork,
    centroids_frame,
    cluster_size_bars,
    clustering_figures,
    default_k,
    filtered_count,
    train_kmeans,
    training_matrix,
)
from curation_assets.lib.tables import (
    N_CLUSTERINGS,
    assignments_spec,
    centroids_spec,
)

#: Bytes a training-pool row may take (a 1280-d float32 vector, the widest embedder here, + ids).
POOL_ROW_BYTES = 4 * 1280 + 200
#: The cluster and dedup stages share one asset group in the UI.
GROUP = "dedup"
CLUSTERINGS = range(N_CLUSTERINGS)
CENTROID_KEYS = [f"cluster_centroids_{c}" for c in CLUSTERINGS]
ASSIGNMENT_KEYS = [f"cluster_assignments_{c}" for c in CLUSTERINGS]


class CentroidConfig(dg.Config):
    """Training of the five spherical k-means clusterings."""

    k: int = Field(
        default=0,
        description="Clusters per clustering; 0 = sqrt(N) rounded to a power of two "
        "(1024 at 1M images, 16 at the demo's ~450).",
    )
    seeds: list[int] = Field(
        default=list(DEFAULT_SEEDS), description="One seed per clustering (five, distinct)."
    )
    niter: int = Field(default=10, description="Lloyd iterations (10 loses no recall vs 20).")
    max_points_per_centroid: int = Field(
        default=256, description="Training sample cap: K × this many rows."
    )
    gpu: Literal["auto", "yes", "no"] = Field(
        default="auto", description="faiss GPU k-means: auto = when faiss sees a GPU."
    )


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            key,
            description=(
                f"Clustering {c} of {N_CLUSTERINGS}: spherical (cosine) faiss k-means centroids "
                "trained on a seeded sample of the filtered images' embeddings. Retrained only "
                "when materialized (a weekly cron, or by hand); new shards are assigned to "
                "the existing centroids. A retrain makes every cluster_assignments and the "
                "dedup stale and the next dedup recomputes in full."
            ),
            deps=["filtered_images", "image_embeddings"],
            kinds={"deltalake", "faiss"},
            group_name=GROUP,
            automation_condition=CENTROIDS,
            metadata={"dagster/column_schema": table_schema(centroids_spec(c))},
        )
        for c, key in enumerate(CENTROID_KEYS)
    ],
    pool="gpu",
    retry_policy=transient_retry,
)
@fail_fast
def cluster_centroids(
    context: dg.AssetExecutionContext,
    config: CentroidConfig,
    delta: DeltaStorage,
    compute: Compute,
):
    """Train the five clusterings on a seeded pool of the filtered images of every shard.

    Memory: the training pool as one float32 matrix, at most ``2 · k ·
    max_points_per_centroid`` rows and half of ``compute.memory_budget_mb``
    (:func:`~curation_assets.lib.cluster.training_matrix`), plus the shards being read (a
    quarter of the pool's rows at a time, or one bigger shard); each
    clustering trains on it in place, or on a copy of its ``k · max_points_per_centroid``
    sampled rows when the pool holds more.
    """
    if len(config.seeds) != N_CLUSTERINGS or len(set(config.seeds)) != N_CLUSTERINGS:
        msg = f"seeds={config.seeds}: expected {N_CLUSTERINGS} distinct seeds"
        raise dg.Failure(msg, allow_retries=False)
    store = delta.store()
    n_images = filtered_count(store)
    k = config.k or default_k(max(n_images, 1))
    # k-means trains on at most k × max_points_per_centroid rows: read a pool of twice that
    # (each clustering samples its own rows from it), never the whole corpus
    pool_rows = min(
        2 * k * config.max_points_per_centroid,
        compute.budget().rows(POOL_ROW_BYTES, share=0.5, minimum=k),
    )
    pool = training_matrix(store, pool_rows, seed=config.seeds[0])
    if not pool.image_ids:
        msg = "no filtered image has an embedding yet; materialize filtered_images first"
        raise dg.Failure(msg, allow_retries=False)
    model_id, x, ids = pool.model_id, pool.x, pool.image_ids  # rows in id order
    context.log.info(f"training pool: {len(ids)} images from {pool.shards_read} shards")
    gpu = {"auto": None, "yes": True, "no": False}[config.gpu]
    now = datetime.now(UTC)
    for c, seed in enumerate(config.seeds):
        model = train_kmeans(
            x,
            k,
            seed=seed,
            niter=config.niter,
            max_points_per_centroid=config.max_points_per_centroid,
            gpu=gpu,
            order_key=ids,
        )
        spec = centroids_spec(c)
        frame = centroids_frame(model, model_id, now)
        store.replace_table(spec, frame)
        figures = clustering_figures(
            model, version=str(frame["version"][0]), model_id=model_id, n_images=n_images
        )
        context.log.info(
            f"clustering {c}: k={k} seed={seed} mean cos "
            f"{figures['mean_cosine_to_centroid']:.4f} imbalance {model.imbalance:.3f} in "
            f"{model.train_seconds:.1f}s"
        )
        bars = markdown_bars(*cluster_size_bars(model.sizes, bins=12))
        yield dg.MaterializeResult(
            asset_key=CENTROID_KEYS[c],
            metadata=table_metadata(
                spec,
                delta.uri(spec),
                k,
                **figures,
                cluster_size_histogram=dg.MetadataValue.md(
                    "Clusters by size (training sample):\n\n" + bars
                ),
            ),
        )


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            key,
            description=(
                f"Per shard: each filtered image's nearest centroid of clustering {c} "
                "(cluster id, cosine and distance), made with the centroids in force."
            ),
            deps=["filtered_images", "image_embeddings", CENTROID_KEYS[c]],
            kinds={"deltalake", "faiss"},
            group_name=GROUP,
            partitions_def=shards_partitions,
            metadata={"dagster/column_schema": table_schema(assignments_spec(c))},
        )
        for c, key in enumerate(ASSIGNMENT_KEYS)
    ],
    check_specs=[
        dg.AssetCheckSpec(
            "every_filtered_image_assigned",
            asset=ASSIGNMENT_KEYS[0],
            blocking=True,
            description="Each filtered image of the shard has one assignment per clustering.",
        )
    ],
    retry_policy=transient_retry,
    backfill_policy=shard_backfill_policy,
)
@fail_fast
def cluster_assignments(context: dg.AssetExecutionContext, delta: DeltaStorage, engine: Engine):
    """Assign each shard's filtered images in all five clusterings.

    Each shard is one task of the ``engine`` (this process, or a Ray cluster).
    """
    store = delta.store()
    shards = ShardLoop(context, ASSIGNMENT_KEYS)
    work = AssignShardWork(delta.root_uri, delta.task_options())

    def report(key: str, out: AssignOutcome) -> ShardReport:
        context.log.info(
            f"{key}: assigned {out.assigned} filtered images in {N_CLUSTERINGS} clusterings"
        )
        metadata = {
            ASSIGNMENT_KEYS[c]: table_metadata(
                assignments_spec(c),
                store.uri(assignments_spec(c).name),
                out.rows[c],
                **out.figures[c],
            )
            for c in CLUSTERINGS
        }
        return metadata, [check_result(out.check)]

    yield from shards.run_on(engine.engine(), work, report)


retrain_centroids_job = dg.define_asset_job(
    name="retrain_centroids_job",
    selection=CENTROID_KEYS,
    description="Retrain the five k-means clusterings on every filtered image. Afterwards every "
    "shard's cluster_assignments is stale and the next dedup recomputes in full.",
)
assign_shard_job = dg.define_asset_job(
    name="assign_shard_job",
    selection=ASSIGNMENT_KEYS,
    description="Assign one shard's filtered images to the centroids of all five clusterings.",
)

defs = dg.Definitions(
    assets=[cluster_centroids, cluster_assignments],
    jobs=[retrain_centroids_job, assign_shard_job],
)
