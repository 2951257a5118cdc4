"""Dedup stage: near-duplicate removal within the clusters of the five clusterings."""

from pathlib import Path
from typing import Any, Literal

import dagster as dg
from pydantic import Field

from curation_assets.defs.automation import eager_on
from curation_assets.defs.cluster import ASSIGNMENT_KEYS, GROUP
from curation_assets.defs.metadata import (
    check_result,
    markdown_bars,
    markdown_preview,
    table_metadata,
    table_schema,
)
from curation_assets.defs.resources import Compute, DeltaStorage, Engine
from curation_assets.defs.retries import fail_fast, transient_retry
from curation_assets.lib.dedup import (
    committed_stored_pairs,
    dedup_checks,
    dedup_figures,
    found_by_counts,
    group_thumbnails,
    pair_thumbnails,
    pairs_at,
    read_truth,
    recall_chart,
    run_dedup_stage,
    sweep_grid,
    sweep_markdown,
    tau_sweep,
)
from curation_assets.lib.tables import DEDUP_RUNS, DEDUPLICATED_IMAGES, DUPLICATE_PAIRS

#: τ − τ_min when the config leaves τ_min at 0: the candidate band stored for retuning.
TAU_BAND = 0.05


class DedupConfig(dg.Config):
    """Near-duplicate removal within clusters."""

    tau: float = Field(
        default=0.0,
        description="Cosine threshold; 0 = the last run's τ (a retune sticks: automation keeps "
        "it), or on the first run the calibrated value for the embedding model (0.86 "
        "EfficientNet-Lite0, calibrated on real photos with planted edits; 0.95 open_clip "
        "ViT-B-32, from practice).",
    )
    tau_min: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Floor of the stored candidate pairs; 0 = the last run's floor when it is "
        "≤ τ, else τ − 0.05. Pairs in [τ_min, τ) are "
        "kept in candidate_pairs, so a later τ anywhere in [τ_min, 1] is a retune (groups and "
        "decisions re-derived from stored pairs in seconds, no search); a τ or τ_min below "
        "the stored floor is a full run.",
    )
    truth_file: str = Field(
        default="",
        description="Optional ground truth of near-duplicate groups (CSV: group + image_id or "
        "source_uri; or the demo's ground_truth.json): the τ sweep then shows pair precision "
        "and recall at each τ.",
    )
    verify_band: bool | None = Field(
        default=None,
        description="Check every candidate pair in [τ_min, τ) with local features (ORB "
        "keypoints + RANSAC + aligned agreement, ~5-8 ms a pair, only pairs not checked before) "
        "and let the verified ones join the groups: on clothing-small with planted edits it "
        "lifted pair recall 0.84 → 0.95 at equal precision (curation bench verify). Unset = "
        "as the last run (off on the first), so automation keeps it. Turning it on or off is "
        "a retune.",
    )
    verify_min_inliers: int = Field(
        default=25, ge=3, description="Least RANSAC inliers for a verified pair."
    )
    verify_min_agreement: float = Field(
        default=0.6,
        ge=0.0,
        le=1.0,
        description="Least share of aligned textured cells that correlate, for a verified pair.",
    )
    policy: list[str] | None = Field(
        default=None,
        description="Keep policy, criteria in order: resolution (largest wins), earliest "
        "(first ingested wins), smallest_id. Unset = as the last run (all three, in that "
        "order, on the first), so automation keeps a policy chosen here. Changing it "
        "recomputes in full.",
    )
    mode: Literal["auto", "full"] = Field(
        default="auto",
        description="auto = incremental when only new images arrived since the last run; "
        "full = recompute every pair.",
    )
    recall_share: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="The recall sample's exhaustive search costs at most this share of the "
        "run's own pair search (queries from the new rows, pooled over runs on the same "
        "centroids).",
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
                "keep policy. Incremental: only the shards whose inputs changed are searched, "
                "each new row against its clusters: one pass over a cluster-bucketed layout "
                "(dedup_members, one copy of each vector) that reads every row once (the "
                "(clustering, bucket) units, as in a full run, when the new rows outgrow a "
                "quarter of the budget; each clustering's units staged as parquet files beside "
                "the tables while searched); memory is bounded by the compute resource's "
                "budget. Metadata: staged_rows, dedup_seconds_staging, pair recall of 1..5 "
                "clusterings against exhaustive search on a budgeted sample, and thumbnails of "
                "groups."
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
@fail_fast
def deduplicate(
    context: dg.AssetExecutionContext,
    config: DedupConfig,
    delta: DeltaStorage,
    compute: Compute,
    engine: Engine,
):
    """Full or incremental near-duplicate removal over all shards.

    The (clustering, bucket) units (an update: clustering 0's buckets against the new rows) are
    searched as tasks of the ``engine`` (this process, or a Ray cluster); the merge, the recall
    sample and the writes stay in this step.

    Memory: one shard, one (clustering, bucket) unit (or bucket and the new rows) and the pair
    graph at a time, sized by ``compute.memory_budget_mb`` (see
    :func:`~curation_assets.lib.dedup.run_dedup`).
    """
    store = delta.store()
    verify: Any = "keep" if config.verify_band is None else None
    if config.verify_band:
        from curation_assets.lib.dedup.verify import VerifyParams  # OpenCV: only when on

        verify = VerifyParams(
            min_inliers=config.verify_min_inliers, min_agreement=config.verify_min_agreement
        )
    outcome = run_dedup_stage(
        store,
        tau=config.tau or None,
        policy=config.policy,
        force_full=config.mode == "full",
        tau_min=config.tau_min or None,
        band=TAU_BAND,
        verify=verify,
        budget=compute.budget(),
        recall_share=config.recall_share,
        seed=config.seed,
        progress=context.log.info,
        engine=engine.engine(),
    )
    figures = dedup_figures(outcome)
    context.log.info(
        f"dedup ({outcome.plan.mode}: {outcome.plan.reason}): {outcome.stats.get('images', 0)} "
        f"images, {outcome.stats.get('pairs', 0)} pairs, {outcome.stats.get('removed', 0)} removed"
    )
    if figures["previously_kept_now_removed"]:
        context.log.warning(
            f"{figures['previously_kept_now_removed']} images kept before are now duplicates "
            "(a newly arrived image won its group's keep policy, or a retune joined groups): "
            "they leave the curated set"
        )
    chart = recall_chart(outcome)
    if chart:
        title, labels, values = chart
        figures["recall_curve"] = dg.MetadataValue.md(title + markdown_bars(labels, values))
    thumbs = group_thumbnails(store, outcome.members, n_groups=config.thumbnail_groups)
    local = outcome.merged.local is not None  # it holds the groups this update re-decided
    if local:
        figures["graph_scope"] = (
            f"{outcome.members.height} images in the groups this run re-decided (the rest of "
            "the pair graph is as committed): the thumbnails, the preview and the checks "
            "cover those"
        )
    # an update holds no whole graph: the sweep reads the committed pairs, within the budget
    stored, n_stored = (
        committed_stored_pairs(store, compute.budget())
        if local
        else (outcome.merged.stored, outcome.merged.stored.height)
    )
    floor = outcome.tau_min
    figures["tau_min"] = floor
    figures["candidate_pairs"] = int(outcome.stats.get("candidate_pairs", 0))
    on = outcome.verify_key != "off"
    figures["band_verification"] = "on" if on else "off"
    if on:
        for key in ("promoted_pairs", "verified_new", "verify_errors"):
            figures[key] = int(outcome.stats.get(key, 0))
        figures["verify_seconds"] = round(float(outcome.stats.get("verify_seconds", 0.0)), 3)
    if stored is not None:
        truth = read_truth(Path(config.truth_file), store) if config.truth_file else None
        sweep = tau_sweep(stored, sweep_grid(floor, outcome.tau, step=0.01), truth)
        figures["tau_sweep"] = dg.MetadataValue.md(sweep_markdown(sweep, outcome.tau, floor))
        figures["pairs_at_tau"] = dg.MetadataValue.md(
            pair_thumbnails(
                store, pairs_at(stored, outcome.tau, n=config.thumbnail_groups), outcome.tau
            )
        )
    else:
        figures["tau_sweep"] = (
            f"not computed: the {n_stored} stored pairs need more than a quarter of the memory "
            "budget (compute.memory_budget_mb); `curation dedup sweep` computes it alone"
        )
    checks = dedup_checks(outcome, config.recall_target)
    yield dg.MaterializeResult(
        asset_key="deduplicated_images",
        metadata=table_metadata(
            DEDUPLICATED_IMAGES,
            delta.uri(DEDUPLICATED_IMAGES),
            int(outcome.stats.get("images", 0)),
            **figures,
            duplicate_groups=dg.MetadataValue.md(thumbs),
            runs_table=delta.uri(DEDUP_RUNS),
        ),
        check_results=[check_result(c) for c in checks if c.asset == "deduplicated_images"],
    )
    yield dg.MaterializeResult(
        asset_key="duplicate_pairs",
        metadata=table_metadata(
            DUPLICATE_PAIRS,
            delta.uri(DUPLICATE_PAIRS),
            int(outcome.stats.get("pairs", outcome.pairs.height)),
            found_by_count=dg.MetadataValue.json(found_by_counts(outcome)),
            preview=markdown_preview(
                outcome.pairs.sort("similarity").drop("found_by", "shard_a", "shard_b")
            ),
        ),
        check_results=[check_result(c) for c in checks if c.asset == "duplicate_pairs"],
    )


dedup_job = dg.define_asset_job(
    name="dedup_job",
    selection=["deduplicated_images", "duplicate_pairs"],
    description="Near-duplicate removal over all assigned shards (incremental when possible).",
)

defs = dg.Definitions(assets=[deduplicate], jobs=[dedup_job])
