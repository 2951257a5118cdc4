"""Which classifier the labels allow: the per-category policy of the classify stage.

For every category of the category spec :func:`fit_category` builds one of:

* a **linear probe** (:func:`~curation_assets.lib.classify.probe.train_probe`) when there are
  at least :data:`MIN_POSITIVES` labelled positives and :data:`MIN_NEGATIVES` negatives;
* a **zero-shot scorer** (:class:`~curation_assets.lib.classify.zeroshot.ZeroShotScorer`) when
  there are fewer positives but the category has prompts and a text encoder in the image space
  is available. It gets a threshold only when one can be estimated from the labels that exist;
  otherwise ``threshold is None`` means *score only, do not filter*;
* nothing (``skipped``) with a reason.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from curation_assets.lib.classify.base import (
    EmbeddingMismatchError,
    as_embeddings,
    as_labels,
    threshold_for_recall,
)
from curation_assets.lib.classify.probe import Probe, train_probe
from curation_assets.lib.classify.spec import CategorySpec
from curation_assets.lib.classify.zeroshot import TextEncoder, ZeroShotScorer, build_zero_shot

logger = logging.getLogger(__name__)

MIN_POSITIVES = 20
"""Labelled positives needed to train a probe (fewer: zero-shot or skipped)."""
MIN_NEGATIVES = 20
"""Labelled negatives needed to train a probe."""

Status = Literal["trained", "zero_shot", "skipped"]

Classifier = Probe | ZeroShotScorer
"""A category's classifier: a trained probe or a zero-shot scorer."""


@dataclass
class CategoryResult:
    """What :func:`fit_category` decided for one category.

    Attributes:
        category: Category name.
        status: ``trained`` (probe), ``zero_shot`` or ``skipped``.
        reason: Why, in one sentence a user understands.
        classifier: The probe or zero-shot scorer (None when skipped).
        n_pos: Labelled positives available.
        n_neg: Labelled negatives available.
        warnings: Things a user should act on (e.g. "score only, not filtering").
    """

    category: str
    status: Status
    reason: str
    classifier: Classifier | None
    n_pos: int
    n_neg: int
    warnings: list[str] = field(default_factory=list)

    @property
    def threshold(self) -> float | None:
        """The filtering threshold, or None (score only / skipped)."""
        return None if self.classifier is None else self.classifier.threshold

    @property
    def filters(self) -> bool:
        """Whether this category removes images (it has a threshold)."""
        return self.threshold is not None

    def summary(self) -> dict[str, Any]:
        """Scalars for logs and Dagster metadata."""
        base = {} if self.classifier is None else self.classifier.summary()
        return base | {
            "category": self.category,
            "status": self.status,
            "reason": self.reason,
            "n_pos": self.n_pos,
            "n_neg": self.n_neg,
            "warnings": list(self.warnings),
        }


