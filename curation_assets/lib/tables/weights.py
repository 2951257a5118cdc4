"""Weights' tables: one sample weight per kept image and the bias audit.

Written by :mod:`curation_assets.lib.weights` (``sample_weights``, ``bias_audit``).
"""

import polars as pl

from curation_assets.lib.tables.spec import Column, TableSpec

SAMPLE_WEIGHTS = TableSpec(
    name="sample_weights",
    description="One weight per kept (filtered, deduplicated) image: undoes the filter's shift.",
    columns=(
        Column("image_id", pl.String, "sha256 of the image bytes."),
        Column("shard", pl.String, "Shard it came from."),
        Column(
            "weight",
            pl.Float64,
            "Training weight: density ratio clipped to [w_min, w_max] and scaled to mean 1.",
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
"""The audit table: one row per attribute value (:func:`bias_audit`)."""
