"""The density-ratio probe behind the sample weights (DALL·E 2 mitigations, stage 7).

Filtering (and deduplication) changes what the data looks like: DALL·E 2 found that removing
sexual content also removed many images of women. Following DALL·E 2, every kept image ``x``
gets a weight proportional to the density ratio

    w(x) ∝ p_unfiltered(x) / p_filtered(x),

estimated with a deliberately *weak*, calibrated linear probe, so that training on the kept
images with these weights approximates training on the unfiltered distribution along the broad
directions the probe can see.

**Two estimators, one ratio.** The kept images are a subset of the unfiltered ones, so
``p_f(x) = p_u(x) · P(kept | x) / π_k`` with ``π_k = N_kept / N_unfiltered`` and therefore

    p_u(x) / p_f(x) = π_k / P(kept | x).

* ``method="kept_vs_removed"`` (default) trains the probe on kept vs *removed* images. The two
  classes are disjoint; on balanced samples its odds estimate ``p_kept(x) / p_removed(x)`` and,
  corrected for the class priors, ``ratio = π_k + π_r · p_removed(x) / p_kept(x)``
  (``π_r = 1 - π_k``), which equals ``π_k / P(kept | x)``.
* ``method="unfiltered_vs_filtered"`` is DALL·E 2's formulation: the probe tells a sample of
  all images from a sample of the kept ones and on balanced samples its odds are the ratio
  directly. The kept images are in *both* classes, so the classes overlap by construction
  and the probe only sees the signal of the removed share ``π_r``, diluted by the rest.

Both estimate the same ratio; the default is ``kept_vs_removed`` because it estimates it much
better at the same sample size. On the synthetic test of ``weights/test_fit.py`` (16-d Gaussian
mixture, a logistic filter removing ~29 %, 20 k images, seeds 0-4, C=10), the Pearson
correlation of estimated and true log-ratios is 0.98-0.99 for kept-vs-removed and 0.82-0.83
for unfiltered-vs-filtered, and the weighted share of the most-filtered group lands within
0.8 points of its unfiltered share vs 1.9-2.5 points. When the filter is a logistic function
of a linear score (as a linear-probe safety filter roughly is), kept-vs-removed is the
well-specified model and the other is not (``P(unfiltered | x) = r / (1 + r)`` is not
logistic in ``x``).

**Weak.** The probe is an L2-regularised logistic regression on a PCA-reduced embedding
(``pca_dim`` components, scaled so that their *mean* variance is 1, which keeps the relative
variances: the penalty shrinks low-variance directions most). ``C`` is the inverse penalty per
training row: the probe minimises ``mean log-loss + ‖β‖² / (2·C)``, so the same ``C`` means
the same strength at 10 k or 1 M images (scikit-learn's ``C`` is ``C / n_train``). With the
default ``C = 1`` the synthetic test above gives a Pearson correlation of 0.94 and a mean
``|P̂(kept|x) − P(kept|x)|`` of 0.04 (0.998 and 0.008 with ``C = 100``).

What weights can and cannot do: a safety filter is a hard threshold, so the images it removes
have no kept look-alikes exactly at their place, and no weight can bring that mass back. A
weak probe smooths the removed region into a broad direction and up-weights the kept images
*along* it (DALL·E 2's images of women that were not sexual), which is the intended effect;
``w_max`` bounds how far one image can be pushed. Which rows count as "kept" is the caller's
choice: removed near-duplicates passed as not-kept make the weights undo deduplication's
shift too (up-weighting images that had many copies); leave them out of ``x_unfiltered``
altogether to correct only for the safety filter.

**Calibrated, out of fold.** The balanced training sample is split into ``n_folds`` folds; a
probe per fold is trained on the other folds. Every training row is scored by the probe that
did not see it (cross-fitting), every other row by the mean logit of all fold probes. One
sigmoid (Platt) map ``a·logit + b``, fitted on the pooled out-of-fold logits, calibrates all
scores; the AUC, Brier score and expected calibration error reported are out of fold.

The probe's ratios become weights in :mod:`curation_assets.lib.weights.scale` (clipped to
``[w_min, w_max]``, mean exactly 1).

Memory: the training sample (``2 · max_train_per_class · d · 4`` bytes); the (n, d) input may
be a memmap and is never copied whole.

**Determinism.** Everything random is seeded (``seed``: the balanced sample, the fold split,
the randomized PCA; lbfgs and the Platt fit are deterministic). Everything order-dependent
(which rows the seeded draws pick, which fold a row lands in, the row order of the PCA and
lbfgs inputs, the batches rows are scored in, the sums of
:func:`~curation_assets.lib.weights.scale.clip_normalize` and
:func:`~curation_assets.lib.weights.scale.weight_stats`) follows a *canonical* row order:
ascending ``image_ids`` when they are passed to :func:`fit_density_ratio` and
:func:`~curation_assets.lib.weights.scale.sample_weights`, else the caller's row order (the
``sample_weights`` asset sorts by shard, image_id). With ids, the same images in any row
order give bit-identical weights per image. What stays non-bitwise is only what differs between
machines or library builds: BLAS products (PCA projection, probe logits) round by SIMD width
and thread count, at ~1e-16 relative; weights are continuous in those values (no decision but
the ``clipped`` flag, which would need a scaled ratio within 1e-16 of a bound), so from the
same embeddings they agree to far better than 1e-6. (Embeddings made on another machine or
thread count differ more, see :mod:`curation_assets.lib.embed`: measured < 2e-6 on weights.)
"""

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

