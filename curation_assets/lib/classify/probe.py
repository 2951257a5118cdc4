"""The linear probe: logistic regression on image embeddings, thresholded out of fold for recall.

:func:`train_probe` fits a logistic regression on the L2-normalized image embeddings of the
labelled images. Out-of-fold (OOF) scores come from repeated stratified k-fold
cross-validation; the threshold is the **highest** score that keeps OOF recall ≥ the
category's target recall (:func:`~curation_assets.lib.classify.base.threshold_for_recall`) —
recall is favoured and the precision it costs is reported. The final model is refit on all
labels; its threshold is the one estimated out of fold.

**Determinism.** The same labelled images give the same probe, bit for bit, whatever order
the rows arrive in (Delta reads and polars joins do not keep row order): :func:`train_probe`
first puts the rows in a canonical order
(:func:`~curation_assets.lib.classify.base.canonical_order`: by image id, then label, then the
vector's bytes), so the k-fold assignment, every lbfgs input and therefore the coefficients,
the out-of-fold scores and the threshold depend only on the *set* of labelled images and the
seed. Scores are computed row by row (:func:`~curation_assets.lib.classify.base.row_dot`), so
an image's score does not depend on which other images share its batch or where it sits in it
(a BLAS matrix-vector product can round a row differently by its position). What stays
non-bitwise is only what differs between *machines*: float summation order inside
numpy/scipy/BLAS kernels (SIMD width, thread count); the same code and inputs on the same
machine repeat exactly.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import polars as pl

from curation_assets.lib.classify.base import (
    ClassifierInputError,
    LinearClassifier,
    as_embeddings,
    as_labels,
    canonical_order,
    threshold_for_recall,
)
from curation_assets.lib.classify.spec import DEFAULT_TARGET_RECALL

logger = logging.getLogger(__name__)

PR_CURVE_MAX_POINTS = 200
"""At most this many points of the OOF precision-recall curve are kept (metadata, plots)."""


def _downsample_curve(
    precision: np.ndarray, recall: np.ndarray, thresholds: np.ndarray, max_points: int
) -> dict[str, list[float]]:
    """Keep ≤ max_points points of a PR curve, evenly spaced, endpoints included."""
    n = thresholds.size  # precision/recall have n + 1 points; the last is (1, 0), no threshold
    idx = np.unique(np.linspace(0, n - 1, min(max_points, n)).round().astype(int)) if n else []
    return {
        "precision": [round(float(precision[i]), 6) for i in idx],
        "recall": [round(float(recall[i]), 6) for i in idx],
        "thresholds": [round(float(thresholds[i]), 6) for i in idx],
    }


@dataclass(eq=False)
class Probe(LinearClassifier):
    """A trained linear probe for one category.

    Attributes:
        category: Category name.
        coef: (dim,) float32 weights of the final (all-labels) model.
        intercept: Bias of the final model.
        threshold: Flag when ``score >= threshold``; the highest OOF score keeping
            ``oof_recall >= target_recall``.
        model_id: Embedding model the probe was trained on (``backend:model@weights``).
        dim: Embedding dimension.
        n_pos: Labelled positives.
        n_neg: Labelled negatives.
        target_recall: Recall the threshold was chosen for.
        oof_recall: Out-of-fold recall at the threshold (≥ target_recall).
        oof_precision: Out-of-fold precision at the threshold: the cost of the recall.
        roc_auc: Out-of-fold ROC-AUC.
        pr_curve: OOF precision-recall curve: ``precision``, ``recall``, ``thresholds``
            lists of equal length (≤ :data:`PR_CURVE_MAX_POINTS`).
        seed: Seed of the repeated k-fold split.
        C: Inverse L2 regularisation strength.
        n_splits: Folds per repeat.
        n_repeats: Repeats of the k-fold split.
        class_weight: ``"balanced"`` or None.
        oof_scores: (n,) float32 OOF score per labelled sample, mean over repeats.
        oof_scores_by_repeat: (n_repeats, n) float32 OOF scores of each repeat.
        labels: (n,) int8 labels, aligned with the OOF scores.
        image_ids: n image ids aligned with the OOF scores (when given at training).
        trained_at: ISO-8601 UTC time of training.
    """

    category: str
    coef: np.ndarray
    intercept: float
    threshold: float
    model_id: str
    dim: int
    n_pos: int
    n_neg: int
    target_recall: float
    oof_recall: float
    oof_precision: float
    roc_auc: float
    pr_curve: dict[str, list[float]]
    seed: int
    C: float
    n_splits: int
    n_repeats: int
    class_weight: str | None
    oof_scores: np.ndarray
    oof_scores_by_repeat: np.ndarray
    labels: np.ndarray
    image_ids: tuple[str, ...] | None = None
    trained_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    kind: str = field(default="linear_probe", init=False)

    scored_as = "by probe"

    def linear_form(self) -> tuple[np.ndarray, float, float]:
        """The final model's weights, unit scale and intercept."""
        return self.coef, 1.0, self.intercept

    def oof_frame(self) -> pl.DataFrame:
        """OOF scores per labelled image (for the label queue).

        Returns:
            Columns ``image_id`` (null when ids were not given), ``label`` Int8, ``oof_score``
            Float32 (mean over repeats), ``oof_scores`` List(Float32) (one per repeat).
        """
        ids = list(self.image_ids) if self.image_ids is not None else [None] * self.labels.size
        return pl.DataFrame(
            {
                "image_id": pl.Series(ids, dtype=pl.String),
                "label": pl.Series(self.labels, dtype=pl.Int8),
                "oof_score": pl.Series(self.oof_scores, dtype=pl.Float32),
                "oof_scores": pl.Series(
                    self.oof_scores_by_repeat.T.tolist(), dtype=pl.List(pl.Float32)
                ),
            }
        )

    def quality_summary(self) -> dict[str, Any]:
        """Target and out-of-fold recall, precision and ROC-AUC."""
        return {
            "target_recall": self.target_recall,
            "oof_recall": self.oof_recall,
            "oof_precision": self.oof_precision,
            "roc_auc": self.roc_auc,
        }

    def fit_summary(self) -> dict[str, Any]:
        """Seed, regularisation and cross-validation shape."""
        return {
            "seed": self.seed,
            "C": self.C,
            "n_splits": self.n_splits,
            "n_repeats": self.n_repeats,
        }


