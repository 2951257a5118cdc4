"""Helpers of the weights stage around the shard-by-shard update (stage 7).

The ``weights_and_audit`` asset runs :func:`~curation_assets.lib.weights.update.update_weights`
(shard by shard, bounded memory); from here it takes :func:`concept_encoder` (the audit's
zero-shot concepts) and :func:`weight_histogram` (the metadata plot).

:func:`load_weight_inputs` and :func:`fit_weights` are the whole-corpus, in-memory path: every
reference image and embedding at once, the probe fitted and the weights normalised exactly
over all of them. The stage no longer runs it (its memory grows with the corpus); it stays the
reference the shard-by-shard update is tested against, and the way to weight a table that fits
in memory from a notebook or a test. Memory: the whole corpus' embeddings (n · d · 4 bytes)
plus the frame.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import DEDUPLICATED_IMAGES, IMAGE_EMBEDDINGS, RAW_IMAGES
from curation_assets.lib.vectors import embedding_matrix
from curation_assets.lib.weights.audit import TextEncoder
from curation_assets.lib.weights.fit import DensityRatioModel, Method, fit_density_ratio
from curation_assets.lib.weights.plan import WEIGHTS_INPUTS, WEIGHTS_STAGE
from curation_assets.lib.weights.scale import SampleWeights, sample_weights

if TYPE_CHECKING:  # torch, only for the annotation: loading a model is the caller's
    from curation_assets.lib.embed import Embedder

__all__ = [
    "WEIGHTS_INPUTS",
    "WEIGHTS_STAGE",
    "FittedWeights",
    "concept_encoder",
    "fit_weights",
    "load_weight_inputs",
    "weight_histogram",
]


def load_weight_inputs(
    store: DeltaStore, correct_for: str
) -> tuple[pl.DataFrame, np.ndarray, np.ndarray]:
    """The reference ("unfiltered") images, their embeddings and the kept mask.

    Args:
        store: Delta store.
        correct_for: ``filter`` (the reference is every embedded image except near duplicates
            dedup removed, so the weights undo only the safety filter's shift) or
            ``filter_and_dedup`` (every embedded image: the weights also undo dedup's shift,
            up-weighting images that had many copies).

    Returns:
        ``(frame, x, kept)``: frame has image_id, shard, source_uri, caption, width, height,
        format, kept; sorted by shard, image_id.
    """
    raw = store.read(
        RAW_IMAGES,
        columns=["image_id", "shard", "source_uri", "caption", "width", "height", "format"],
    )
    emb = store.scan(IMAGE_EMBEDDINGS).select("image_id", "shard", "embedding").collect()
    dedup = store.read(DEDUPLICATED_IMAGES, columns=["image_id", "shard", "kept"])
    frame = raw.join(emb, on=["image_id", "shard"], how="inner").join(
        dedup.rename({"kept": "dedup_kept"}), on=["image_id", "shard"], how="left"
    )
    if correct_for == "filter":
        frame = frame.filter(pl.col("dedup_kept").is_null() | pl.col("dedup_kept"))
    frame = frame.with_columns(kept=pl.col("dedup_kept").fill_null(False)).drop("dedup_kept")
    frame = frame.sort("shard", "image_id")
    x = embedding_matrix(frame["embedding"]) if frame.height else np.zeros((0, 1), np.float32)
    return frame.drop("embedding"), x, frame["kept"].to_numpy()


@dataclass(frozen=True)
class FittedWeights:
    """The probe and the weights of one run.

    Attributes:
        model: The fitted (or uniform) density-ratio probe.
        weights: The kept images' weights, in row order of the kept rows.
        frame: The :data:`~curation_assets.lib.tables.SAMPLE_WEIGHTS` rows.
        n_unfiltered: Images in the reference set.
        n_kept: Kept images among them.
    """

    model: DensityRatioModel
    weights: SampleWeights
    frame: pl.DataFrame
    n_unfiltered: int
    n_kept: int


def fit_weights(
    frame: pl.DataFrame,
    x: np.ndarray,
    kept: np.ndarray,
    *,
    method: Method,
    C: float,
    pca_dim: int | None,
    seed: int,
    w_min: float,
    w_max: float,
) -> FittedWeights:
    """Fit the probe on :func:`load_weight_inputs`'s output and weigh the kept images.

    The image ids are passed as the canonical order, so the sample, the folds and every sum
    follow the ids, not the order the rows were read in.

    Raises:
        ValueError: On settings :func:`~curation_assets.lib.weights.fit.fit_density_ratio` or
            :func:`~curation_assets.lib.weights.scale.sample_weights` reject.
    """
    ids = frame["image_id"].to_list()
    model = fit_density_ratio(
        x, kept, image_ids=ids, method=method, C=C, pca_dim=pca_dim, seed=seed
    )
    sw = sample_weights(model, x, kept, w_min=w_min, w_max=w_max, image_ids=ids)
    kept_frame = frame.filter(pl.col("kept"))
    rows = sw.frame(kept_frame["image_id"].to_list(), kept_frame["shard"].to_list())
    return FittedWeights(model, sw, rows, int(kept.size), int(kept.sum()))


def concept_encoder(
    concepts: Mapping[str, str], load: Callable[[], "Embedder"]
) -> tuple[TextEncoder | None, str]:
    """The text encoder for the audit's zero-shot concepts, and a note on what was done.

    Args:
        concepts: The configured concepts (name -> prompt).
        load: Loads the image embedder; called only when there are concepts.

    Returns:
        ``(encoder, note)``: the embedder's ``encode_text`` and the concept names; or None and
        ``none configured`` / ``skipped: <model> has no text tower``.
    """
    if not concepts:
        return None, "none configured"
    model = load()
    if not model.has_text_tower:
        return None, f"skipped: {model.model_id} has no text tower"
    return model.encode_text, ", ".join(concepts)


def weight_histogram(stats: Mapping[str, Any]) -> tuple[list[str], list[int]]:
    """Bin labels (``a–b``) and counts of the weights' log-spaced histogram (``weight_stats``)."""
    hist = stats["histogram"]
    edges = hist["edges"]
    labels = [f"{a:.2f}–{b:.2f}" for a, b in zip(edges[:-1], edges[1:], strict=True)]
    return labels, list(hist["counts"])