logger = logging.getLogger(__name__)

Method = Literal["kept_vs_removed", "unfiltered_vs_filtered"]
METHODS: tuple[str, ...] = ("kept_vs_removed", "unfiltered_vs_filtered")

DEFAULT_METHOD: Method = "kept_vs_removed"
DEFAULT_C = 1.0
"""Inverse L2 strength per training row (objective ``mean log-loss + ‖β‖²/(2C)``)."""
DEFAULT_PCA_DIM = 64
DEFAULT_MAX_TRAIN_PER_CLASS = 50_000
DEFAULT_N_FOLDS = 5
MIN_PER_CLASS = 50
"""Fewer training rows in the smaller class: no probe is fitted and weights are uniform."""
ECE_BINS = 10

_LOGIT_CAP = 50.0  # exp(50) ≈ 5e21: far beyond any clip bound, finite in float64


# --------------------------------------------------------------------------------------------
# Row helpers (shared with :mod:`curation_assets.lib.weights.scale`)
# --------------------------------------------------------------------------------------------


def check_matrix(x: Any, what: str) -> np.ndarray:
    """``x`` as an (n, d) float array (a memmap stays a memmap).

    Raises:
        ValueError: If ``x`` is not 2-d with d ≥ 1, or not floating point.
    """
    arr = x if isinstance(x, np.ndarray) else np.asarray(x)
    if arr.ndim != 2 or arr.shape[1] < 1:
        msg = f"{what} has shape {arr.shape}; expected (n, d) embeddings"
        raise ValueError(msg)
    if not np.issubdtype(arr.dtype, np.floating):
        msg = f"{what} has dtype {arr.dtype}; expected float embeddings (float32)"
        raise ValueError(msg)
    return arr


def check_mask(kept: Any, n: int) -> np.ndarray:
    """``kept`` as an (n,) bool mask over the rows of ``x_unfiltered``.

    Raises:
        ValueError: If it is not bool or not of length n.
    """
    mask = np.asarray(kept)
    if mask.dtype != np.bool_ or mask.shape != (n,):
        msg = (
            f"kept has shape {mask.shape} and dtype {mask.dtype}; expected a ({n},) bool mask "
            "over the rows of x_unfiltered (True = the image survived filtering and dedup)"
        )
        raise ValueError(msg)
    return mask


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Logistic function, written with tanh (no overflow for large ``|z|``)."""
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def canonical_order(image_ids: Sequence[str] | None, n: int) -> np.ndarray:
    """(n,) int64 rows in canonical order: ascending image id (stable), or 0..n-1 without ids.

    Raises:
        ValueError: If there are not n ids, or an id repeats (the order would not be canonical).
    """
    if image_ids is None:
        return np.arange(n, dtype=np.int64)
    ids = np.asarray([str(i) for i in image_ids])
    if ids.shape != (n,):
        msg = f"got {ids.size} image_ids for {n} rows; pass one id per row of x_unfiltered"
        raise ValueError(msg)
    order = np.argsort(ids, kind="stable").astype(np.int64)
    if n > 1 and (ids[order[1:]] == ids[order[:-1]]).any():
        msg = "image_ids repeat an id; pass each image once (ids define the canonical order)"
        raise ValueError(msg)
    return order


def _rank_of(order: np.ndarray) -> np.ndarray:
    """Inverse permutation: ``rank[row]`` = position of ``row`` in ``order``."""
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size, dtype=np.int64)
    return rank


def gather_rows(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``x[rows]`` as float64, read in ascending row order (friendly to memmaps)."""
    srt = np.argsort(rows, kind="stable")
    out = np.empty((rows.size, x.shape[1]), dtype=np.float64)
    out[srt] = np.asarray(x[rows[srt]], dtype=np.float64)
    return out


