"""Classify: one classifier per unwanted category, thresholded for recall.

Stage 3 of the pipeline (see DESIGN.md). For every category of a *category spec*
(:func:`load_category_spec`) :func:`fit_category` builds one of:

* a **linear probe** (:func:`train_probe`): logistic regression on the L2-normalized image
  embeddings of the labelled images. Out-of-fold (OOF) scores come from repeated stratified
  k-fold cross-validation; the threshold is the **highest** score that keeps OOF recall
  ≥ the category's target recall (:func:`threshold_for_recall`) — recall is favoured and the
  precision it costs is reported. The final model is refit on all labels; its threshold is the
  one estimated out of fold.
* a **zero-shot scorer** (:class:`ZeroShotScorer`) when there are fewer than
  :data:`MIN_POSITIVES` labelled positives but the category has prompts and a text encoder in
  the image space is available. It gets a threshold only when one can be estimated from the
  labels that exist; otherwise ``threshold is None`` means *score only, do not filter*.
* nothing (``skipped``) with a reason.

Classifiers are saved as JSON with base64 float32 arrays (:func:`save_probes`), never pickle,
and remember the embedding model (id and dim) they were trained on so that a classifier is
never applied to vectors of another model (:meth:`Probe.check_compatible`).

Scores are probabilities in [0, 1]; an image is flagged when ``score >= threshold``.

**Determinism.** The same labelled images give the same probe, bit for bit, whatever order
the rows arrive in (Delta reads and polars joins do not keep row order): :func:`train_probe`
first puts the rows in a canonical order (:func:`canonical_order`: by image id, then label,
then the vector's bytes), so the k-fold assignment, every lbfgs input and therefore the
coefficients, the out-of-fold scores and the threshold depend only on the *set* of labelled
images and the seed. Scores are computed row by row (:func:`row_dot`), so an image's score does
not depend on which other images share its batch or where it sits in it (a BLAS matrix-vector
product can round a row differently by its position). What stays non-bitwise is only what
differs between *machines*: float summation order inside numpy/scipy/BLAS kernels (SIMD width,
thread count); the same code and inputs on the same machine repeat exactly.
"""

import base64
import json
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import yaml

logger = logging.getLogger(__name__)

MIN_POSITIVES = 20
"""Labelled positives needed to train a probe (fewer: zero-shot or skipped)."""
MIN_NEGATIVES = 20
"""Labelled negatives needed to train a probe."""
DEFAULT_TARGET_RECALL = 0.99
ZERO_SHOT_TEMPERATURE = 100.0
"""CLIP's logit scale: ``score = softmax(100 * [cos_pos, cos_neg])[0]``."""
PR_CURVE_MAX_POINTS = 200
"""At most this many points of the OOF precision-recall curve are kept (metadata, plots)."""
CATEGORY_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")
"""snake_case: lowercase letters and digits, words joined by single underscores."""
CLASSIFIERS_FORMAT = "curation_assets.classifiers"
CLASSIFIERS_VERSION = 1

TextEncoder = Callable[[list[str]], np.ndarray]
"""Prompts -> (n, d) float32, L2-normalized, in the same space as the image embeddings."""

Status = Literal["trained", "zero_shot", "skipped"]


class CategorySpecError(ValueError):
    """The category spec file is invalid (bad configuration)."""


class ClassifierInputError(ValueError):
    """Arrays given to a classifier are unusable (wrong shape/dtype, NaNs, too few labels)."""


class EmbeddingMismatchError(ClassifierInputError):
    """A classifier is applied to embeddings of another model or dimension."""


# ----------------------------------------------------------------------------- category spec


@dataclass(frozen=True)
class ZeroShotPrompts:
    """Prompts describing a category, embedded with the text tower.

    Attributes:
        positive: Prompts describing images of the category (averaged).
        negative: Prompts describing everything else (averaged).
    """

    positive: tuple[str, ...]
    negative: tuple[str, ...]


@dataclass(frozen=True)
class CategorySpec:
    """One category to classify (and filter).

    Attributes:
        name: snake_case identifier; used as a score column name and in labels.
        description: What counts as positive, for labellers and the UI.
        target_recall: Out-of-fold recall the threshold must keep, in (0, 1].
        zero_shot: Optional prompts for zero-shot scoring when labels are scarce.
        min_clip_score: Optional image–caption cosine floor (LAION-style, e.g. 0.28 for
            ViT-B/32) applied by the filter stage to captioned images; see
            :func:`clip_score_floor`.
    """

    name: str
    description: str
    target_recall: float = DEFAULT_TARGET_RECALL
    zero_shot: ZeroShotPrompts | None = None
    min_clip_score: float | None = None


