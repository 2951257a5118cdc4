"""What every classifier shares: input checks, the recall threshold, row-wise scoring.

Both kinds of classifier (:class:`~curation_assets.lib.classify.probe.Probe`, trained on labels,
and :class:`~curation_assets.lib.classify.zeroshot.ZeroShotScorer`, built from prompts) score an
image by one direction in embedding space, ``score = sigmoid(scale * x·w + bias)``; they share
:class:`LinearClassifier` for scoring, the embedding-model check and the summary.

Scores are probabilities in [0, 1]; an image is flagged when ``score >= threshold``. Scores
are computed row by row (:func:`row_dot`), so an image's score does not depend on which other
images share its batch or where it sits in it.
"""

import logging
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from curation_assets.lib.errors import ConfigError, PermanentError

logger = logging.getLogger(__name__)


class ClassifierInputError(PermanentError, ValueError):
    """Arrays given to a classifier are unusable (wrong shape/dtype, NaNs, too few labels)."""


class EmbeddingMismatchError(ClassifierInputError, ConfigError):
    """A classifier is applied to embeddings of another model or dimension."""


def threshold_for_recall(
    scores: np.ndarray, y: np.ndarray, target_recall: float
) -> tuple[float, float, float]:
    """The highest threshold whose recall is at least ``target_recall``.

    Recall at ``t`` is the fraction of positives with ``score >= t``. With positive scores
    sorted in decreasing order, the answer is the k-th of them, ``k = ceil(target * n_pos)``:
    any higher threshold keeps fewer than k positives. Ties at the threshold all count as
    flagged, so the recall reached may exceed the target.

    Args:
        scores: (n,) scores (any real values; higher = more positive).
        y: (n,) labels in {0, 1}.
        target_recall: In (0, 1]; 1.0 gives the lowest positive score.

    Returns:
        ``(threshold, recall, precision)`` at that threshold.

    Raises:
        ValueError: On mismatched shapes, NaN scores, labels outside {0, 1}, no positive, or
            a target outside (0, 1].
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(y).ravel()
    if s.shape != labels.shape:
        msg = f"scores has {s.shape[0]} values but y has {labels.shape[0]}; pass one per sample"
        raise ValueError(msg)
    if not 0.0 < target_recall <= 1.0:
        msg = f"target_recall={target_recall!r}; expected a number in (0, 1]"
        raise ValueError(msg)
    if not np.isfinite(s).all():
        msg = f"scores hold {int((~np.isfinite(s)).sum())} NaN/inf values; scores must be finite"
        raise ValueError(msg)
    if not np.isin(labels, (0, 1)).all():
        msg = f"y holds values {sorted(set(np.unique(labels).tolist()) - {0, 1})}; expected 0/1"
        raise ValueError(msg)
    pos = np.sort(s[labels == 1])[::-1]
    if pos.size == 0:
        msg = "y has no positive; a recall threshold needs at least one labelled positive"
        raise ValueError(msg)
    k = max(1, math.ceil(round(target_recall * pos.size, 9)))
    t = float(pos[k - 1])
    flagged = s >= t
    tp = int((flagged & (labels == 1)).sum())
    return t, tp / pos.size, tp / int(flagged.sum())


def as_embeddings(x: Any, what: str, dim: int | None = None) -> np.ndarray:
    """Validate and coerce embeddings to (n, d) float32 C-contiguous, L2-normalized rows.

    Raises:
        ClassifierInputError: If ``x`` is not 2-D float, holds NaN/inf or all-zero rows.
        EmbeddingMismatchError: If its dimension is not ``dim``.
    """
    arr = np.asarray(x)
    if arr.ndim != 2:
        msg = f"{what} has shape {arr.shape}; expected a 2-D (n, d) array of embeddings"
        raise ClassifierInputError(msg)
    if not np.issubdtype(arr.dtype, np.floating):
        msg = f"{what} has dtype {arr.dtype}; expected float32 embeddings"
        raise ClassifierInputError(msg)
    if dim is not None and arr.shape[1] != dim:
        msg = f"{what} has dimension {arr.shape[1]} but {dim} was expected"
        raise EmbeddingMismatchError(msg)
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(out).all():
        bad = int((~np.isfinite(out)).any(axis=1).sum())
        msg = f"{what} has {bad} rows with NaN/inf; drop or re-embed those images"
        raise ClassifierInputError(msg)
    if out.shape[0] == 0:
        return out
    norms = np.linalg.norm(out, axis=1)
    if (norms == 0).any():
        msg = f"{what} has {int((norms == 0).sum())} all-zero rows; they cannot be normalized"
        raise ClassifierInputError(msg)
    if np.abs(norms - 1.0).max() > 1e-3:
        logger.warning(
            "%s rows are not L2-normalized (norms %.3g..%.3g); normalizing",
            what,
            norms.min(),
            norms.max(),
        )
        out = np.ascontiguousarray(out / norms[:, None], dtype=np.float32)
    return out


def as_labels(y: Any, n: int) -> np.ndarray:
    """Validate ``n`` labels in {0, 1} (bools accepted) as int8.

    Raises:
        ClassifierInputError: On another length or another value.
    """
    labels = np.asarray(y).ravel()
    if labels.shape[0] != n:
        msg = f"y has {labels.shape[0]} labels but x has {n} rows; pass one label per row"
        raise ClassifierInputError(msg)
    if labels.dtype == bool:
        labels = labels.astype(np.int8)
    if labels.size and not np.isin(labels, (0, 1)).all():
        msg = f"y holds values {np.unique(labels).tolist()}; expected 0 (negative) / 1 (positive)"
        raise ClassifierInputError(msg)
    return labels.astype(np.int8)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Logistic function as float32 (inputs clipped to ±60 so exp never overflows)."""
    return (1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0)))).astype(np.float32)


