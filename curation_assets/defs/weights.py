"""Re-weighting: sample_weights + bias_audit (stage 7); weights_job also runs the export."""

from typing import Literal

import dagster as dg
import polars as pl
from pydantic import Field

from curation_assets.defs.automation import eager_on
from curation_assets.defs.metadata import (
    markdown_bars,
    markdown_preview,
    table_metadata,
    table_schema,
)
from curation_assets.defs.resources import DeltaStorage, ImageEmbedder
from curation_assets.defs.retries import fail_fast, transient_retry
from curation_assets.lib.commits import current_commit, input_versions, record_commit
from curation_assets.lib.tables import BIAS_AUDIT, SAMPLE_WEIGHTS
from curation_assets.lib.weights import (
    DEFAULT_C,
    DEFAULT_MIN_ESS_RATIO,
    DEFAULT_PCA_DIM,
    DEFAULT_W_MAX,
    DEFAULT_W_MIN,
    audit_attributes,
    audit_markdown,
    bias_audit,
    flag_shifts,
    weight_checks,
)
from curation_assets.lib.weights.run import (
    WEIGHTS_INPUTS,
    WEIGHTS_STAGE,
    concept_encoder,
    fit_weights,
    load_weight_inputs,
    weight_histogram,
    weights_summary,
    write_weights,
)

GROUP = "weights"


class WeightsConfig(dg.Config):
    """The density-ratio probe, the weight bounds and the bias audit."""

    correct_for: Literal["filter", "filter_and_dedup"] = Field(
        default="filter",
        description="filter: undo only the safety filter's shift (near duplicates removed by "
        "dedup are left out of the reference); filter_and_dedup: undo both.",
    )
    method: Literal["kept_vs_removed", "unfiltered_vs_filtered"] = Field(
        default="kept_vs_removed",
        description="Probe: kept vs removed images (default, better estimate) or DALL·E 2's "
        "unfiltered vs filtered; both estimate p_unfiltered(x)/p_filtered(x).",
    )
    C: float = Field(default=DEFAULT_C, description="Inverse L2 strength (smaller = weaker).")
    pca_dim: int = Field(default=DEFAULT_PCA_DIM, description="PCA components the probe sees.")
    w_min: float = Field(default=DEFAULT_W_MIN, description="Lower weight bound (≤ 1).")
    w_max: float = Field(default=DEFAULT_W_MAX, description="Upper weight bound (≥ 1).")
    min_ess_ratio: float = Field(
        default=DEFAULT_MIN_ESS_RATIO,
        description="Check: effective sample size / N must be at least this.",
    )
    seed: int = Field(default=0, description="Seed of the probe's sample, folds and PCA.")
    keywords: list[str] = Field(
        default_factory=list,
        description="Extra caption keywords to audit (each a whole word), beside the default "
        "people words (woman, man, ...).",
    )
    concepts: dict[str, str] = Field(
        default_factory=dict,
        description="Zero-shot concepts to audit, name → prompt (needs an embedder with a "
        "text tower, e.g. open_clip).",
    )
    max_shift_pts: float = Field(
        default=2.0, description="Check: weighted share within this many points of unfiltered."
    )
    min_support: int = Field(
        default=100, description="Audit check ignores values held by fewer unfiltered images."
    )


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "sample_weights",
            description=(
                "One training weight per kept image (filtered and deduplicated): the density "
                "ratio p_unfiltered(x)/p_filtered(x) from a deliberately weak, calibrated "
                "linear probe on the embeddings (DALL·E 2's fix for the bias a filter "
                "introduces), clipped to [w_min, w_max] and scaled to mean 1."
            ),
            deps=["deduplicated_images", "image_embeddings", "raw_images"],
            kinds={"deltalake", "scikitlearn"},
            group_name=GROUP,
            automation_condition=eager_on("deduplicated_images"),
            metadata={"dagster/column_schema": table_schema(SAMPLE_WEIGHTS)},
        ),
        dg.AssetSpec(
            "bias_audit",
            description=(
                "For every attribute (metadata, caption keywords, zero-shot concepts): its "
                "share before filtering, after, and after under the weights — did the filter "
                "shift it, and do the weights bring it back?"
            ),
            deps=["sample_weights", "raw_images"],
            kinds={"deltalake", "polars"},
            group_name=GROUP,
            automation_condition=eager_on("deduplicated_images"),
            metadata={"dagster/column_schema": table_schema(BIAS_AUDIT)},
        ),
    ],
    check_specs=[
        dg.AssetCheckSpec(
            "weights_finite_positive",
            asset="sample_weights",
            blocking=True,
            description="Every weight is finite and > 0.",
        ),
        dg.AssetCheckSpec(
            "weights_mean_one",
            asset="sample_weights",
            blocking=True,
            description="Weights average exactly 1.",
        ),
        dg.AssetCheckSpec(
            "weights_within_bounds",
            asset="sample_weights",
            blocking=True,
            description="Every weight lies in [w_min, w_max].",
        ),
        dg.AssetCheckSpec(
            "weights_ess_ratio",
            asset="sample_weights",
            description="WARN when the effective sample size / N is below the floor.",
        ),
        dg.AssetCheckSpec(
            "weighted_shares_near_unfiltered",
            asset="bias_audit",
            description="WARN when an attribute's weighted share stays more than max_shift_pts "
            "from its unfiltered share.",
        ),
    ],
    retry_policy=transient_retry,
)
@fail_fast
def weights_and_audit(
    context: dg.AssetExecutionContext,
    config: WeightsConfig,
    delta: DeltaStorage,
    embedder: ImageEmbedder,
):
    """Fit the probe, weight the kept images, audit the attribute shares.

    Nothing is written when neither the inputs nor the configuration changed since the last
    commit: the committed tables are re-checked and their figures re-reported.
    """
    store = delta.store()
    inputs = input_versions(store, WEIGHTS_INPUTS)
    settings = config.model_dump()
    done = current_commit(store, WEIGHTS_STAGE, inputs=inputs, config=settings)
    if done is not None:
        context.log.info(
            f"weights: inputs and config unchanged since the commit of {done.committed_at}; "
            "nothing to do"
        )
        yield from _weight_results(delta, config, done.summary, up_to_date=True)
        return
    frame, x, kept = load_weight_inputs(store, config.correct_for)
    if not kept.any():
        msg = "no kept image: materialize deduplicated_images first"
        raise dg.Failure(msg, allow_retries=False)
    fitted = fit_weights(
        frame,
        x,
        kept,
        method=config.method,
        C=config.C,
        pca_dim=config.pca_dim or None,
        seed=config.seed,
        w_min=config.w_min,
        w_max=config.w_max,
    )
    model, stats = fitted.model, fitted.weights.stats
    context.log.info(
        f"weights: probe {model.status} AUC {model.auc}, ESS ratio {stats['ess_ratio']:.3f}, "
        f"clipped {stats['clipped_share']:.3%}"
    )
    encoder, concept_note = concept_encoder(config.concepts, embedder.load)
    if config.concepts and encoder is None:
        context.log.warning(f"zero-shot concepts {concept_note}")
    attributes = audit_attributes(
        frame, x, keywords=config.keywords, concepts=config.concepts, text_encoder=encoder
    )
    audit = bias_audit(attributes, fitted.frame.select("image_id", "weight"))
    outputs = write_weights(store, fitted.frame, audit)
    summary = weights_summary(fitted, correct_for=config.correct_for, concepts=concept_note)
    summary["weight_distribution"] = "Kept images by weight (log-spaced bins):\n\n" + markdown_bars(
        *weight_histogram(stats), header=("weight", "images")
    )
    record_commit(
        store, WEIGHTS_STAGE, inputs=inputs, outputs=outputs, config=settings, summary=summary
    )
    yield from _weight_results(delta, config, summary, weights=fitted.frame, audit=audit)


