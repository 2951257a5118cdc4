"""Re-weighting: sample_weights + bias_audit (stage 7); weights_job also runs the export."""

from typing import Any, Literal

import dagster as dg
from pydantic import Field

from curation_assets.defs.automation import eager_on
from curation_assets.defs.metadata import (
    markdown_bars,
    markdown_preview,
    table_metadata,
    table_schema,
)
from curation_assets.defs.resources import Compute, DeltaStorage, Engine, ImageEmbedder
from curation_assets.defs.retries import fail_fast, transient_retry
from curation_assets.lib.commits import Settings, last_commit, settings_in_force
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import BIAS_AUDIT, SAMPLE_WEIGHTS
from curation_assets.lib.weights import (
    DEFAULT_C,
    DEFAULT_MIN_ESS_RATIO,
    DEFAULT_PCA_DIM,
    DEFAULT_W_MAX,
    DEFAULT_W_MIN,
    audit_markdown,
    flag_shifts,
)
from curation_assets.lib.weights.plan import (
    DEFAULT_MEAN_TOLERANCE,
    DEFAULT_REFIT_GROWTH,
    DEFAULT_REFIT_PRIOR_SHIFT,
    WEIGHTS_STAGE,
)
from curation_assets.lib.weights.run import concept_encoder, weight_histogram
from curation_assets.lib.weights.scale import total_checks
from curation_assets.lib.weights.uniqueness import (
    DEFAULT_UNIQUENESS_FLOOR,
    DEFAULT_UNIQUENESS_POWER,
)
from curation_assets.lib.weights.update import WeightsOutcome, update_weights

GROUP = "weights"


class WeightsConfig(dg.Config):
    """The density-ratio probe, the weight bounds and the bias audit.

    The probe, bound, audit and uniqueness settings are sticky: unset, a run uses those of the
    last committed run (the defaults on the first), so a value chosen here once is kept by the
    runs automation launches instead of being put back (with a full re-score each way).
    """

    correct_for: str | None = Field(
        default=None,
        description="filter: undo only the safety filter's shift (near duplicates removed by "
        "dedup are left out of the reference); filter_and_dedup: undo both. Unset = as the "
        "last run (filter on the first).",
    )
    method: str | None = Field(
        default=None,
        description="Probe: kept vs removed images (default, better estimate) or DALL·E 2's "
        "unfiltered vs filtered; both estimate p_unfiltered(x)/p_filtered(x). Unset = as the "
        "last run (kept_vs_removed on the first).",
    )
    C: float | None = Field(
        default=None,
        description=f"Inverse L2 strength (smaller = weaker). Unset = as the last run "
        f"({DEFAULT_C} on the first).",
    )
    pca_dim: int | None = Field(
        default=None,
        description=f"PCA components the probe sees. Unset = as the last run ({DEFAULT_PCA_DIM} "
        "on the first).",
    )
    w_min: float | None = Field(
        default=None,
        description=f"Lower weight bound (≤ 1). Unset = as the last run ({DEFAULT_W_MIN} on the "
        "first).",
    )
    w_max: float | None = Field(
        default=None,
        description=f"Upper weight bound (≥ 1). Unset = as the last run ({DEFAULT_W_MAX} on the "
        "first).",
    )
    min_ess_ratio: float = Field(
        default=DEFAULT_MIN_ESS_RATIO,
        description="Check: effective sample size / N must be at least this.",
    )
    seed: int | None = Field(
        default=None,
        description="Seed of the probe's sample, folds and PCA. Unset = as the last run (0 on "
        "the first).",
    )
    keywords: list[str] | None = Field(
        default=None,
        description="Extra caption keywords to audit (each a whole word), beside the default "
        "people words (woman, man, ...). Unset = as the last run (none on the first).",
    )
    concepts: dict[str, str] | None = Field(
        default=None,
        description="Zero-shot concepts to audit, name → prompt (needs an embedder with a "
        "text tower, e.g. open_clip). Unset = as the last run (none on the first).",
    )
    max_shift_pts: float = Field(
        default=2.0, description="Check: weighted share within this many points of unfiltered."
    )
    min_support: int = Field(
        default=100, description="Audit check ignores values held by fewer unfiltered images."
    )
    mode: Literal["auto", "full"] = Field(
        default="auto",
        description="auto: score only new or changed shards with the committed probe unless "
        "a drift rule asks for a refit (see refit_*); full: refit and re-score every shard.",
    )
    mean_tolerance: float = Field(
        default=DEFAULT_MEAN_TOLERANCE,
        description="Largest |mean weight − 1| over the kept set a run may leave; beyond it "
        "every shard is rescaled (re-scored with the corrected normaliser).",
    )
    refit_growth: float = Field(
        default=DEFAULT_REFIT_GROWTH,
        description="Refit the probe when the reference set changed by more than this share "
        "of its size at the fit (1.0: when it doubled).",
    )
    refit_prior_shift: float = Field(
        default=DEFAULT_REFIT_PRIOR_SHIFT,
        description="Refit the probe when the kept share moved more than this since the fit.",
    )
    uniqueness_power: float | None = Field(
        default=None,
        description="Fold image_uniqueness into the weights: each weight is multiplied by "
        "(u / u_ref)^uniqueness_power before clipping and the mean-1 scaling (u_ref: median "
        "uniqueness of the probe sample's kept images). 0 = off (default); > 0 up-weights "
        "unique images / outliers, < 0 favours typical ones. Needs image_uniqueness "
        "(similarity_job); images not scored yet get multiplier 1 (uniqueness_missing). A "
        "change re-scores every shard. Unset = as the last run (off on the first).",
    )
    uniqueness_floor: float | None = Field(
        default=None,
        description="Uniqueness scores below this count as this in the multiplier (a score "
        "of 0, k exact copies, would give 0, or infinity with a negative power). Unset = as "
        f"the last run ({DEFAULT_UNIQUENESS_FLOOR} on the first).",
    )