def fit_category(
    spec: CategorySpec,
    x_labelled: np.ndarray,
    y: np.ndarray,
    *,
    model_id: str,
    text_encoder: TextEncoder | None = None,
    image_ids: Sequence[str] | None = None,
    dim: int | None = None,
    min_positives: int = MIN_POSITIVES,
    min_negatives: int = MIN_NEGATIVES,
    n_splits: int = 5,
    n_repeats: int = 3,
    seed: int = 0,
    C: float = 1.0,
    class_weight: Literal["balanced"] | None = "balanced",
) -> CategoryResult:
    """Build the best classifier the labels allow for one category.

    Policy:

    1. ``>= min_positives`` positives and ``>= min_negatives`` negatives → :func:`train_probe`
       (status ``trained``).
    2. Otherwise, when the category has zero-shot prompts and ``text_encoder`` is given →
       :class:`ZeroShotScorer` (status ``zero_shot``). If at least one positive label exists,
       its threshold is :func:`threshold_for_recall` of the zero-shot scores of the labelled
       images (no cross-validation is needed: nothing is fitted); the reason says so. With no
       positive label the threshold stays None: *score only, do not filter*, with a warning.
    3. Otherwise status ``skipped`` with the reason.

    Args:
        spec: The category.
        x_labelled: (n, d) float32, L2-normalized embeddings of the images labelled for this
            category (n may be 0).
        y: (n,) labels 0/1.
        model_id: Embedding model of ``x_labelled`` (stored with the classifier).
        text_encoder: Prompts -> (n, d) float32 L2-normalized, same space as the images.
        image_ids: Optional n image ids aligned with ``x_labelled``.
        dim: Embedding dimension, needed only when n == 0 to check the text encoder.
        min_positives: Positives needed for a probe.
        min_negatives: Negatives needed for a probe.
        n_splits: See :func:`train_probe`.
        n_repeats: See :func:`train_probe`.
        seed: See :func:`train_probe`.
        C: See :func:`train_probe`.
        class_weight: See :func:`train_probe`.

    Returns:
        The :class:`CategoryResult`.

    Raises:
        ClassifierInputError: On malformed arrays (bad configuration or a bug upstream).
        EmbeddingMismatchError: If the text encoder's dimension differs from the images'.
    """
    arr = np.asarray(x_labelled)
    if arr.size == 0:
        arr = np.zeros((0, dim or (arr.shape[1] if arr.ndim == 2 else 0)), dtype=np.float32)
    arr = as_embeddings(arr, f"labelled embeddings of category {spec.name!r}")
    labels = as_labels(y, arr.shape[0])
    if arr.shape[0] and dim is not None and arr.shape[1] != dim:
        msg = f"labelled embeddings have dimension {arr.shape[1]} but dim={dim} was given"
        raise EmbeddingMismatchError(msg)
    d = arr.shape[1] if arr.shape[0] else dim
    n_pos, n_neg = int(labels.sum()), int((labels == 0).sum())
    if n_pos >= min_positives and n_neg >= max(min_negatives, n_splits):
        probe = train_probe(
            arr,
            labels,
            category=spec.name,
            model_id=model_id,
            image_ids=image_ids,
            target_recall=spec.target_recall,
            n_splits=n_splits,
            n_repeats=n_repeats,
            seed=seed,
            C=C,
            class_weight=class_weight,
        )
        reason = (
            f"linear probe on {n_pos} positive / {n_neg} negative labels; threshold "
            f"{probe.threshold:.4g} keeps OOF recall {probe.oof_recall:.3f} "
            f"(target {spec.target_recall}) at OOF precision {probe.oof_precision:.3f}"
        )
        return CategoryResult(spec.name, "trained", reason, probe, n_pos, n_neg)

    short = (
        f"{n_pos} positive / {n_neg} negative labels, fewer than the "
        f"{min_positives} / {max(min_negatives, n_splits)} a probe needs"
    )
    if spec.zero_shot is None or text_encoder is None:
        if spec.zero_shot is None:
            missing = "no zero_shot prompts in the spec"
        else:
            missing = "no text encoder (the embedder has no text tower)"
        reason = f"skipped: {short}, and {missing}; label more images (see the label queue)"
        logger.warning("category %s %s", spec.name, reason)
        return CategoryResult(spec.name, "skipped", reason, None, n_pos, n_neg, [reason])

    scorer = build_zero_shot(spec, text_encoder, model_id=model_id, dim=d)
    warnings: list[str] = []
    if n_pos > 0:
        scores = scorer.score(arr)
        t, r, p = threshold_for_recall(scores, labels, spec.target_recall)
        scorer.threshold, scorer.threshold_source = t, "labels"
        scorer.label_recall, scorer.label_precision = r, p
        scorer.n_pos, scorer.n_neg = n_pos, n_neg
        reason = (
            f"zero-shot: {short}; threshold {t:.4g} estimated from the zero-shot scores of "
            f"those labels (recall {r:.3f}, precision {p:.3f} on them; few labels, so noisy)"
        )
        warnings.append(
            f"category {spec.name!r}: zero-shot threshold estimated from only {n_pos} "
            "positives; label more images for a trained probe"
        )
    else:
        reason = f"zero-shot: {short}; no positive label to set a threshold: score only"
        warnings.append(
            f"category {spec.name!r} is scored but NOT filtered (no threshold without labelled "
            "positives); label the top of the label queue to enable filtering"
        )
    for w in warnings:
        logger.warning(w)
    return CategoryResult(spec.name, "zero_shot", reason, scorer, n_pos, n_neg, warnings)