def _weight_results(
    delta: DeltaStorage,
    config: WeightsConfig,
    summary: dict,
    *,
    weights: pl.DataFrame | None = None,
    audit: pl.DataFrame | None = None,
    up_to_date: bool = False,
):
    """The two materializations and their checks, from a run's summary and its tables.

    The checks always run on the tables themselves (read back when not given), so a run
    with nothing to do still verifies what is stored.
    """
    store = delta.store()
    if weights is None:
        weights = store.read(SAMPLE_WEIGHTS)
    if audit is None:
        audit = store.read(BIAS_AUDIT)
    flagged = flag_shifts(audit, max_shift_pts=config.max_shift_pts, min_support=config.min_support)
    checks = {
        c.name: c
        for c in weight_checks(
            weights["weight"].to_numpy(),
            min_ess_ratio=config.min_ess_ratio,
            w_min=config.w_min,
            w_max=config.w_max,
        )
    }
    plain = {
        k: v for k, v in summary.items() if k not in ("probe", "weight_distribution", "concepts")
    }
    yield dg.MaterializeResult(
        asset_key="sample_weights",
        metadata=table_metadata(
            SAMPLE_WEIGHTS,
            delta.uri(SAMPLE_WEIGHTS),
            weights.height,
            up_to_date=up_to_date,
            **plain,
            probe=dg.MetadataValue.json(summary["probe"]),
            weight_distribution=dg.MetadataValue.md(summary["weight_distribution"]),
        ),
        check_results=[
            dg.AssetCheckResult(
                check_name=name,
                asset_key="sample_weights",
                passed=checks[name].passed,
                severity=dg.AssetCheckSeverity.WARN
                if name == "weights_ess_ratio"
                else dg.AssetCheckSeverity.ERROR,
                description=checks[name].description,
                metadata={"value": checks[name].value if checks[name].value is not None else "n/a"},
            )
            for name in (
                "weights_finite_positive",
                "weights_mean_one",
                "weights_within_bounds",
                "weights_ess_ratio",
            )
        ],
    )
    yield dg.MaterializeResult(
        asset_key="bias_audit",
        metadata=table_metadata(
            BIAS_AUDIT,
            delta.uri(BIAS_AUDIT),
            audit.height,
            up_to_date=up_to_date,
            flagged=flagged.height,
            concepts=summary["concepts"],
            shares=dg.MetadataValue.md(audit_markdown(audit, flagged=flagged)),
        ),
        check_results=[
            dg.AssetCheckResult(
                check_name="weighted_shares_near_unfiltered",
                asset_key="bias_audit",
                passed=flagged.height == 0,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={
                    "flagged": markdown_preview(
                        flagged.select(
                            "attribute", "value", "shift_filtered_pts", "shift_weighted_pts"
                        )
                        if flagged.height
                        else flagged
                    ),
                    "max_shift_pts": config.max_shift_pts,
                },
            )
        ],
    )


weights_job = dg.define_asset_job(  # with the export (defs/export.py), as one global job
    name="weights_job",
    selection=["sample_weights", "bias_audit", "curated_dataset"],
    description="Fit the sample weights, audit the shift and export the curated dataset.",
)

defs = dg.Definitions(assets=[weights_and_audit], jobs=[weights_job])
