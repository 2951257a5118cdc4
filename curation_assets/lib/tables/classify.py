"""Classify's tables: labels, the trained classifiers, the label queue and the scores.

Written by :mod:`curation_assets.lib.classify` (``labels``, ``safety_classifiers``,
``label_queue``, ``classifier_scores``).
"""

import polars as pl

from curation_assets.lib.tables.spec import UTC_TIMESTAMP, Column, TableSpec

LABELS = TableSpec(
    name="labels",
    description="One human (or seeded) label of one image for one category; append-only.",
    partition_by=(),
    columns=(
        Column("image_id", pl.String, "sha256 of the image bytes (joins raw_images)."),
        Column("category", pl.String, "Category name from the category spec."),
        Column("label", pl.Int8, "1 = shows the category (unwanted), 0 = does not."),
        Column(
            "source",
            pl.String,
            "Where the label came from: csv:<file>, label_studio:<file> or demo_seed.",
        ),
        Column(
            "labeled_at",
            UTC_TIMESTAMP,
            "When the label was given (annotation time) or imported (UTC).",
        ),
    ),
)

SAFETY_CLASSIFIERS = TableSpec(
    name="safety_classifiers",
    description="One classifier per category: status, threshold, metrics, serialized model.",
    partition_by=(),
    columns=(
        Column("category", pl.String, "Category name from the spec."),
        Column("status", pl.String, "trained (linear probe), zero_shot or skipped."),
        Column("reason", pl.String, "Why this status, in a sentence."),
        Column(
            "threshold", pl.Float64, "Score at or above which an image is removed (null: none)."
        ),
        Column("target_recall", pl.Float64, "Recall the threshold was chosen to keep."),
        Column("oof_recall", pl.Float64, "Out-of-fold recall at the threshold (probes)."),
        Column("oof_precision", pl.Float64, "Out-of-fold precision at the threshold (probes)."),
        Column("roc_auc", pl.Float64, "Out-of-fold ROC-AUC (probes)."),
        Column("n_pos", pl.Int32, "Labelled positives used."),
        Column("n_neg", pl.Int32, "Labelled negatives used."),
        Column("model_id", pl.String, "Embedding model the classifier expects."),
        Column("dim", pl.Int32, "Embedding dimension the classifier expects."),
        Column("classifier_json", pl.String, "The classifier (JSON, base64 float32; no pickle)."),
        Column("trained_at", UTC_TIMESTAMP, "When it was trained (UTC)."),
    ),
)

LABEL_QUEUE = TableSpec(
    name="label_queue",
    description="Unlabelled images to label next, per category, ranked.",
    partition_by=(),
    columns=(
        Column("rank", pl.Int32, "1 = label first (per category)."),
        Column("image_id", pl.String, "sha256 of the image bytes (joins raw_images)."),
        Column("category", pl.String, "Category the image is queued for."),
        Column(
            "reason",
            pl.String,
            "neighbor_of_hard_positive:<image_id>, uncertain_near_threshold or "
            "top_zero_shot_score.",
        ),
        Column("score", pl.Float32, "The classifier's current score of the image."),
        Column(
            "similarity",
            pl.Float32,
            "Cosine similarity to the hard positive (null for the other reasons).",
        ),
        Column("threshold", pl.Float32, "The category's threshold (null when score only)."),
    ),
)

CLASSIFIER_SCORES = TableSpec(
    name="classifier_scores",
    description="One score per image and scorer (categories and pretrained scorers).",
    columns=(
        Column("image_id", pl.String, "sha256 of the image bytes."),
        Column("shard", pl.String, "Shard (dynamic partition key)."),
        Column("category", pl.String, "Category name, or the pretrained scorer's name."),
        Column("score", pl.Float32, "Probability-like score in [0, 1]."),
        Column("threshold", pl.Float64, "Threshold in force (null: score only, no filtering)."),
        Column("scorer", pl.String, "linear_probe, zero_shot or pretrained:<model id>."),
    ),
)
