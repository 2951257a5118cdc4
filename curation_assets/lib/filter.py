"""Scoring images with the safety classifiers and splitting a shard into kept / rejected.

Scores are stored *long* (one row per image and scorer) rather than one column per category:
categories come and go with the spec, and a long Delta table never needs a schema migration.

Determinism: an image's score is computed from its own embedding only (the classifiers' row-wise
products, :func:`~curation_assets.lib.classify.row_dot`), so it is bit-identical in any batch;
:func:`split_by_scores` returns both tables sorted by image_id, whatever order the shard's
rows were read in.
"""

import logging
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import polars as pl
from PIL import Image

from curation_assets.lib.classify import CategorySpec, Classifier, PretrainedScorer
from curation_assets.lib.embed import iter_prepared
from curation_assets.lib.shards import Item
from curation_assets.lib.tables import Column, TableSpec

logger = logging.getLogger(__name__)

_TS = pl.Datetime("us", "UTC")

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
        Column("trained_at", _TS, "When it was trained (UTC)."),
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

FILTERED_IMAGES = TableSpec(
    name="filtered_images",
    description="Images of a shard that pass every classifier (and the CLIP-score floor).",
    columns=(
        Column("image_id", pl.String, "sha256 of the image bytes."),
        Column("shard", pl.String, "Shard (dynamic partition key)."),
        Column("source_uri", pl.String, "Where the bytes were read."),
        Column("caption", pl.String, "Caption, if any."),
        Column("width", pl.Int32, "Width in pixels."),
        Column("height", pl.Int32, "Height in pixels."),
    ),
)

FILTER_REJECTIONS = TableSpec(
    name="filter_rejections",
    description="One row per removed image and reason: the category, its score and threshold.",
    columns=(
        Column("image_id", pl.String, "sha256 of the image bytes."),
        Column("shard", pl.String, "Shard (dynamic partition key)."),
        Column("category", pl.String, "Category that removed it, or clip_score_floor."),
        Column("score", pl.Float32, "The score (or image-caption cosine for the floor)."),
        Column("threshold", pl.Float64, "The threshold (or the floor) it crossed."),
    ),
)


def clip_score_floor(specs: Sequence[CategorySpec]) -> float | None:
    """The image–caption cosine floor the filter applies: the largest one set, or None."""
    floors = [s.min_clip_score for s in specs if s.min_clip_score is not None]
    return max(floors) if floors else None


def score_embeddings(
    classifiers: Sequence[Classifier], x: np.ndarray, image_ids: Sequence[str], shard: str
) -> pl.DataFrame:
    """Score every image with every classifier.

    Args:
        classifiers: Probes / zero-shot scorers (already checked against the embedding model).
        x: (n, d) float32, L2-normalized embeddings.
        image_ids: n ids, aligned with ``x``.
        shard: Partition key.

    Returns:
        Long frame with :data:`CLASSIFIER_SCORES` columns, n rows per classifier.
    """
    frames = [
        pl.DataFrame(
            {
                "image_id": list(image_ids),
                "shard": shard,
                "category": c.category,
                "score": np.asarray(c.score(x), dtype=np.float32) if len(image_ids) else [],
                "threshold": c.threshold,
                "scorer": c.kind,
            },
            schema_overrides={"score": pl.Float32, "threshold": pl.Float64},
        )
        for c in classifiers
    ]
    if not frames:
        return CLASSIFIER_SCORES.empty()
    return CLASSIFIER_SCORES.conform(pl.concat(frames, how="vertical_relaxed"))