def _logistic(C: float, class_weight: str | None):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, class_weight=class_weight, solver="lbfgs", max_iter=2000)


def train_probe(
    x: np.ndarray,
    y: np.ndarray,
    *,
    category: str = "category",
    model_id: str = "unknown",
    image_ids: Sequence[str] | None = None,
    target_recall: float = DEFAULT_TARGET_RECALL,
    n_splits: int = 5,
    n_repeats: int = 3,
    seed: int = 0,
    C: float = 1.0,
    class_weight: Literal["balanced"] | None = "balanced",
) -> Probe:
    """Train a logistic-regression probe and choose its threshold out of fold.

    Every sample gets one OOF score per repeat of a ``RepeatedStratifiedKFold(n_splits,
    n_repeats, random_state=seed)``; its OOF score is the mean over repeats. The threshold is
    :func:`threshold_for_recall` on the mean OOF scores. The returned model is refit on all
    samples; applying the OOF threshold to it is the usual (slightly optimistic for recall on
    the training images, unbiased for new images) choice.

    Order-invariant: the rows are put in :func:`canonical_order` (image id, label, vector)
    before the folds are drawn and every model is fitted, so the same labelled set in any row
    order gives bit-identical coefficients, OOF scores and threshold. The returned per-sample
    arrays (``oof_scores``, ``labels``, ``image_ids``) are in the caller's row order.

    Cost: ``n_splits * n_repeats + 1`` lbfgs fits on (n, d); memory O(n * d).

    Args:
        x: (n, d) float32, L2-normalized embeddings of labelled images.
        y: (n,) labels, 1 = positive (unwanted), 0 = negative.
        category: Category name stored with the probe.
        model_id: Embedding model id stored with the probe.
        image_ids: Optional n image ids aligned with x (kept for the label queue).
        target_recall: OOF recall to keep, in (0, 1].
        n_splits: Folds per repeat (≥ 2); each class needs at least this many samples.
        n_repeats: Repeats with different splits (≥ 1).
        seed: Seed of the splits (the lbfgs fit itself is deterministic).
        C: Inverse L2 regularisation strength.
        class_weight: ``"balanced"`` (reweight classes to equal mass) or None.

    Returns:
        The :class:`Probe`, with OOF statistics.

    Raises:
        ClassifierInputError: If x is not 2-D float, holds NaNs, y is not 0/1 of the same
            length, a class has fewer than ``n_splits`` samples, or arguments are out of range.
    """
    from sklearn.metrics import precision_recall_curve, roc_auc_score
    from sklearn.model_selection import RepeatedStratifiedKFold

    arr = as_embeddings(x, f"embeddings of category {category!r}")
    labels = as_labels(y, arr.shape[0])
    if n_splits < 2 or n_repeats < 1:
        msg = f"n_splits={n_splits}, n_repeats={n_repeats}; expected n_splits >= 2, n_repeats >= 1"
        raise ClassifierInputError(msg)
    if not 0.0 < target_recall <= 1.0:
        msg = f"target_recall={target_recall!r}; expected a number in (0, 1]"
        raise ClassifierInputError(msg)
    if C <= 0:
        msg = f"C={C!r}; expected a positive inverse regularisation strength"
        raise ClassifierInputError(msg)
    n_pos, n_neg = int(labels.sum()), int((labels == 0).sum())
    if min(n_pos, n_neg) < n_splits:
        msg = (
            f"category {category!r} has {n_pos} positive and {n_neg} negative labels; "
            f"{n_splits}-fold cross-validation needs at least {n_splits} of each. "
            "Label more images or lower n_splits."
        )
        raise ClassifierInputError(msg)
    if image_ids is not None and len(image_ids) != arr.shape[0]:
        msg = f"image_ids has {len(image_ids)} ids but x has {arr.shape[0]} rows"
        raise ClassifierInputError(msg)

    n = arr.shape[0]
    # Canonical row order: the folds and every lbfgs input (whose float sums follow row order)
    # depend only on the labelled set, not on the order a Delta read or a join returned it in.
    order = canonical_order(arr, labels, image_ids)
    xc, yc = arr[order], labels[order]
    by_repeat_c = np.full((n_repeats, n), np.nan, dtype=np.float64)
    splitter = RepeatedStratifiedKFold(n_splits=n_splits, n_repeats=n_repeats, random_state=seed)
    for i, (train_idx, test_idx) in enumerate(splitter.split(xc, yc)):
        model = _logistic(C, class_weight).fit(xc[train_idx], yc[train_idx])
        by_repeat_c[i // n_splits, test_idx] = model.predict_proba(xc[test_idx])[:, 1]
    assert not np.isnan(by_repeat_c).any()
    by_repeat = np.empty_like(by_repeat_c)
    by_repeat[:, order] = by_repeat_c  # back to the caller's row order
    oof = by_repeat.mean(axis=0).astype(np.float32)
    threshold, recall, precision = threshold_for_recall(oof, labels, target_recall)
    auc = float(roc_auc_score(yc, oof[order]))
    p_curve, r_curve, t_curve = precision_recall_curve(yc, oof[order])
    final = _logistic(C, class_weight).fit(xc, yc)
    probe = Probe(
        category=category,
        coef=np.ascontiguousarray(final.coef_[0], dtype=np.float32),
        intercept=float(final.intercept_[0]),
        threshold=threshold,
        model_id=model_id,
        dim=int(arr.shape[1]),
        n_pos=n_pos,
        n_neg=n_neg,
        target_recall=float(target_recall),
        oof_recall=recall,
        oof_precision=precision,
        roc_auc=auc,
        pr_curve=_downsample_curve(p_curve, r_curve, t_curve, PR_CURVE_MAX_POINTS),
        seed=seed,
        C=float(C),
        n_splits=n_splits,
        n_repeats=n_repeats,
        class_weight=class_weight,
        oof_scores=oof,
        oof_scores_by_repeat=by_repeat.astype(np.float32),
        labels=labels,
        image_ids=tuple(image_ids) if image_ids is not None else None,
    )
    logger.info(
        "probe %s: %d pos / %d neg, threshold %.4f -> OOF recall %.4f, precision %.4f, AUC %.4f",
        category,
        n_pos,
        n_neg,
        threshold,
        recall,
        precision,
        auc,
    )
    return probe
