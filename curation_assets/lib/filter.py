"""Filter: split a shard into kept and rejected images, one reason per removal (stage 4).

An image is removed when a classifier's score reaches its threshold (the scores come from the
classify stage's ``classifier_scores``), when its image–caption cosine is below the category
spec's ``min_clip_score`` floor, or when a pixel-quality check the filter's config enables
flags it (``image_quality``; none is enabled by default). :func:`split_by_scores` returns the
kept rows (:data:`FILTERED_IMAGES`) and one rejection row per image and reason
(:data:`FILTER_REJECTIONS`); :func:`filter_summary` gives the counts the asset's check needs.

Determinism: :func:`split_by_scores` returns both tables sorted by image_id, whatever order the
shard's rows were read in.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from curation_assets.lib.classify import CategorySpec
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import FILTER_REJECTIONS, FILTERED_IMAGES, IMAGE_EMBEDDINGS
from curation_assets.lib.vectors import embedding_matrix

if TYPE_CHECKING:  # torch, only for the annotation: loading a model is the caller's
    from curation_assets.lib.embed import Embedder


def clip_score_floor(specs: Sequence[CategorySpec]) -> float | None:
    """The image–caption cosine floor the filter applies: the largest one set, or None."""
    floors = [s.min_clip_score for s in specs if s.min_clip_score is not None]
    return max(floors) if floors else None


def split_by_scores(
    raw: pl.DataFrame,
    scores: pl.DataFrame,
    *,
    clip_scores: pl.DataFrame | None = None,
    clip_floor: float | None = None,
    quality: pl.DataFrame | None = None,
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
        quality: Rejection rows of the enabled pixel-quality checks
            (:func:`~curation_assets.lib.quality.signals.quality_rejections`), optional.

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
    if quality is not None and quality.height:
        hits = pl.concat([FILTER_REJECTIONS.conform(hits), quality], how="vertical_relaxed")
    rejections = FILTER_REJECTIONS.conform(hits).sort("image_id", "category")
    kept = raw.join(rejections.select("image_id").unique(), on="image_id", how="anti")
    return FILTERED_IMAGES.conform(kept).sort("image_id"), rejections


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


@dataclass(frozen=True)
class ClipFloorScores:
    """The image–caption cosines the CLIP-score floor needs, and whether it applies.

    Attributes:
        scores: ``image_id, clip_score`` of the captioned images (None: floor not applied).
        note: How the floor was applied, for the asset's metadata.
        unavailable: A floor is set and captions exist but the embedder has no text tower,
            so the floor cannot be applied (the asset warns).
    """

    scores: pl.DataFrame | None
    note: str
    unavailable: bool = False


def clip_floor_scores(
    store: DeltaStore,
    shard: str,
    raw: pl.DataFrame,
    floor: float | None,
    load_model: Callable[[], "Embedder"],
) -> ClipFloorScores:
    """Image–caption cosines of a shard's captioned images, when a CLIP-score floor is set.

    The model is loaded only when a floor is set and the shard has captions. The image
    embeddings are read from ``image_embeddings`` and sorted by image_id (the text tower's
    batches, and their float rounding, follow row order).

    Args:
        store: The Delta store.
        shard: Partition key.
        raw: The shard's ``raw_images`` rows (``image_id``, ``caption``).
        floor: :func:`clip_score_floor` of the category spec.
        load_model: Returns the image embedder (its text tower encodes the captions).

    Returns:
        The :class:`ClipFloorScores`.
    """
    if floor is None or not raw["caption"].drop_nulls().len():
        return ClipFloorScores(None, "no min_clip_score in the category spec")
    model = load_model()
    if not model.has_text_tower:
        return ClipFloorScores(None, f"not applied: {model.model_id} has no text tower", True)
    emb = store.read(IMAGE_EMBEDDINGS, shards=[shard], columns=["image_id", "embedding"])
    emb = emb.join(raw.select("image_id", "caption"), on="image_id").sort("image_id")
    scores = caption_similarity(
        emb["image_id"].to_list(),
        embedding_matrix(emb["embedding"]),
        emb["caption"].to_list(),
        model.encode_text,
    )
    return ClipFloorScores(scores, f"applied: image-caption cosine >= {floor}")


@dataclass(frozen=True)
class FilterSummary:
    """Counts of one shard's split, for the asset's metadata and its check.

    Attributes:
        raw: Images of the shard.
        kept: Images kept.
        removed: Distinct images removed.
        removed_share: ``removed / raw`` rounded to 4 decimals (0.0 for an empty shard).
        by_category: Rejection rows per category (or ``clip_score_floor``).
        every_image_kept_or_rejected: Each image is in exactly one of kept / rejected.
    """

    raw: int
    kept: int
    removed: int
    removed_share: float
    by_category: dict[str, int]
    every_image_kept_or_rejected: bool


def filter_summary(
    raw: pl.DataFrame, kept: pl.DataFrame, rejections: pl.DataFrame
) -> FilterSummary:
    """Counts of :func:`split_by_scores`' result and its invariant (kept + removed = raw).

    Args:
        raw: The shard's ``raw_images`` rows.
        kept: :data:`FILTERED_IMAGES` rows.
        rejections: :data:`FILTER_REJECTIONS` rows.
    """
    removed = rejections["image_id"].n_unique()
    overlap = kept.join(rejections, on="image_id", how="semi").height
    return FilterSummary(
        raw=raw.height,
        kept=kept.height,
        removed=removed,
        removed_share=round(removed / raw.height, 4) if raw.height else 0.0,
        by_category={str(k): int(v) for k, v in rejections.group_by("category").len().rows()},
        every_image_kept_or_rejected=kept.height + removed == raw.height and overlap == 0,
    )
