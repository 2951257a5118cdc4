"""Zero-shot scoring: a category scored by its prompts, for categories with too few labels.

:func:`build_zero_shot` embeds a category's positive and negative prompts with the image
model's own text tower (:data:`TextEncoder`) into a :class:`ZeroShotScorer`; it has no
threshold until :func:`~curation_assets.lib.classify.policy.fit_category` estimates one from
the labels that exist (``threshold is None`` means *score only, do not filter*).
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from curation_assets.lib.classify.base import (
    ClassifierInputError,
    EmbeddingMismatchError,
    LinearClassifier,
    as_embeddings,
)
from curation_assets.lib.classify.spec import DEFAULT_TARGET_RECALL, CategorySpec

ZERO_SHOT_TEMPERATURE = 100.0
"""CLIP's logit scale: ``score = softmax(100 * [cos_pos, cos_neg])[0]``."""

TextEncoder = Callable[[list[str]], np.ndarray]
"""Prompts -> (n, d) float32, L2-normalized, in the same space as the image embeddings."""


@dataclass(eq=False)
class ZeroShotScorer(LinearClassifier):
    """Zero-shot scores from prompt embeddings (no trained weights).

    ``score(x) = softmax(temperature * [x·p, x·q])[0] = sigmoid(temperature * x·(p - q))``
    where ``p`` / ``q`` are the normalized means of the positive / negative prompt embeddings.

    Attributes:
        category: Category name.
        positive: (dim,) float32, normalized mean of the positive prompt embeddings.
        negative: (dim,) float32, normalized mean of the negative prompt embeddings.
        positive_prompts: The positive prompts.
        negative_prompts: The negative prompts.
        model_id: Embedding model of the text encoder (same space as the images).
        dim: Embedding dimension.
        temperature: Logit scale (CLIP's 100).
        threshold: Estimated from existing labels, or None = score only, do not filter.
        threshold_source: ``"labels"`` when estimated from labels, else None.
        target_recall: Recall the threshold was chosen for.
        label_recall: Recall on the existing labels at the threshold (None without one).
        label_precision: Precision on the existing labels at the threshold.
        n_pos: Labelled positives the threshold was estimated from.
        n_neg: Labelled negatives the threshold was estimated from.
    """

    category: str
    positive: np.ndarray
    negative: np.ndarray
    positive_prompts: tuple[str, ...]
    negative_prompts: tuple[str, ...]
    model_id: str
    dim: int
    temperature: float = ZERO_SHOT_TEMPERATURE
    threshold: float | None = None
    threshold_source: str | None = None
    target_recall: float = DEFAULT_TARGET_RECALL
    label_recall: float | None = None
    label_precision: float | None = None
    n_pos: int = 0
    n_neg: int = 0

    kind: str = field(default="zero_shot", init=False)

    scored_as = "zero-shot for"

    def linear_form(self) -> tuple[np.ndarray, float, float]:
        """``p - q`` in float64, the temperature, no bias."""
        diff = self.positive.astype(np.float64) - self.negative.astype(np.float64)
        return diff, self.temperature, 0.0

    def quality_summary(self) -> dict[str, Any]:
        """Where the threshold came from and its recall/precision on the labels."""
        return {
            "threshold_source": self.threshold_source,
            "target_recall": self.target_recall,
            "label_recall": self.label_recall,
            "label_precision": self.label_precision,
        }

    def fit_summary(self) -> dict[str, Any]:
        """The logit scale."""
        return {"temperature": self.temperature}


def _prompt_centroid(encoder: TextEncoder, prompts: tuple[str, ...], what: str) -> np.ndarray:
    emb = np.asarray(encoder(list(prompts)))
    if emb.ndim != 2 or emb.shape[0] != len(prompts):
        msg = (
            f"text encoder returned shape {emb.shape} for {len(prompts)} {what} prompts; "
            "expected (n_prompts, dim)"
        )
        raise ClassifierInputError(msg)
    emb = as_embeddings(emb, f"{what} prompt embeddings")
    mean = emb.astype(np.float64).mean(axis=0)
    norm = np.linalg.norm(mean)
    if norm == 0:
        msg = f"{what} prompt embeddings average to zero; use prompts that agree"
        raise ClassifierInputError(msg)
    return (mean / norm).astype(np.float32)


def build_zero_shot(
    spec: CategorySpec,
    text_encoder: TextEncoder,
    *,
    model_id: str,
    dim: int | None = None,
    temperature: float = ZERO_SHOT_TEMPERATURE,
) -> ZeroShotScorer:
    """Embed a category's prompts into a :class:`ZeroShotScorer` (no threshold yet).

    Raises:
        ClassifierInputError: If the spec has no prompts or the encoder output is malformed.
        EmbeddingMismatchError: If the text dimension differs from ``dim``.
    """
    if spec.zero_shot is None:
        msg = f"category {spec.name!r} has no zero_shot prompts; add them to the category spec"
        raise ClassifierInputError(msg)
    pos = _prompt_centroid(text_encoder, spec.zero_shot.positive, "positive")
    neg = _prompt_centroid(text_encoder, spec.zero_shot.negative, "negative")
    if dim is not None and pos.shape[0] != dim:
        msg = (
            f"text embeddings for category {spec.name!r} have dimension {pos.shape[0]} but the "
            f"image embeddings have {dim}; the text encoder must be the image model's own "
            "text tower (an open_clip model)"
        )
        raise EmbeddingMismatchError(msg)
    return ZeroShotScorer(
        category=spec.name,
        positive=pos,
        negative=neg,
        positive_prompts=spec.zero_shot.positive,
        negative_prompts=spec.zero_shot.negative,
        model_id=model_id,
        dim=int(pos.shape[0]),
        temperature=temperature,
        target_recall=spec.target_recall,
    )