def canonical_order(
    x: np.ndarray, labels: np.ndarray | None = None, image_ids: Sequence[str] | None = None
) -> np.ndarray:
    """The permutation that puts labelled rows in a canonical order.

    Rows are sorted by image id (when given), then label, then the raw bytes of the vector, so
    two calls with the same rows in any order return permutations selecting the same sequence
    (rows equal in all three are interchangeable). Cost: one O(n log n) sort of n keys of
    ``4 * d`` bytes.

    Args:
        x: (n, d) array.
        labels: Optional (n,) labels.
        image_ids: Optional n ids.

    Returns:
        (n,) int64 permutation: ``x[order]`` is in canonical order.
    """
    arr = np.ascontiguousarray(x)
    n = arr.shape[0]
    ids = [""] * n if image_ids is None else [str(i) for i in image_ids]
    lab = [0] * n if labels is None else np.asarray(labels).astype(np.int64).tolist()
    keys = [(ids[i], lab[i], arr[i].tobytes()) for i in range(n)]
    return np.asarray(sorted(range(n), key=keys.__getitem__), dtype=np.int64)


def row_dot(x: np.ndarray, v: np.ndarray, *, batch_size: int = 65_536) -> np.ndarray:
    """``x @ v`` in float64, each row summed on its own (independent of the other rows).

    ``np.einsum`` without BLAS sums every row in the same order wherever the row sits, so the
    result of a row is bit-identical whatever batch it is scored in; a BLAS ``gemv`` may round
    a row differently by its position in the batch (measured: last-bit differences on ~1 % of
    rows). Memory: one ``batch_size`` float64 block at a time.

    Args:
        x: (n, d) float array.
        v: (d,) float array.
        batch_size: Rows converted to float64 at a time.

    Returns:
        (n,) float64.
    """
    w = np.asarray(v, dtype=np.float64)
    out = np.empty(x.shape[0], dtype=np.float64)
    for start in range(0, x.shape[0], batch_size):
        xb = np.asarray(x[start : start + batch_size], dtype=np.float64)
        out[start : start + xb.shape[0]] = np.einsum("nd,d->n", xb, w)
    return out


class LinearClassifier:
    """Scaffolding shared by the probe and the zero-shot scorer (subclasses are dataclasses).

    A subclass scores ``sigmoid(scale * x·w + bias)`` with ``(w, scale, bias)`` from
    :meth:`linear_form`, and adds its own scalars to :meth:`summary`.

    Attributes:
        category: Category name.
        model_id: Embedding model the classifier expects (``backend:model@weights``).
        dim: Embedding dimension it expects.
        threshold: Flag when ``score >= threshold``; None = score only, do not filter.
        n_pos: Labelled positives behind it.
        n_neg: Labelled negatives behind it.
        kind: ``linear_probe`` or ``zero_shot`` (the ``scorer`` column of the scores).
    """

    category: str
    model_id: str
    dim: int
    threshold: float | None
    n_pos: int
    n_neg: int
    kind: str
    scored_as: ClassVar[str] = "by"
    """Words naming the classifier in input errors: ``embeddings scored <scored_as> 'hat'``."""

    def linear_form(self) -> tuple[np.ndarray, float, float]:
        """``(w, scale, bias)``: (dim,) float64 direction, logit scale and bias."""
        raise NotImplementedError

    def check_compatible(self, model_id: str, dim: int) -> None:
        """Raise unless embeddings of ``model_id`` / ``dim`` are what the classifier expects.

        Raises:
            EmbeddingMismatchError: Naming both models and how to fix it.
        """
        if self.model_id != model_id or self.dim != dim:
            msg = (
                f"classifier for category {self.category!r} was trained on embeddings of "
                f"{self.model_id} (dim {self.dim}) but the current embeddings come from "
                f"{model_id} (dim {dim}); re-label/retrain or switch the embedder back"
            )
            raise EmbeddingMismatchError(msg)

    def score(self, x: np.ndarray) -> np.ndarray:
        """Probability of the category for each embedding.

        Args:
            x: (n, dim) float32, L2-normalized (normalized here if not).

        Returns:
            (n,) float32 in [0, 1].

        Raises:
            EmbeddingMismatchError: If the dimension differs from the classifier's.
        """
        arr = as_embeddings(x, f"embeddings scored {self.scored_as} {self.category!r}", self.dim)
        w, scale, bias = self.linear_form()
        return sigmoid(scale * row_dot(arr, w) + bias)

    def quality_summary(self) -> dict[str, Any]:
        """The subclass's threshold statistics (placed after ``threshold`` in the summary)."""
        return {}

    def fit_summary(self) -> dict[str, Any]:
        """The subclass's fitting parameters (placed last in the summary)."""
        return {}

    def summary(self) -> dict[str, Any]:
        """Scalars for logs and Dagster metadata (also the head of the JSON form)."""
        return (
            {"category": self.category, "kind": self.kind, "threshold": self.threshold}
            | self.quality_summary()
            | {"n_pos": self.n_pos, "n_neg": self.n_neg, "model_id": self.model_id, "dim": self.dim}
            | self.fit_summary()
        )