WEIGHTS_DEFAULTS: dict[str, Any] = {
    "correct_for": "filter",
    "method": "kept_vs_removed",
    "C": DEFAULT_C,
    "pca_dim": DEFAULT_PCA_DIM,
    "w_min": DEFAULT_W_MIN,
    "w_max": DEFAULT_W_MAX,
    "seed": 0,
    "keywords": [],
    "concepts": {},
    "uniqueness_power": DEFAULT_UNIQUENESS_POWER,
    "uniqueness_floor": DEFAULT_UNIQUENESS_FLOOR,
}
"""The weights' sticky settings and their first-run values (the probe, bounds, audit and
uniqueness settings a commit records; the checks' thresholds and the drift rules are not)."""


def weights_in_force(store: DeltaStore, config: WeightsConfig) -> Settings:
    """``config`` with every unset sticky setting as the last commit recorded it."""
    last = last_commit(store, WEIGHTS_STAGE)
    recorded: dict[str, Any] | None = None
    if last is not None:  # the commit nests them (plan.settings_record); off = not recorded
        recorded = {**last.config.get("probe", {}), **last.config.get("audit", {})}
        term = last.config.get("uniqueness")
        if term:
            recorded |= {"uniqueness_power": term["power"], "uniqueness_floor": term["floor"]}
    in_force = settings_in_force(config.model_dump(), recorded, WEIGHTS_DEFAULTS)
    for name, allowed in CHOICES.items():
        if in_force.values[name] not in allowed:
            msg = f"{name}={in_force.values[name]!r}: expected one of {', '.join(allowed)}"
            raise ValueError(msg)
    return in_force