_SPEC_KEYS = {"name", "description", "target_recall", "zero_shot", "min_clip_score"}
_ZERO_SHOT_KEYS = {"positive", "negative"}


def _spec_error(source: str, where: str, problem: str, fix: str) -> CategorySpecError:
    return CategorySpecError(f"{source}: {where}: {problem}; {fix}")


def _prompts(value: Any, source: str, where: str, key: str) -> tuple[str, ...]:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(p, str) and p.strip() for p in value)
    ):
        raise _spec_error(
            source,
            where,
            f"zero_shot.{key} is {value!r}",
            "expected a non-empty list of non-empty strings",
        )
    return tuple(p.strip() for p in value)


def _parse_category(entry: Any, index: int, source: str) -> CategorySpec:
    where = f"category #{index + 1}"
    if not isinstance(entry, dict):
        raise _spec_error(
            source, where, f"is a {type(entry).__name__}", "expected a mapping with name: ..."
        )
    name = entry.get("name")
    if isinstance(name, str):
        where = f"category {name!r}"
    unknown = sorted(set(entry) - _SPEC_KEYS)
    if unknown:
        raise _spec_error(
            source, where, f"unknown keys {unknown}", f"allowed keys are {sorted(_SPEC_KEYS)}"
        )
    if not isinstance(name, str) or not CATEGORY_NAME_PATTERN.match(name):
        raise _spec_error(
            source,
            where,
            f"name {name!r} is not snake_case",
            "use lowercase letters, digits and single underscores, starting with a letter "
            "(e.g. 'graphic_violence')",
        )
    description = entry.get("description")
    if not isinstance(description, str) or not description.strip():
        raise _spec_error(
            source,
            where,
            f"description is {description!r}",
            "write one sentence saying what counts as positive (labellers read it)",
        )
    recall = entry.get("target_recall", DEFAULT_TARGET_RECALL)
    if (
        isinstance(recall, bool)
        or not isinstance(recall, int | float)
        or not 0.0 < float(recall) <= 1.0
    ):
        raise _spec_error(
            source,
            where,
            f"target_recall is {recall!r}",
            "expected a number in (0, 1], e.g. 0.99",
        )
    zero_shot = None
    zs = entry.get("zero_shot")
    if zs is not None:
        if not isinstance(zs, dict):
            raise _spec_error(
                source,
                where,
                f"zero_shot is {zs!r}",
                "expected a mapping with 'positive' and 'negative' prompt lists",
            )
        unknown = sorted(set(zs) - _ZERO_SHOT_KEYS)
        if unknown:
            raise _spec_error(
                source,
                where,
                f"unknown keys {unknown} under zero_shot",
                "allowed keys are ['negative', 'positive']",
            )
        zero_shot = ZeroShotPrompts(
            positive=_prompts(zs.get("positive"), source, where, "positive"),
            negative=_prompts(zs.get("negative"), source, where, "negative"),
        )
    floor = entry.get("min_clip_score")
    if floor is not None and (
        isinstance(floor, bool) or not isinstance(floor, int | float) or not -1 <= floor <= 1
    ):
        raise _spec_error(
            source,
            where,
            f"min_clip_score is {floor!r}",
            "expected a cosine similarity in [-1, 1] (e.g. 0.28) or leave it out",
        )
    return CategorySpec(
        name=name,
        description=description.strip(),
        target_recall=float(recall),
        zero_shot=zero_shot,
        min_clip_score=None if floor is None else float(floor),
    )


def parse_category_spec(data: Any, *, source: str = "<category spec>") -> list[CategorySpec]:
    """Validate a parsed category spec (``{"categories": [...]}``).

    Args:
        data: The YAML document as Python objects.
        source: Name of the file (or other origin) used in error messages.

    Returns:
        The categories in file order.

    Raises:
        CategorySpecError: Naming the file, the category and the key at fault.
    """
    if not isinstance(data, dict) or "categories" not in data:
        msg = f"{source}: expected a mapping with a 'categories:' list at the top level"
        raise CategorySpecError(msg)
    unknown = sorted(set(data) - {"categories"})
    if unknown:
        msg = f"{source}: unknown top-level keys {unknown}; only 'categories' is allowed"
        raise CategorySpecError(msg)
    entries = data["categories"]
    if not isinstance(entries, list) or not entries:
        msg = f"{source}: 'categories' is {entries!r}; expected a non-empty list of categories"
        raise CategorySpecError(msg)
    specs = [_parse_category(e, i, source) for i, e in enumerate(entries)]
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        msg = f"{source}: categories {dupes} are defined more than once; names must be unique"
        raise CategorySpecError(msg)
    return specs