# --------------------------------------------------------------------------------------------
# The probe
# --------------------------------------------------------------------------------------------


@dataclass
class DensityRatioModel:
    """A fitted, calibrated, cross-fitted probe estimating ``p_unfiltered(x) / p_filtered(x)``.

    Attributes:
        method: ``kept_vs_removed`` or ``unfiltered_vs_filtered`` (see module docstring).
        status: ``fitted``, or ``uniform`` when no ratio could be estimated (see ``reason``).
        reason: Why the status, in a sentence.
        n_unfiltered: Rows of the unfiltered set the model was fitted on.
        n_kept: Kept rows among them.
        prior_kept: ``π_k = n_kept / n_unfiltered``.
        mean: (d,) float64 centre of the embeddings (training sample).
        components: (k, d) float64 PCA components, or None (no reduction; features = centred x).
        feature_scale: Features are ``(x - mean) @ components.T / feature_scale``.
        coef: (n_folds, k) float64 probe weights, one row per fold probe.
        intercept: (n_folds,) float64 probe intercepts.
        platt_a: Calibration slope on the probe logit.
        platt_b: Calibration offset.
        train_rows: (m,) int64 sorted unique rows of the unfiltered set used for training.
        train_fold: (m,) int64 fold of each training row (scored only by that fold's probe).
        n_train_per_class: Rows per class in the balanced training sample.
        C: Inverse L2 strength per training row.
        pca_dim: Requested PCA dimension (None: no PCA).
        explained_variance: Share of the sample's variance the PCA components keep.
        n_folds: Cross-fitting folds.
        seed: Seed of the sampling, fold split and PCA.
        auc: Out-of-fold ROC-AUC of the probe on its balanced sample (0.5 = no signal).
        brier: Out-of-fold Brier score of the calibrated probabilities.
        ece: Expected calibration error (``ECE_BINS`` equal-width bins) of the out-of-fold
            probabilities (the 2-parameter Platt map itself is fitted on those logits).
        calibration: Reliability curve: ``mean_predicted``, ``observed``, ``count`` per bin.
    """

    method: str
    status: str
    reason: str
    n_unfiltered: int
    n_kept: int
    prior_kept: float
    mean: np.ndarray
    components: np.ndarray | None
    feature_scale: float
    coef: np.ndarray
    intercept: np.ndarray
    platt_a: float
    platt_b: float
    train_rows: np.ndarray
    train_fold: np.ndarray
    n_train_per_class: int
    C: float
    pca_dim: int | None
    explained_variance: float | None
    n_folds: int
    seed: int
    auc: float | None = None
    brier: float | None = None
    ece: float | None = None
    calibration: dict[str, list[float]] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        """Embedding dimension the model expects."""
        return int(self.mean.shape[0])

    def features(self, x: np.ndarray) -> np.ndarray:
        """Probe features of embeddings ``x`` ((b, d) → (b, k) float64)."""
        z = np.asarray(x, dtype=np.float64) - self.mean
        if self.components is not None:
            z = z @ self.components.T
        return z / self.feature_scale

    def raw_logit(self, x: np.ndarray, fold: np.ndarray | None = None) -> np.ndarray:
        """Uncalibrated probe logit (positive class: kept, or unfiltered for DALL·E 2's method).

        Args:
            x: (b, d) float embeddings.
            fold: (b,) int64 fold of each row when it was a training row, -1 otherwise; rows
                with a fold are scored by that fold's probe only (out of fold), others by the
                mean logit of all fold probes. None: every row is treated as unseen.

        Returns:
            (b,) float64 logits.
        """
        if self.status != "fitted":
            return np.zeros(x.shape[0], dtype=np.float64)
        logits = self.features(x) @ self.coef.T + self.intercept  # (b, n_folds)
        out = logits.mean(axis=1)
        if fold is not None:
            seen = fold >= 0
            out[seen] = logits[np.flatnonzero(seen), fold[seen]]
        return out

    def log_ratio(self, x: np.ndarray, fold: np.ndarray | None = None) -> np.ndarray:
        """Estimated ``log(p_unfiltered(x) / p_filtered(x))``, prior-corrected, (b,) float64."""
        if self.status != "fitted":
            return np.zeros(x.shape[0], dtype=np.float64)
        cal = np.clip(
            self.platt_a * self.raw_logit(x, fold) + self.platt_b, -_LOGIT_CAP, _LOGIT_CAP
        )
        if self.method == "unfiltered_vs_filtered":
            # Balanced classes: the calibrated odds of "unfiltered" are the ratio itself.
            return cal
        # kept_vs_removed: ratio = π_k + π_r · p_removed(x)/p_kept(x) = π_k + π_r · exp(-cal).
        pk = self.prior_kept
        return np.logaddexp(math.log(pk), math.log1p(-pk) - cal)

    def fold_of(self, rows: np.ndarray) -> np.ndarray:
        """(b,) fold of each unfiltered row index in ``rows`` (-1 when not a training row)."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.train_rows.size == 0:
            return np.full(rows.shape, -1, dtype=np.int64)
        pos = np.searchsorted(self.train_rows, rows)
        pos_c = np.minimum(pos, self.train_rows.size - 1)
        hit = self.train_rows[pos_c] == rows
        return np.where(hit, self.train_fold[pos_c], -1).astype(np.int64)

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable scalars for logs and Dagster metadata."""
        return {
            "method": self.method,
            "status": self.status,
            "reason": self.reason,
            "n_unfiltered": self.n_unfiltered,
            "n_kept": self.n_kept,
            "prior_kept": self.prior_kept,
            "n_train_per_class": self.n_train_per_class,
            "C": self.C,
            "pca_dim": self.pca_dim,
            "explained_variance": self.explained_variance,
            "n_folds": self.n_folds,
            "seed": self.seed,
            "auc": self.auc,
            "brier": self.brier,
            "ece": self.ece,
            "platt_a": self.platt_a,
            "platt_b": self.platt_b,
        }