def split_by_scores(
    raw: pl.DataFrame,
    scores: pl.DataFrame,
    *,
    clip_scores: pl.DataFrame | None = None,
    clip_floor: float | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split a shard's images into kept and rejected.

    An image is rejected when any scorer with a threshold gives it a score ≥ that threshold,
    or when its image–caption cosine is below ``clip_floor``. Every reason is a row of the
    rejections (an image can be removed by several categories); every image is in exactly one
    of kept / rejected.

    Args:
        raw: ``raw_images`` rows of the shard.
        scores: :data:`CLASSIFIER_SCORES` rows of the shard.
        clip_scores: ``image_id, clip_score`` for captioned images (optional).
        clip_floor: Minimum image–caption cosine (optional).

    Returns:
        ``(filtered_images rows, filter_rejections rows)``.
    """
    hits = scores.filter(
        pl.col("threshold").is_not_null() & (pl.col("score") >= pl.col("threshold"))
    ).select("image_id", "shard", "category", "score", "threshold")
    if clip_scores is not None and clip_floor is not None and clip_scores.height:
        low = clip_scores.filter(pl.col("clip_score") < clip_floor).select(
            "image_id",
            shard=pl.lit(raw["shard"][0] if raw.height else "", dtype=pl.String),
            category=pl.lit("clip_score_floor"),
            score=pl.col("clip_score").cast(pl.Float32),
            threshold=pl.lit(clip_floor, dtype=pl.Float64),
        )
        hits = pl.concat([hits, low], how="vertical_relaxed")
    rejections = FILTER_REJECTIONS.conform(hits).sort("image_id", "category")
    kept = raw.join(rejections.select("image_id").unique(), on="image_id", how="anti")
    return FILTERED_IMAGES.conform(kept).sort("image_id"), rejections


def pretrained_scores(
    scorer: PretrainedScorer,
    items: Iterable[Item],
    wanted: set[str],
    shard: str,
    *,
    threshold: float | None = None,
    batch_size: int = 32,
    workers: int = 2,
) -> pl.DataFrame:
    """Score the wanted images of a shard with a pretrained image scorer (e.g. open_nsfw).

    Images are decoded on ``workers`` threads; each sha256 is scored once. Memory: one batch of
    decoded images.

    Returns:
        :data:`CLASSIFIER_SCORES` rows with ``category = scorer.name``.
    """

    def batches() -> Iterator[tuple[list[str], list[Image.Image]]]:
        ids: list[str] = []
        images: list[Image.Image] = []
        for p in iter_prepared(
            items, lambda im: im, wanted=wanted, workers=workers, prefetch=batch_size
        ):
            if p.value is None or p.image_id is None:
                continue  # undecodable images were already quarantined at ingest
            ids.append(p.image_id)
            images.append(p.value)
            if len(ids) == batch_size:
                yield ids, images
                ids, images = [], []
        if ids:
            yield ids, images

    ids_all: list[str] = []
    scores: list[np.ndarray] = []
    for ids, images in batches():
        ids_all += ids
        scores.append(np.asarray(scorer.score_images(images), dtype=np.float32))
    return CLASSIFIER_SCORES.conform(
        pl.DataFrame(
            {
                "image_id": ids_all,
                "shard": shard,
                "category": scorer.name,
                "score": np.concatenate(scores) if scores else np.zeros(0, np.float32),
                "threshold": threshold,
                "scorer": f"pretrained:{scorer.model_id}",
            },
            schema_overrides={"threshold": pl.Float64},
        )
    )


def caption_similarity(
    image_ids: Sequence[str],
    x: np.ndarray,
    captions: Sequence[str | None],
    encode_text,
    *,
    batch_size: int = 256,
) -> pl.DataFrame:
    """Image–caption cosine (CLIP score) for the captioned images.

    Args:
        image_ids: n ids.
        x: (n, d) float32, L2-normalized image embeddings (same model as ``encode_text``).
        captions: n captions (None / empty = no caption, not scored).
        encode_text: texts -> (m, d) float32 L2-normalized (the model's text tower).
        batch_size: Captions per text-tower batch.

    Returns:
        ``image_id, clip_score`` (Float32) for images with a caption.
    """
    rows = [i for i, c in enumerate(captions) if c]
    sims = np.zeros(len(rows), dtype=np.float32)
    for start in range(0, len(rows), batch_size):
        idx = rows[start : start + batch_size]
        t = np.asarray(encode_text([str(captions[i]) for i in idx]), dtype=np.float32)
        sims[start : start + len(idx)] = np.einsum("nd,nd->n", x[idx], t)
    return pl.DataFrame(
        {"image_id": [image_ids[i] for i in rows], "clip_score": sims},
        schema={"image_id": pl.String, "clip_score": pl.Float32},
    )