def load_category_spec(path: str | Path) -> list[CategorySpec]:
    """Load and validate a category spec YAML file (see ``configs/categories.yaml``).

    Raises:
        CategorySpecError: If the file is missing, not YAML, or a category is invalid.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        msg = f"category spec {p} does not exist; point the config at a YAML file"
        raise CategorySpecError(msg)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        msg = f"category spec {p} is not valid YAML: {exc}"
        raise CategorySpecError(msg) from exc
    return parse_category_spec(data, source=str(p))


def clip_score_floor(specs: Sequence[CategorySpec]) -> float | None:
    """The image–caption cosine floor the filter applies: the largest one set, or None."""
    floors = [s.min_clip_score for s in specs if s.min_clip_score is not None]
    return max(floors) if floors else None


# ----------------------------------------------------------------------------- thresholds


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


# ----------------------------------------------------------------------------- arrays


def _as_embeddings(x: Any, what: str, dim: int | None = None) -> np.ndarray:
    """Validate and coerce embeddings to (n, d) float32 C-contiguous, L2-normalized rows."""
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


def _as_labels(y: Any, n: int) -> np.ndarray:
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


def _sigmoid(z: np.ndarray) -> np.ndarray:
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


# ----------------------------------------------------------------------------- probe


@dataclass(eq=False)
class Probe:
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

    def check_compatible(self, model_id: str, dim: int) -> None:
        """Raise unless embeddings of ``model_id`` / ``dim`` are what the probe was trained on.

        Raises:
            EmbeddingMismatchError: Naming both models and how to fix it.
        """
        _check_compatible(self.category, self.model_id, self.dim, model_id, dim)

    def score(self, x: np.ndarray) -> np.ndarray:
        """Probability of the category for each embedding.

        Args:
            x: (n, dim) float32, L2-normalized (normalized here if not).

        Returns:
            (n,) float32 in [0, 1].

        Raises:
            EmbeddingMismatchError: If the dimension differs from the probe's.
        """
        arr = _as_embeddings(x, f"embeddings scored by probe {self.category!r}", self.dim)
        return _sigmoid(row_dot(arr, self.coef) + self.intercept)

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

    def summary(self) -> dict[str, Any]:
        """Scalars for logs and Dagster metadata."""
        return {
            "category": self.category,
            "kind": self.kind,
            "threshold": self.threshold,
            "target_recall": self.target_recall,
            "oof_recall": self.oof_recall,
            "oof_precision": self.oof_precision,
            "roc_auc": self.roc_auc,
            "n_pos": self.n_pos,
            "n_neg": self.n_neg,
            "model_id": self.model_id,
            "dim": self.dim,
            "seed": self.seed,
            "C": self.C,
            "n_splits": self.n_splits,
            "n_repeats": self.n_repeats,
        }


def _check_compatible(category: str, trained_id: str, trained_dim: int, model_id: str, dim: int):
    if trained_id != model_id or trained_dim != dim:
        msg = (
            f"classifier for category {category!r} was trained on embeddings of {trained_id} "
            f"(dim {trained_dim}) but the current embeddings come from {model_id} (dim {dim}); "
            "re-label/retrain or switch the embedder back"
        )
        raise EmbeddingMismatchError(msg)


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

    arr = _as_embeddings(x, f"embeddings of category {category!r}")
    labels = _as_labels(y, arr.shape[0])
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


# ----------------------------------------------------------------------------- zero-shot


@dataclass(eq=False)
class ZeroShotScorer:
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

    def check_compatible(self, model_id: str, dim: int) -> None:
        """Raise unless embeddings of ``model_id`` / ``dim`` match the prompts' space.

        Raises:
            EmbeddingMismatchError: Naming both models and how to fix it.
        """
        _check_compatible(self.category, self.model_id, self.dim, model_id, dim)

    def score(self, x: np.ndarray) -> np.ndarray:
        """Zero-shot probability of the category.

        Args:
            x: (n, dim) float32, L2-normalized image embeddings.

        Returns:
            (n,) float32 in [0, 1].
        """
        arr = _as_embeddings(x, f"embeddings scored zero-shot for {self.category!r}", self.dim)
        diff = self.positive.astype(np.float64) - self.negative.astype(np.float64)
        return _sigmoid(self.temperature * row_dot(arr, diff))

    def summary(self) -> dict[str, Any]:
        """Scalars for logs and Dagster metadata."""
        return {
            "category": self.category,
            "kind": self.kind,
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "target_recall": self.target_recall,
            "label_recall": self.label_recall,
            "label_precision": self.label_precision,
            "n_pos": self.n_pos,
            "n_neg": self.n_neg,
            "model_id": self.model_id,
            "dim": self.dim,
            "temperature": self.temperature,
        }


def _prompt_centroid(encoder: TextEncoder, prompts: tuple[str, ...], what: str) -> np.ndarray:
    emb = np.asarray(encoder(list(prompts)))
    if emb.ndim != 2 or emb.shape[0] != len(prompts):
        msg = (
            f"text encoder returned shape {emb.shape} for {len(prompts)} {what} prompts; "
            "expected (n_prompts, dim)"
        )
        raise ClassifierInputError(msg)
    emb = _as_embeddings(emb, f"{what} prompt embeddings")
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


# ----------------------------------------------------------------------------- policy

Classifier = Probe | ZeroShotScorer


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
    arr = _as_embeddings(arr, f"labelled embeddings of category {spec.name!r}")
    labels = _as_labels(y, arr.shape[0])
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


# ----------------------------------------------------------------------------- serialization


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode("ascii")


def _unb64(s: str, shape: tuple[int, ...], what: str, path: Path) -> np.ndarray:
    raw = base64.b64decode(s.encode("ascii"), validate=True)
    a = np.frombuffer(raw, dtype="<f4")
    if a.size != math.prod(shape):
        msg = f"{path}: {what} holds {a.size} floats, expected shape {shape}; the file is corrupt"
        raise ValueError(msg)
    return a.reshape(shape).astype(np.float32)


def _probe_to_dict(p: Probe) -> dict[str, Any]:
    return {
        "kind": p.kind,
        **{k: v for k, v in p.summary().items() if k != "kind"},
        "intercept": p.intercept,
        "class_weight": p.class_weight,
        "trained_at": p.trained_at,
        "pr_curve": p.pr_curve,
        "coef_f32_b64": _b64(p.coef),
        "n": int(p.labels.size),
        "labels": p.labels.astype(int).tolist(),
        "oof_scores_f32_b64": _b64(p.oof_scores),
        "oof_scores_by_repeat_f32_b64": _b64(p.oof_scores_by_repeat),
        "image_ids": list(p.image_ids) if p.image_ids is not None else None,
    }


def _zero_shot_to_dict(z: ZeroShotScorer) -> dict[str, Any]:
    return {
        "kind": z.kind,
        **{k: v for k, v in z.summary().items() if k != "kind"},
        "positive_prompts": list(z.positive_prompts),
        "negative_prompts": list(z.negative_prompts),
        "positive_f32_b64": _b64(z.positive),
        "negative_f32_b64": _b64(z.negative),
    }


def _from_dict(d: Mapping[str, Any], path: Path) -> Classifier:
    kind = d.get("kind")
    dim = int(d["dim"])
    if kind == "linear_probe":
        n, reps = int(d["n"]), int(d["n_repeats"])
        ids = d.get("image_ids")
        return Probe(
            category=d["category"],
            coef=_unb64(d["coef_f32_b64"], (dim,), "coef", path),
            intercept=float(d["intercept"]),
            threshold=float(d["threshold"]),
            model_id=d["model_id"],
            dim=dim,
            n_pos=int(d["n_pos"]),
            n_neg=int(d["n_neg"]),
            target_recall=float(d["target_recall"]),
            oof_recall=float(d["oof_recall"]),
            oof_precision=float(d["oof_precision"]),
            roc_auc=float(d["roc_auc"]),
            pr_curve={k: list(v) for k, v in d["pr_curve"].items()},
            seed=int(d["seed"]),
            C=float(d["C"]),
            n_splits=int(d["n_splits"]),
            n_repeats=reps,
            class_weight=d.get("class_weight"),
            oof_scores=_unb64(d["oof_scores_f32_b64"], (n,), "oof_scores", path),
            oof_scores_by_repeat=_unb64(
                d["oof_scores_by_repeat_f32_b64"], (reps, n), "oof_scores_by_repeat", path
            ),
            labels=np.asarray(d["labels"], dtype=np.int8),
            image_ids=tuple(ids) if ids is not None else None,
            trained_at=d["trained_at"],
        )
    if kind == "zero_shot":
        t = d.get("threshold")
        return ZeroShotScorer(
            category=d["category"],
            positive=_unb64(d["positive_f32_b64"], (dim,), "positive", path),
            negative=_unb64(d["negative_f32_b64"], (dim,), "negative", path),
            positive_prompts=tuple(d["positive_prompts"]),
            negative_prompts=tuple(d["negative_prompts"]),
            model_id=d["model_id"],
            dim=dim,
            temperature=float(d["temperature"]),
            threshold=None if t is None else float(t),
            threshold_source=d.get("threshold_source"),
            target_recall=float(d["target_recall"]),
            label_recall=d.get("label_recall"),
            label_precision=d.get("label_precision"),
            n_pos=int(d["n_pos"]),
            n_neg=int(d["n_neg"]),
        )
    msg = f"{path}: classifier kind {kind!r} is unknown; expected 'linear_probe' or 'zero_shot'"
    raise ValueError(msg)


def classifier_to_json(classifier: Classifier) -> str:
    """One classifier as a JSON string (the format of :func:`save_probes` entries)."""
    if isinstance(classifier, Probe):
        return json.dumps(_probe_to_dict(classifier), allow_nan=False)
    return json.dumps(_zero_shot_to_dict(classifier), allow_nan=False)


def classifier_from_json(text: str, *, source: str = "<json>") -> Classifier:
    """Inverse of :func:`classifier_to_json`.

    Raises:
        ValueError: If the text is not a classifier written by this version.
    """
    try:
        return _from_dict(json.loads(text), Path(source))
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        msg = f"{source}: not a valid classifier entry ({exc}); retrain the classifiers"
        raise ValueError(msg) from exc


def save_probes(path: str | Path, probes: Sequence[Classifier]) -> Path:
    """Write classifiers to one JSON file (float32 arrays as base64 little-endian; no pickle).

    The write goes to ``path.tmp`` and is renamed, so a reader never sees half a file.

    Args:
        path: Destination ``.json`` file (parent folders are created).
        probes: Probes and/or zero-shot scorers, at most one per category.

    Returns:
        The path written.

    Raises:
        ValueError: If two classifiers share a category.
    """
    names = [p.category for p in probes]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        msg = f"classifiers for categories {dupes} given more than once; save one per category"
        raise ValueError(msg)
    doc = {
        "format": CLASSIFIERS_FORMAT,
        "version": CLASSIFIERS_VERSION,
        "classifiers": [
            _probe_to_dict(p) if isinstance(p, Probe) else _zero_shot_to_dict(p) for p in probes
        ],
    }
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(doc, allow_nan=False, indent=1), encoding="utf-8")
    tmp.replace(out)
    return out


def load_probes(path: str | Path) -> list[Classifier]:
    """Read classifiers written by :func:`save_probes`.

    Raises:
        ValueError: If the file is not a classifiers file of a supported version or is corrupt.
    """
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        msg = f"{p} is not JSON ({exc}); expected a file written by save_probes"
        raise ValueError(msg) from exc
    if not isinstance(doc, dict) or doc.get("format") != CLASSIFIERS_FORMAT:
        msg = f"{p} is not a classifiers file (format != {CLASSIFIERS_FORMAT!r})"
        raise ValueError(msg)
    if doc.get("version") != CLASSIFIERS_VERSION:
        msg = (
            f"{p} has classifiers format version {doc.get('version')!r}; this code reads "
            f"version {CLASSIFIERS_VERSION}. Retrain the classifiers with this version."
        )
        raise ValueError(msg)
    try:
        return [_from_dict(d, p) for d in doc["classifiers"]]
    except (KeyError, TypeError) as exc:
        msg = f"{p}: a classifier entry lacks or mistypes field {exc}; the file is corrupt"
        raise ValueError(msg) from exc