def _uniform_model(
    method: str, reason: str, n_u: int, n_k: int, d: int, **settings: Any
) -> DensityRatioModel:
    logger.warning("sample weights are uniform: %s", reason)
    return DensityRatioModel(
        method=method,
        status="uniform",
        reason=reason,
        n_unfiltered=n_u,
        n_kept=n_k,
        prior_kept=n_k / n_u if n_u else 0.0,
        mean=np.zeros(d),
        components=None,
        feature_scale=1.0,
        coef=np.zeros((0, d)),
        intercept=np.zeros(0),
        platt_a=1.0,
        platt_b=0.0,
        train_rows=np.zeros(0, np.int64),
        train_fold=np.zeros(0, np.int64),
        n_train_per_class=0,
        explained_variance=None,
        **settings,
    )


def _platt(s: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Fit ``P(y=1) = sigmoid(a·s + b)`` by maximum likelihood (Newton on 2 parameters)."""
    a, b = 1.0, 0.0
    yf = y.astype(np.float64)
    for _ in range(100):
        p = sigmoid(a * s + b)
        g = np.array([np.dot(p - yf, s), np.sum(p - yf)])
        h = p * (1.0 - p)
        hess = np.array([[np.dot(h, s * s), np.dot(h, s)], [np.dot(h, s), np.sum(h)]])
        hess += 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, g)
        # Damped Newton: never move the logit scale by more than 5 at a time.
        scale = max(1.0, float(np.abs(step).max()) / 5.0)
        a, b = a - step[0] / scale, b - step[1] / scale
        if float(np.abs(step).max()) < 1e-10:
            break
    return float(a), float(b)


def _calibration_curve(p: np.ndarray, y: np.ndarray, bins: int) -> tuple[float, dict]:
    idx = np.minimum((p * bins).astype(np.int64), bins - 1)
    count = np.bincount(idx, minlength=bins).astype(np.float64)
    sum_p = np.bincount(idx, weights=p, minlength=bins)
    sum_y = np.bincount(idx, weights=y.astype(np.float64), minlength=bins)
    nz = count > 0
    mean_p = np.where(nz, sum_p / np.maximum(count, 1), np.nan)
    obs = np.where(nz, sum_y / np.maximum(count, 1), np.nan)
    ece = float(np.sum(count[nz] / count.sum() * np.abs(mean_p[nz] - obs[nz])))
    curve = {
        "mean_predicted": [float(v) for v in mean_p[nz]],
        "observed": [float(v) for v in obs[nz]],
        "count": [float(v) for v in count[nz]],
    }
    return ece, curve


def fit_density_ratio(
    x_unfiltered: np.ndarray,
    kept: np.ndarray,
    *,
    method: Method = DEFAULT_METHOD,
    C: float = DEFAULT_C,
    pca_dim: int | None = DEFAULT_PCA_DIM,
    max_train_per_class: int = DEFAULT_MAX_TRAIN_PER_CLASS,
    n_folds: int = DEFAULT_N_FOLDS,
    seed: int = 0,
    image_ids: Sequence[str] | None = None,
) -> DensityRatioModel:
    """Fit the weak, calibrated, cross-fitted probe behind the sample weights.

    Args:
        x_unfiltered: (n, d) float32 embeddings of *all* images (the unfiltered set; a memmap
            is fine, only the training sample is gathered).
        kept: (n,) bool, True for the images that survived filtering and deduplication (the
            filtered set is ``x_unfiltered[kept]``).
        method: ``kept_vs_removed`` (default) or ``unfiltered_vs_filtered`` (DALL·E 2's literal
            formulation); both estimate ``p_u/p_f``, see the module docstring.
        C: Inverse L2 strength per training row (objective ``mean log-loss + ‖β‖²/(2C)``);
            smaller = weaker probe, weights closer to uniform.
        pca_dim: PCA components the probe sees (None or ≥ d: the full, centred embedding).
        max_train_per_class: Cap on the balanced training sample, per class.
        n_folds: Cross-fitting folds (≥ 2).
        seed: Seed of the training sample, the fold split and the randomized PCA.
        image_ids: Optional n unique ids of the rows. When given, the sample, the folds and
            the training order follow ascending id, so the same images in any row order give
            the same model (``train_rows`` still index the caller's rows); else row order is
            the canonical order.

    Returns:
        The model; ``status == "uniform"`` (with a ``reason``) when nothing was removed or a
        class has fewer than :data:`MIN_PER_CLASS` rows — then every ratio is 1.

    Raises:
        ValueError: On malformed inputs or settings (the message names the fix).

    Memory: ``2 · max_train_per_class`` rows of x in float64 plus their features (0.4 GB for
    the default 50 000 per class at d = 512).
    """
    x = check_matrix(x_unfiltered, "x_unfiltered")
    n, d = x.shape
    mask = check_mask(kept, n)
    if method not in METHODS:
        msg = f"method={method!r}: expected one of {METHODS}"
        raise ValueError(msg)
    if not (C > 0 and math.isfinite(C)):
        msg = f"C={C}: expected a positive, finite inverse L2 strength, e.g. {DEFAULT_C}"
        raise ValueError(msg)
    if n_folds < 2:
        msg = f"n_folds={n_folds}: cross-fitting needs at least 2 folds, e.g. 5"
        raise ValueError(msg)
    if max_train_per_class < MIN_PER_CLASS:
        msg = f"max_train_per_class={max_train_per_class}: expected at least {MIN_PER_CLASS}"
        raise ValueError(msg)
    if pca_dim is not None and pca_dim < 1:
        msg = f"pca_dim={pca_dim}: expected a positive number of components or None (no PCA)"
        raise ValueError(msg)
    settings: dict[str, Any] = {"C": C, "pca_dim": pca_dim, "n_folds": n_folds, "seed": seed}

    order = canonical_order(image_ids, n)
    rank = _rank_of(order)
    kept_rows = order[mask[order]]  # canonical order (ascending rows without ids)
    removed_rows = order[~mask[order]]
    n_k, n_r = kept_rows.size, removed_rows.size
    if n_k == 0:
        return _uniform_model(method, "no kept images to weight", n, 0, d, **settings)
    if n_r == 0:
        reason = "nothing was removed: the filtered set is the unfiltered set (ratio 1)"
        return _uniform_model(method, reason, n, n_k, d, **settings)

    rng = np.random.default_rng(seed)
    if method == "kept_vs_removed":
        pos_pool, neg_pool = kept_rows, removed_rows
    else:
        pos_pool, neg_pool = order, kept_rows  # positive = unfiltered
    m = min(max_train_per_class, pos_pool.size, neg_pool.size)
    if m < MIN_PER_CLASS:
        reason = (
            f"only {m} training rows in the smaller class (< {MIN_PER_CLASS}): {n_r} removed "
            f"of {n} images is too few to estimate a density ratio"
        )
        return _uniform_model(method, reason, n, n_k, d, **settings)
    pos = rng.choice(pos_pool, size=m, replace=False)
    neg = rng.choice(neg_pool, size=m, replace=False)
    pos, neg = pos[np.argsort(rank[pos])], neg[np.argsort(rank[neg])]  # canonical order

    # Folds are assigned per *row* of the unfiltered set, so a row sampled into both classes
    # (possible for unfiltered_vs_filtered) is never scored by a probe that saw it. The
    # permutation runs over the training rows in canonical order.
    train_rows = np.union1d(pos, neg)  # ascending row index, for fold_of's searchsorted
    canon_train = train_rows[np.argsort(rank[train_rows])]
    fold_canon = np.empty(train_rows.size, dtype=np.int64)
    fold_canon[rng.permutation(train_rows.size)] = np.arange(train_rows.size) % n_folds
    train_fold = np.empty(train_rows.size, dtype=np.int64)
    train_fold[np.searchsorted(train_rows, canon_train)] = fold_canon

    rows = np.concatenate([pos, neg])
    y = np.concatenate([np.ones(m, np.int8), np.zeros(m, np.int8)])
    by_rank = np.argsort(rank[rows], kind="stable")  # PCA / lbfgs inputs in canonical order
    rows, y = rows[by_rank], y[by_rank]
    xs = gather_rows(x, rows)
    if not np.isfinite(xs).all():
        msg = "x_unfiltered has non-finite values (NaN/inf) in the training sample; re-embed"
        raise ValueError(msg)
    fold = train_fold[np.searchsorted(train_rows, rows)]

    mean = xs.mean(axis=0)
    components: np.ndarray | None = None
    explained: float | None = None
    k = d
    if pca_dim is not None and pca_dim < min(d, xs.shape[0]):
        from sklearn.decomposition import PCA

        pca = PCA(n_components=pca_dim, svd_solver="randomized", random_state=seed)
        pca.fit(xs)
        components = np.asarray(pca.components_, dtype=np.float64)
        mean = np.asarray(pca.mean_, dtype=np.float64)
        explained = float(np.sum(pca.explained_variance_ratio_))
        k = pca_dim
    z = xs - mean
    if components is not None:
        z = z @ components.T
    feature_scale = float(np.sqrt(np.mean(z.var(axis=0)))) or 1.0
    z /= feature_scale

    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    coef = np.zeros((n_folds, k))
    intercept = np.zeros(n_folds)
    oof = np.zeros(rows.size)
    for f in range(n_folds):
        train, test = fold != f, fold == f
        if np.unique(y[train]).size < 2:
            msg = f"fold {f} has a single class in training; use fewer folds"
            raise ValueError(msg)
        clf = LogisticRegression(C=C / int(train.sum()), max_iter=2000)
        clf.fit(z[train], y[train])
        coef[f] = np.asarray(clf.coef_).ravel()
        intercept[f] = float(np.asarray(clf.intercept_).ravel()[0])
        oof[test] = z[test] @ coef[f] + intercept[f]
    a, b = _platt(oof, y)
    p_cal = sigmoid(a * oof + b)
    ece, curve = _calibration_curve(p_cal, y, ECE_BINS)
    model = DensityRatioModel(
        method=method,
        status="fitted",
        reason=f"probe fitted on {m} + {m} rows, {n_folds}-fold cross-fitted",
        n_unfiltered=n,
        n_kept=n_k,
        prior_kept=n_k / n,
        mean=mean,
        components=components,
        feature_scale=feature_scale,
        coef=coef,
        intercept=intercept,
        platt_a=a,
        platt_b=b,
        train_rows=train_rows,
        train_fold=train_fold,
        n_train_per_class=m,
        explained_variance=explained,
        auc=float(roc_auc_score(y, oof)),
        brier=float(np.mean((p_cal - y) ** 2)),
        ece=ece,
        calibration=curve,
        **settings,
    )
    logger.info("density-ratio probe: %s", model.summary())
    return model