CHOICES = {
    "correct_for": ("filter", "filter_and_dedup"),
    "method": ("kept_vs_removed", "unfiltered_vs_filtered"),
}
"""The values the string settings accept (Dagster config has no optional Literal)."""


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "sample_weights",
            description=(
                "One training weight per kept image (filtered and deduplicated): the density "
                "ratio p_unfiltered(x)/p_filtered(x) from a deliberately weak, calibrated "
                "linear probe on the embeddings (DALL·E 2's fix for the bias a filter "
                "introduces), clipped to [w_min, w_max] and scaled to mean 1 (within "
                "mean_tolerance). Partitioned by shard: a new shard is scored with the "
                "committed probe without touching the others."
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
            description="Weights average 1 within mean_tolerance (from per-shard sums).",
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
    compute: Compute,
    engine: Engine,
):
    """Fit the probe on a bounded sample, weight the kept images shard by shard, audit.

    The shards scored from their embeddings are tasks of the ``engine`` (this process, a
    budget-sized group of shards at a time; or one Ray task per shard, each holding one shard:
    ``lib/weights/work.py``); the probe's fit, the patched shards, the sums, the audit and the
    commit stay in this step. On Ray the metadata says how many tasks each node ran
    (``score_tasks_per_node``).

    Only new or changed shards are scored unless a drift rule (or config) asks for a refit;
    nothing is written when no shard and no setting changed since the last commit (the
    committed tables are re-checked from their per-shard sums and their figures re-reported).

    Memory: the compute budget — the probe's sample (half of it) or one group of shards being
    scored or patched (half of it), never the whole corpus; plus one stats row and ~50
    audit-count rows per shard. A Ray task: one shard's rows, a scoring batch and the probe.

    ``image_uniqueness`` (``uniqueness_power``) is read when the config asks for it, not
    declared as a dependency: the automation's ``eager_on`` never runs an asset while a
    dependency is missing, so a static dependency would hold back the weights and the export
    of every shard until the optional similarity branch had scored it, for users who never
    weight by uniqueness too (and ``curation run`` builds the similarity assets after the
    weights). With the term on, a missing table fails the run with the fix; a shard not
    scored yet gets multiplier 1 (``uniqueness_missing``) and is re-weighted by the next run
    after its scores land (the commit records the table's version).
    """
    store = delta.store()
    try:
        in_force = weights_in_force(store, config)
    except ValueError as exc:
        raise dg.Failure(str(exc), allow_retries=False) from exc
    settings = in_force.values
    context.log.info(f"weights settings: {in_force.describe()}")

    def encoder():
        return concept_encoder(settings["concepts"], embedder.load)

    try:
        outcome = update_weights(store, settings, compute.budget(), encoder, engine=engine.engine())
    except ValueError as exc:
        raise dg.Failure(str(exc), allow_retries=False) from exc
    summary = outcome.summary
    work = (
        f"{summary['shards_scored']} shards scored from their embeddings, "
        f"{summary.get('shards_patched', 0)} patched from their stored ratios "
        f"({summary.get('shards_drop_patched', 0)} from their dropped rows alone), "
        f"{outcome.written} rewritten, "
        f"{summary.get('rows_deleted_in_place', 0)} rows deleted in place"
        if outcome.plan.mode != "current"
        else "0 shards scored"
    )
    tasks = outcome.tasks
    if tasks.tasks:
        where = (
            ", ".join(f"node {n[:12]}: {c}" for n, c in sorted(tasks.per_node.items()))
            if tasks.per_node
            else "this process"
        )
        work += f" in {tasks.tasks} {tasks.engine} tasks ({where})"

    context.log.info(
        f"weights: {outcome.plan.mode} — {outcome.plan.reason}; probe "
        f"{summary['probe_status']} AUC {summary['probe_auc']}, ESS ratio "
        f"{summary['ess_ratio']:.3f}, {work}"
    )
    if settings["concepts"] and summary["concepts"].startswith("skipped"):
        context.log.warning(f"zero-shot concepts {summary['concepts']}")
    yield from _weight_results(delta, config, outcome, compute, in_force)


def _weight_results(
    delta: DeltaStorage,
    config: WeightsConfig,
    outcome: WeightsOutcome,
    compute: Compute,
    in_force: Settings,
):
    """The two materializations and their checks, from a run's outcome.

    The weight checks run on the per-shard sums of the committed (or just written) tables;
    the audit check on the audit table.
    """
    summary, totals, audit = outcome.summary, outcome.totals, outcome.audit
    settings = in_force.values
    up_to_date = outcome.plan.mode == "current"
    flagged = flag_shifts(audit, max_shift_pts=config.max_shift_pts, min_support=config.min_support)
    checks = {
        c.name: c
        for c in total_checks(
            totals,
            min_ess_ratio=config.min_ess_ratio,
            w_min=settings["w_min"],
            w_max=settings["w_max"],
            mean_tolerance=config.mean_tolerance,
        )
    }
    hidden = ("probe", "concepts", "reason", "mode", "uniqueness")
    plain = {k: v for k, v in summary.items() if k not in hidden}
    yield dg.MaterializeResult(
        asset_key="sample_weights",
        metadata=table_metadata(
            SAMPLE_WEIGHTS,
            delta.uri(SAMPLE_WEIGHTS),
            int(totals["n"]),
            up_to_date=up_to_date,
            **plain,
            mode=outcome.plan.mode,
            reason=outcome.plan.reason,
            committed_mode=summary["mode"],
            memory_budget_mb=compute.memory_budget_mb,
            settings_kept_from_last_run=", ".join(in_force.inherited) or "none",
            **_task_metadata(outcome),
            probe=dg.MetadataValue.json(summary["probe"]),
            weight_distribution=dg.MetadataValue.md(
                "Kept images by weight (log-spaced bins over [w_min, w_max], from per-shard "
                "histograms):\n\n"
                + markdown_bars(*weight_histogram(totals), header=("weight", "images"))
            ),
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


def _task_metadata(outcome: WeightsOutcome) -> dict[str, Any]:
    """Where this run's scoring tasks ran: engine, tasks and, on Ray, tasks per node."""
    meta = outcome.tasks.metadata()
    if "score_tasks_per_node" in meta:
        meta["score_tasks_per_node"] = dg.MetadataValue.json(meta["score_tasks_per_node"])
    return meta


weights_job = dg.define_asset_job(  # with the export (defs/export.py), as one global job
    name="weights_job",
    selection=["sample_weights", "bias_audit", "curated_dataset"],
    description="Fit the sample weights, audit the shift and export the curated dataset.",
)

defs = dg.Definitions(assets=[weights_and_audit], jobs=[weights_job])
