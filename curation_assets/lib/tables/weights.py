"""Weights' tables: one sample weight per kept image, the bias audit, and their per-shard parts.

Written by :mod:`curation_assets.lib.weights` (``sample_weights``, ``bias_audit``,
``weight_shard_stats``, ``audit_shard_counts``, ``weight_probes``). ``sample_weights`` is
partitioned by shard, so a new shard is scored and written without touching any other shard's
files; the global figures (mean-1 normaliser, ESS, audit shares) are sums over the two small
per-shard tables (one row, resp. one row per attribute value, per shard). Those two are not
partitioned: they are read whole every run and rewritten in one commit (a file per shard
would make that read cost a file open per shard).
"""

import polars as pl

from curation_assets.lib.tables.spec import UTC_TIMESTAMP, Column, TableSpec

SAMPLE_WEIGHTS = TableSpec(
    name="sample_weights",
    description="One weight per kept (filtered, deduplicated) image: undoes the filter's shift. "
    "Rows of images dedup later removes are deleted by tombstones appended to the partition "
    "shard=_changes (deleted=true, the image's shard in changed_shard, the Delta version in "
    "revision): read through curation_assets' DeltaStore, or drop a row whose image_id has a "
    "newer tombstone.",
    partition_by=("shard",),
    revision_key="image_id",
    columns=(
        Column("image_id", pl.String, "sha256 of the image bytes."),
        Column("shard", pl.String, "Shard it came from."),
        Column(
            "weight",
            pl.Float64,
            "Training weight: clip(scale · raw_ratio · m, w_min, w_max), m the uniqueness "
            "multiplier (1 unless uniqueness_power is set); the kept set's mean is 1 within the "
            "stage's mean_tolerance (see weight_shard_stats.scale).",
        ),
        Column(
            "raw_ratio",
            pl.Float64,
            "Estimated p_unfiltered(x) / p_filtered(x) before clipping and scaling (mean ≈ 1).",
        ),
        Column(
            "p_unfiltered",
            pl.Float64,
            "P(unfiltered | x) of a balanced unfiltered-vs-filtered probe: raw / (1 + raw).",
        ),
        Column("p_kept", pl.Float64, "Estimated P(kept by the filter | x) = π_kept / raw_ratio."),
        Column("clipped", pl.Boolean, "True when the scaled ratio was clipped to w_min or w_max."),
    ),
)

BIAS_AUDIT = TableSpec(
    name="bias_audit",
    description="Share of each attribute value: unfiltered, filtered, filtered under weights.",
    partition_by=(),
    columns=(
        Column("attribute", pl.String, "metadata column, keyword:<word> or concept:<name>."),
        Column("value", pl.String, "The value (true for keywords and concepts)."),
        Column("share_unfiltered", pl.Float64, "Share among all ingested images."),
        Column("share_filtered", pl.Float64, "Share among the kept images."),
        Column("share_weighted", pl.Float64, "Share among the kept images under the weights."),
        Column("shift_filtered_pts", pl.Float64, "filtered − unfiltered, percentage points."),
        Column("shift_weighted_pts", pl.Float64, "weighted − unfiltered, percentage points."),
        Column("n_unfiltered", pl.Int64, "Unfiltered images with the value."),
        Column("n_filtered", pl.Int64, "Kept images with the value."),
    ),
)
"""The audit table: one row per attribute value (:func:`bias_audit`), the sum over shards."""

