"""Cluster and dedup stages: five k-means clusterings → per-shard assignments → dedup."""

from datetime import UTC, datetime
from typing import Literal

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from curation_assets.defs.automation import CENTROIDS, eager_on
from curation_assets.defs.metadata import (
    markdown_bars,
    markdown_preview,
    table_metadata,
    table_schema,
)
from curation_assets.defs.partitions import shards_partitions
from curation_assets.defs.resources import DeltaStorage
from curation_assets.defs.retries import fail_fast_on_permanent_errors, transient_retry
from curation_assets.lib.cluster import (
    DEFAULT_SEEDS,
    assign,
    cluster_size_histogram,
    default_k,
    train_kmeans,
)
from curation_assets.lib.dedup import POLICY_CRITERIA
from curation_assets.lib.dedup_run import (
    DEDUP_RUNS,
    DEDUPLICATED_IMAGES,
    DUPLICATE_PAIRS,
    N_CLUSTERINGS,
    assignments_frame,
    assignments_spec,
    centroids_frame,
    centroids_spec,
    duplicate_groups_markdown,
    filtered_embeddings,
    load_centroids,
    run_dedup,
    single_model,
    write_dedup,
)
from curation_assets.lib.embed import embedding_matrix
from curation_assets.lib.filter import FILTERED_IMAGES
from curation_assets.lib.images import SourceReader
from curation_assets.lib.tables import RAW_IMAGES

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
def cluster_centroids(
    context: dg.AssetExecutionContext, config: CentroidConfig, delta: DeltaStorage
):
    """Train the five clusterings on all filtered images of every shard."""
    if len(config.seeds) != N_CLUSTERINGS or len(set(config.seeds)) != N_CLUSTERINGS:
        msg = f"seeds={config.seeds}: expected {N_CLUSTERINGS} distinct seeds"
        raise dg.Failure(msg, allow_retries=False)
    store = delta.store()
    emb = filtered_embeddings(store)
    if emb.is_empty():
        msg = "no filtered image has an embedding yet; materialize filtered_images first"
        raise dg.Failure(msg, allow_retries=False)
    with fail_fast_on_permanent_errors():
        model_id = single_model(emb)
    x = embedding_matrix(emb["embedding"])
    ids = emb["image_id"].to_list()  # the training sample follows the ids, not the row order
    del emb
    k = config.k or default_k(x.shape[0])
    gpu = {"auto": None, "yes": True, "no": False}[config.gpu]
    now = datetime.now(UTC)
    for c, seed in enumerate(config.seeds):
        with fail_fast_on_permanent_errors():
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
        stats = model.stats()
        edges, counts = cluster_size_histogram(model.sizes, bins=12)
        labels = [f"{edges[i]:.0f}–{edges[i + 1]:.0f}" for i in range(len(counts))]
        context.log.info(
            f"clustering {c}: k={k} seed={seed} mean cos {stats['mean_cosine_to_centroid']:.4f} "
            f"imbalance {model.imbalance:.3f} in {model.train_seconds:.1f}s"
        )
        yield dg.MaterializeResult(
            asset_key=CENTROID_KEYS[c],
            metadata=table_metadata(
                spec,
                delta.uri(spec),
                k,
                k=k,
                seed=seed,
                version=str(frame["version"][0]),
                model_id=model_id,
                n_images=int(x.shape[0]),
                n_train=model.n_train,
                niter=model.niter,
                objective=float(model.objective),
                mean_cosine_to_centroid=float(stats["mean_cosine_to_centroid"]),
                imbalance=float(model.imbalance),
                empty_clusters=int(stats["empty_clusters"]),
                largest_cluster=int(model.sizes.max()),
                train_seconds=round(model.train_seconds, 3),
                cluster_size_histogram=dg.MetadataValue.md(
                    "Clusters by size (training sample):\n\n"
                    + markdown_bars(labels, [float(v) for v in counts])
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
            automation_condition=eager_on("filtered_images", CENTROID_KEYS[c]),
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
)
def cluster_assignments(context: dg.AssetExecutionContext, delta: DeltaStorage):
    """Assign the shard's filtered images in all five clusterings."""
    key = context.partition_key
    store = delta.store()
    emb = filtered_embeddings(store, [key])
    x = embedding_matrix(emb["embedding"]) if emb.height else np.zeros((0, 0), np.float32)
    ids = emb["image_id"].to_list()
    model_id = single_model(emb) if emb.height else None
    n_filtered = store.read(FILTERED_IMAGES, shards=[key], columns=["image_id"]).height
    written = []
    for c in CLUSTERINGS:
        cent = load_centroids(store, c)
        if cent is None:
            msg = (
                f"{CENTROID_KEYS[c]} has never been materialized; materialize the "
                "cluster_centroids first (it trains on the filtered images of every shard)"
            )
            raise dg.Failure(msg, allow_retries=False)
        if model_id is not None and model_id != cent.model_id:
            msg = (
                f"shard {key} is embedded with {model_id} but {CENTROID_KEYS[c]} "
                f"was trained on {cent.model_id}; retrain the centroids"
            )
            raise dg.Failure(msg, allow_retries=False)
        if emb.height:
            cluster, cos = assign(x, cent.matrix, top=1)
            frame = assignments_frame(ids, key, cluster[:, 0], cos[:, 0], cent.version)
        else:
            frame = assignments_spec(c).empty()
        spec = assignments_spec(c)
        store.replace_shard(spec, key, frame)
        written.append(frame.height)
        sizes = frame.group_by("cluster").len()["len"]
        yield dg.MaterializeResult(
            asset_key=ASSIGNMENT_KEYS[c],
            metadata=table_metadata(
                spec,
                delta.uri(spec),
                frame.height,
                centroids_version=cent.version,
                clusters_used=sizes.len(),
                mean_cosine=float(frame["cosine"].to_numpy().mean()) if frame.height else 0.0,
            ),
        )
    yield dg.AssetCheckResult(
        check_name="every_filtered_image_assigned",
        asset_key=ASSIGNMENT_KEYS[0],
        passed=all(w == n_filtered for w in written) and emb.height == n_filtered,
        metadata={"filtered_images": n_filtered, "embedded": emb.height, "assigned": written},
    )


class DedupConfig(dg.Config):
    """Near-duplicate removal within clusters."""

    tau: float = Field(
        default=0.0,
        description="Cosine threshold; 0 = the calibrated value for the embedding model "
        "(0.86 EfficientNet-Lite0, calibrated on real photos with planted edits; 0.95 "
        "open_clip ViT-B-32, from practice).",
    )
    policy: list[str] = Field(
        default=list(POLICY_CRITERIA),
        description="Keep policy, criteria in order: resolution (largest wins), earliest "
        "(first ingested wins), smallest_id. Changing it recomputes in full.",
    )
    mode: Literal["auto", "full"] = Field(
        default="auto",
        description="auto = incremental when only new images arrived since the last run; "
        "full = recompute every pair.",
    )
    recall_sample: int = Field(
        default=10_000, description="Rows searched exhaustively to measure pair recall."
    )
    recall_target: float = Field(
        default=0.95, description="WARN when the five clusterings find fewer true pairs."
    )
    thumbnail_groups: int = Field(default=4, description="Duplicate groups shown as thumbnails.")
    seed: int = Field(default=0, description="Seed of the recall sample.")


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "deduplicated_images",
            description=(
                "Every filtered image, kept or marked as a near duplicate: pairs with cosine ≥ τ "
                "inside a cluster of any of the five clusterings form groups (connected "
                "components, so chains are one group) and one image per group is kept by the "
                "keep policy. Incremental: only new images are searched. Metadata: pair recall "
                "of 1..5 clusterings against exhaustive search, and thumbnails of groups."
            ),
            deps=[*ASSIGNMENT_KEYS, "filtered_images", "image_embeddings", "raw_images"],
            kinds={"deltalake", "faiss", "scipy"},
            automation_condition=eager_on(*ASSIGNMENT_KEYS),
            group_name=GROUP,
            metadata={"dagster/column_schema": table_schema(DEDUPLICATED_IMAGES)},
        ),
        dg.AssetSpec(
            "duplicate_pairs",
            description="Every near-duplicate pair found: both ids, cosine and the "
            "clusterings that found it.",
            deps=[*ASSIGNMENT_KEYS, "image_embeddings"],
            kinds={"deltalake"},
            automation_condition=eager_on(*ASSIGNMENT_KEYS),
            group_name=GROUP,
            metadata={"dagster/column_schema": table_schema(DUPLICATE_PAIRS)},
        ),
    ],
    check_specs=[
        dg.AssetCheckSpec(
            "pair_recall_target",
            asset="deduplicated_images",
            description="WARN when the union of clusterings finds < recall_target of the "
            "pairs an exhaustive search finds on a sample.",
        ),
        dg.AssetCheckSpec(
            "one_kept_per_group",
            asset="deduplicated_images",
            blocking=True,
            description="Each group has exactly one kept image and every removed image "
            "points to its group's kept image.",
        ),
        dg.AssetCheckSpec(
            "every_filtered_image_deduplicated",
            asset="deduplicated_images",
            description="WARN while filtered images wait for assignments (listed by shard).",
        ),
        dg.AssetCheckSpec(
            "no_pair_below_tau",
            asset="duplicate_pairs",
            blocking=True,
            description="Every reported pair has cosine ≥ τ.",
        ),
    ],
    pool="gpu",
    retry_policy=transient_retry,
)
def deduplicate(context: dg.AssetExecutionContext, config: DedupConfig, delta: DeltaStorage):
    """Full or incremental near-duplicate removal over all shards."""
    store = delta.store()
    with fail_fast_on_permanent_errors():
        outcome = run_dedup(
            store,
            tau=config.tau or None,
            policy=config.policy,
            force_full=config.mode == "full",
            recall_sample=config.recall_sample,
            seed=config.seed,
        )
    images, pairs, stats, recall = outcome.images, outcome.pairs, outcome.stats, outcome.recall
    write_dedup(store, outcome)
    tau = outcome.tau
    context.log.info(
        f"dedup ({outcome.plan.mode}: {outcome.plan.reason}): {images.height} images, "
        f"{pairs.height} pairs, {stats.get('removed', 0)} removed"
    )
    moved = int(stats.get("previously_kept_now_removed", 0))
    if moved:
        context.log.warning(
            f"{moved} images kept before are now duplicates of a newly arrived image that wins "
            "the keep policy (they leave the curated set)"
        )
    curve = [float(r) for r in recall.get("recall", [])]
    recall_meta: dict = {f"recall_{i + 1}_clusterings": r for i, r in enumerate(curve)}
    if curve:
        recall_meta["recall_curve"] = dg.MetadataValue.md(
            f"Pair recall against exhaustive search ({recall['true_pairs']} true pairs touching "
            f"{recall['sample_size']} sampled images):\n\n"
            + markdown_bars(
                [f"{i + 1} clustering(s)" for i in range(len(curve))], [round(r, 4) for r in curve]
            )
        )
    with SourceReader() as reader:
        thumbs = duplicate_groups_markdown(
            images,
            store.read(RAW_IMAGES, columns=["image_id", "source_uri"]),
            reader.read,
            n_groups=config.thumbnail_groups,
        )
    pending = outcome.pending
    pending_by_shard = {
        f"{s} ({why})": int(n) for s, why, n in pending.group_by("shard", "why").len().rows()
    }
    groups = images.group_by("component_id").agg(
        pl.col("kept").sum().alias("kept"),
        pl.len().alias("n"),
        pl.first("component_size").alias("size"),
    )
    kept_ids = set(images.filter(pl.col("kept"))["image_id"].to_list())
    bad_pointer = images.filter(
        ~pl.col("kept")
        & (
            ~pl.col("duplicate_of").is_in(list(kept_ids))
            | (pl.col("duplicate_of") != pl.col("component_id"))
        )
    ).height
    bad_groups = groups.filter((pl.col("kept") != 1) | (pl.col("n") != pl.col("size"))).height
    below = pairs.filter(pl.col("similarity") < tau).height if pairs.height else 0
    true_pairs = int(recall.get("true_pairs", 0))
    final_recall = curve[-1] if curve else None
    yield dg.MaterializeResult(
        asset_key="deduplicated_images",
        metadata=table_metadata(
            DEDUPLICATED_IMAGES,
            delta.uri(DEDUPLICATED_IMAGES),
            images.height,
            mode=outcome.plan.mode,
            mode_reason=outcome.plan.reason,
            tau=tau,
            policy=", ".join(config.policy),
            kept=int(images["kept"].sum()),
            removed=int((~images["kept"]).sum()),
            new_images=int(stats.get("new_rows", 0)),
            groups_with_duplicates=int(stats.get("components_with_duplicates", 0)),
            largest_group=int(stats.get("largest_component", 0)),
            removed_below_tau_through_chains=int(stats.get("removed_below_tau", 0)),
            previously_kept_now_removed=moved,
            pending_images=pending.height,
            dedup_seconds=float(stats.get("seconds", 0.0)),
            recall_true_pairs=true_pairs,
            recall_seconds_exhaustive=float(recall.get("seconds_exhaustive", 0.0)),
            **recall_meta,
            duplicate_groups=dg.MetadataValue.md(thumbs),
            runs_table=delta.uri(DEDUP_RUNS),
        ),
        check_results=[
            dg.AssetCheckResult(
                check_name="pair_recall_target",
                asset_key="deduplicated_images",
                passed=final_recall is None
                or true_pairs == 0
                or final_recall >= config.recall_target,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={
                    "recall": final_recall if final_recall is not None else "n/a",
                    "target": config.recall_target,
                    "true_pairs": true_pairs,
                },
            ),
            dg.AssetCheckResult(
                check_name="one_kept_per_group",
                asset_key="deduplicated_images",
                passed=bad_groups == 0 and bad_pointer == 0,
                metadata={"bad_groups": bad_groups, "bad_pointers": bad_pointer},
            ),
            dg.AssetCheckResult(
                check_name="every_filtered_image_deduplicated",
                asset_key="deduplicated_images",
                passed=pending.height == 0,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"pending": dg.MetadataValue.json(pending_by_shard)},
            ),
        ],
    )
    yield dg.MaterializeResult(
        asset_key="duplicate_pairs",
        metadata=table_metadata(
            DUPLICATE_PAIRS,
            delta.uri(DUPLICATE_PAIRS),
            pairs.height,
            found_by_count=dg.MetadataValue.json(
                {
                    f"{i + 1} clustering(s)": int(v)
                    for i, v in enumerate(stats.get("found_by_count", []))
                }
            ),
            preview=markdown_preview(pairs.sort("similarity").drop("found_by")),
        ),
        check_results=[
            dg.AssetCheckResult(
                check_name="no_pair_below_tau",
                asset_key="duplicate_pairs",
                passed=below == 0,
                metadata={"below_tau": below, "tau": tau},
            )
        ],
    )


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
dedup_job = dg.define_asset_job(
    name="dedup_job",
    selection=["deduplicated_images", "duplicate_pairs"],
    description="Near-duplicate removal over all assigned shards (incremental when possible).",
)

defs = dg.Definitions(
    assets=[cluster_centroids, cluster_assignments, deduplicate],
    jobs=[retrain_centroids_job, assign_shard_job, dedup_job],
)
