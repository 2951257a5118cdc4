"""Dedup stage: near-duplicate removal within the clusters of the five clusterings."""

from typing import Literal

import dagster as dg
import polars as pl
from pydantic import Field

from curation_assets.defs.automation import eager_on
from curation_assets.defs.cluster import ASSIGNMENT_KEYS, GROUP
from curation_assets.defs.metadata import (
    markdown_bars,
    markdown_preview,
    table_metadata,
    table_schema,
)
from curation_assets.defs.resources import DeltaStorage
from curation_assets.defs.retries import fail_fast_on_permanent_errors, transient_retry
from curation_assets.lib.dedup import (
    DEDUP_RUNS,
    DEDUPLICATED_IMAGES,
    DUPLICATE_PAIRS,
    POLICY_CRITERIA,
    duplicate_groups_markdown,
    run_dedup,
    write_dedup,
)
from curation_assets.lib.labels import SourceReader
from curation_assets.lib.tables import RAW_IMAGES


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


dedup_job = dg.define_asset_job(
    name="dedup_job",
    selection=["deduplicated_images", "duplicate_pairs"],
    description="Near-duplicate removal over all assigned shards (incremental when possible).",
)

defs = dg.Definitions(assets=[deduplicate], jobs=[dedup_job])