WEIGHT_SHARD_STATS = TableSpec(
    name="weight_shard_stats",
    description="One row per scored shard: the sums the global weight figures are built from.",
    partition_by=(),
    columns=(
        Column("shard", pl.String, "Shard."),
        Column("probe_id", pl.String, "The weight_probes row that scored it."),
        Column("model_id", pl.String, "Embedding model of the shard's embeddings."),
        Column("scale", pl.Float64, "Normaliser s of weight = clip(s · raw_ratio, w_min, w_max)."),
        Column("n_reference", pl.Int64, "Reference ('unfiltered') images of the shard."),
        Column("n_kept", pl.Int64, "Kept images (weighted rows) of the shard."),
        Column("weight_sum", pl.Float64, "Σ weight over the kept rows."),
        Column("weight_sq_sum", pl.Float64, "Σ weight² (for the effective sample size)."),
        Column("weight_min", pl.Float64, "Smallest weight (null without kept rows)."),
        Column("weight_max", pl.Float64, "Largest weight (null without kept rows)."),
        Column("n_bad", pl.Int64, "Weights that are not finite or ≤ 0 (expected 0)."),
        Column("n_clipped_low", pl.Int64, "Rows with scale · raw_ratio < w_min."),
        Column("n_clipped_high", pl.Int64, "Rows with scale · raw_ratio > w_max."),
        Column(
            "ratio_sum_unclipped",
            pl.Float64,
            "Σ raw_ratio · m (m: uniqueness multiplier, 1 when off) over the unclipped rows.",
        ),
        Column("raw_ratio_sum", pl.Float64, "Σ raw_ratio over the kept rows."),
        Column(
            "histogram",
            pl.List(pl.Int64),
            "Kept rows per log-spaced weight bin over [w_min, w_max] (quantiles, plot).",
        ),
        Column(
            "uniqueness_power",
            pl.Float64,
            "α of the uniqueness multiplier m = (max(u, floor) / u_ref)^α; null: not used.",
        ),
        Column("uniqueness_floor", pl.Float64, "floor of the multiplier (null: not used)."),
        Column(
            "uniqueness_reference",
            pl.Float64,
            "u_ref: median floored uniqueness of the probe sample's kept images (null: not used).",
        ),
        Column(
            "n_uniqueness_missing",
            pl.Int64,
            "Kept rows without an image_uniqueness score (m = 1); null: not used.",
        ),
        Column(
            "uniqueness_multiplier_sum",
            pl.Float64,
            "Σ m over the kept rows that had a score; null: not used.",
        ),
    ),
)

AUDIT_SHARD_COUNTS = TableSpec(
    name="audit_shard_counts",
    description="Per shard and attribute value: unfiltered n, kept n, Σ weight of the kept.",
    partition_by=(),
    columns=(
        Column("shard", pl.String, "Shard."),
        Column("attribute", pl.String, "metadata column, keyword or concept (as in bias_audit)."),
        Column("value", pl.String, "The value (the keyword / concept name for Booleans)."),
        Column("hit", pl.Boolean, "Boolean attributes: True / False rows; null: categorical."),
        Column("n_unfiltered", pl.Int64, "Reference images with the value."),
        Column("n_filtered", pl.Int64, "Kept images with the value."),
        Column("weight_sum", pl.Float64, "Σ weight of the kept images with the value."),
    ),
)

WEIGHT_PROBES = TableSpec(
    name="weight_probes",
    description="Every fitted density-ratio probe: parameters, training sample, normaliser.",
    partition_by=(),
    columns=(
        Column("probe_id", pl.String, "Id (referenced by weight_shard_stats and the commit)."),
        Column("fitted_at", UTC_TIMESTAMP, "When it was fitted (UTC)."),
        Column("settings", pl.String, "JSON: the configuration that shaped it."),
        Column("model_id", pl.String, "Embedding model it was fitted on."),
        Column("method", pl.String, "kept_vs_removed or unfiltered_vs_filtered."),
        Column("status", pl.String, "fitted, or uniform (every ratio 1)."),
        Column("reason", pl.String, "Why the status."),
        Column("n_reference", pl.Int64, "Reference images of the corpus at the fit."),
        Column("n_kept", pl.Int64, "Kept images of the corpus at the fit."),
        Column("prior_kept", pl.Float64, "π_kept = n_kept / n_reference at the fit."),
        Column("scale", pl.Float64, "Normaliser estimated on the sample's kept rows."),
        Column("sample_shards", pl.Int64, "Shards read for the training sample."),
        Column("sample_rows", pl.Int64, "Rows of the training sample (both classes)."),
        Column("dim", pl.Int64, "Embedding dimension."),
        Column("n_folds", pl.Int64, "Cross-fitting folds."),
        Column("feature_scale", pl.Float64, "Features are (x − mean) · componentsᵀ / this."),
        Column("platt_a", pl.Float64, "Calibration slope."),
        Column("platt_b", pl.Float64, "Calibration offset."),
        Column("mean", pl.List(pl.Float64), "(d,) centre."),
        Column("components", pl.List(pl.Float64), "(k·d,) PCA components, row-major; empty: none."),
        Column("coef", pl.List(pl.Float64), "(n_folds·k,) fold probe weights, row-major."),
        Column("intercept", pl.List(pl.Float64), "(n_folds,) fold probe intercepts."),
        Column("train_ids", pl.List(pl.String), "Training rows (scored out of fold later)."),
        Column("train_folds", pl.List(pl.Int64), "Fold of each training row."),
        Column("summary", pl.String, "JSON: the probe's figures (AUC, ECE, ...)."),
    ),
)
