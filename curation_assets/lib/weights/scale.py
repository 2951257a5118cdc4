"""From density ratios to sample weights: bounded, mean 1, described and checked (stage 7).

:func:`sample_weights` scores every kept image with the probe of
:mod:`curation_assets.lib.weights.fit` (out of fold where it was a training row) and turns the
ratios into the weights written to :data:`SAMPLE_WEIGHTS`; :func:`weight_stats` describes them
for metadata and :func:`weight_checks` are the invariants the asset checks assert.

**Clip, then normalise, to a fixed point.** Weights must lie in ``[w_min, w_max]`` *and* have
mean 1. Clipping then normalising can push weights past the bounds again; instead
:func:`clip_normalize` solves for the scale ``s`` with ``mean(clip(s · ratio, w_min, w_max)) =
1`` (the fixed point of alternately clipping and normalising), so the final weights satisfy
both exactly. It exists whenever ``w_min ≤ 1 ≤ w_max``.

Memory: one batch of ``batch_size`` rows at a time; the (n, d) input may be a memmap and is
never copied whole. Determinism: rows are scored in batches of the canonical order and every
sum runs in that order (see :mod:`curation_assets.lib.weights.fit`).
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from curation_assets.lib.tables import SAMPLE_WEIGHTS
from curation_assets.lib.weights.fit import (
    DensityRatioModel,
    canonical_order,
    check_mask,
    check_matrix,
    gather_rows,
    sigmoid,
)

DEFAULT_W_MIN = 0.1
DEFAULT_W_MAX = 10.0
DEFAULT_MIN_ESS_RATIO = 0.5
DEFAULT_BATCH_SIZE = 65_536
HISTOGRAM_BINS = 20
MEAN_ATOL = 1e-6
"""Tolerance of the "mean weight is 1" check."""


def _check_bounds(w_min: float, w_max: float) -> None:
    if not (0.0 < w_min <= 1.0 <= w_max and math.isfinite(w_max)):
        msg = (
            f"w_min={w_min}, w_max={w_max}: expected 0 < w_min <= 1 <= w_max < inf (weights "
            "are scaled to mean 1, so the bounds must bracket 1), e.g. w_min=0.1, w_max=10"
        )
        raise ValueError(msg)


# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------


def clip_normalize(
    raw: np.ndarray, w_min: float = DEFAULT_W_MIN, w_max: float = DEFAULT_W_MAX
) -> tuple[np.ndarray, np.ndarray, float]:
    """Scale and clip positive ratios to weights with mean exactly 1 inside ``[w_min, w_max]``.

    Finds the scale ``s`` with ``mean(clip(s · raw, w_min, w_max)) = 1``: the fixed point of
    alternately clipping and re-normalising. ``g(s) = mean(clip(s · raw))`` is continuous and
    non-decreasing, from ``w_min`` (s → 0) to ``w_max`` (s → ∞), so the root exists whenever
    ``w_min ≤ 1 ≤ w_max``; it is bracketed by bisection and then solved in closed form on the
    resulting partition into low-clipped / unclipped / high-clipped rows, so the mean is 1 to
    float64 rounding and no weight leaves the bounds. The order of the ratios is preserved.

    Args:
        raw: (n,) positive, finite ratios.
        w_min: Lower bound, in (0, 1].
        w_max: Upper bound, ≥ 1.

    Returns:
        ``(weights, clipped, scale)``: (n,) float64 weights, (n,) bool (True where ``s · raw``
        was outside the bounds), and ``s``.

    Raises:
        ValueError: On non-positive / non-finite ratios or bounds that do not bracket 1.
    """
    _check_bounds(w_min, w_max)
    r = np.asarray(raw, dtype=np.float64)
    if r.ndim != 1:
        msg = f"raw ratios have shape {r.shape}; expected (n,)"
        raise ValueError(msg)
    if r.size == 0:
        return np.zeros(0), np.zeros(0, dtype=bool), 1.0
    if not (np.isfinite(r).all() and (r > 0).all()):
        bad = int(np.sum(~(np.isfinite(r) & (r > 0))))
        msg = f"{bad} raw ratios are not positive and finite; they must be density ratios > 0"
        raise ValueError(msg)

    def g(s: float) -> float:
        return float(np.clip(s * r, w_min, w_max).mean())

    lo, hi = w_min / float(r.max()), w_max / float(r.min())  # g(lo) = w_min, g(hi) = w_max
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if g(mid) < 1.0:
            lo = mid
        else:
            hi = mid
        if hi / lo - 1.0 < 1e-15:
            break
    s = hi
    scaled = s * r
    low, high = scaled < w_min, scaled > w_max
    middle = ~(low | high)
    mid_sum = float(r[middle].sum())
    if mid_sum > 0:
        s_exact = (r.size - w_min * int(low.sum()) - w_max * int(high.sum())) / mid_sum
        if s_exact > 0:
            s = s_exact
            scaled = s * r
    w = np.clip(scaled, w_min, w_max)
    clipped = (scaled < w_min) | (scaled > w_max)
    return w, clipped, float(s)


def effective_sample_size(w: np.ndarray) -> float:
    """Kish's effective sample size ``(Σw)² / Σw²`` of weights ``w`` ((n,) ≥ 0)."""
    w = np.asarray(w, dtype=np.float64)
    s2 = float(np.dot(w, w))
    return float(w.sum()) ** 2 / s2 if s2 > 0 else 0.0


def weight_stats(
    w: np.ndarray, clipped: np.ndarray | None = None, *, bins: int = HISTOGRAM_BINS
) -> dict[str, Any]:
    """Distribution of weights for metadata: ESS, share clipped, quantiles, histogram.

    Args:
        w: (n,) weights.
        clipped: (n,) bool clipped flags (optional).
        bins: Histogram bins, log-spaced between the smallest and largest weight.

    Returns:
        JSON-serialisable dict: ``n, mean, std, min, max, p01 … p99, ess, ess_ratio,
        clipped_share`` (None without flags) and ``histogram`` (``edges``, ``counts``).
        Undefined values (n = 0) are None.
    """
    w = np.asarray(w, dtype=np.float64)
    n = int(w.size)
    qs = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
    out: dict[str, Any] = {"n": n}
    if n == 0:
        out.update({k: None for k in ("mean", "std", "min", "max", "ess", "ess_ratio")})
        out.update({f"p{round(q * 100):02d}": None for q in qs})
        out["clipped_share"] = None
        out["histogram"] = {"edges": [], "counts": []}
        return out
    ess = effective_sample_size(w)
    out.update(
        {
            "mean": float(w.mean()),
            "std": float(w.std()),
            "min": float(w.min()),
            "max": float(w.max()),
            "ess": ess,
            "ess_ratio": ess / n,
        }
    )
    for q, v in zip(qs, np.quantile(w, qs), strict=True):
        out[f"p{round(q * 100):02d}"] = float(v)
    out["clipped_share"] = (
        float(np.mean(np.asarray(clipped, dtype=bool))) if clipped is not None else None
    )
    positive = w[w > 0]
    if positive.size and float(positive.min()) < float(positive.max()):
        edges = np.geomspace(float(positive.min()), float(positive.max()), bins + 1)
    else:
        v = float(positive[0]) if positive.size else 1.0
        edges = np.array([v * 0.999, v * 1.001])
    counts, _ = np.histogram(np.clip(w, edges[0], edges[-1]), bins=edges)
    out["histogram"] = {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}
    return out


@dataclass
class SampleWeights:
    """Weights of the kept images, in the order of ``rows``.

    Attributes:
        rows: (m,) int64 rows of the unfiltered set (the kept rows, ascending).
        raw_ratio: (m,) float64 estimated ``p_u(x)/p_f(x)`` (mean ≈ 1 when calibrated).
        p_kept: (m,) float64 estimated ``P(kept | x)``.
        p_unfiltered: (m,) float64 ``raw / (1 + raw)``.
        weight: (m,) float64 final weights (mean 1, within bounds).
        clipped: (m,) bool, True where the scaled ratio was clipped.
        scale: The factor applied to ``raw_ratio`` before clipping.
        w_min: Lower bound used.
        w_max: Upper bound used.
        stats: :func:`weight_stats` of ``weight`` plus ``raw_ratio_mean`` and ``scale``.
    """

    rows: np.ndarray
    raw_ratio: np.ndarray
    p_kept: np.ndarray
    p_unfiltered: np.ndarray
    weight: np.ndarray
    clipped: np.ndarray
    scale: float
    w_min: float
    w_max: float
    stats: dict[str, Any]

    def frame(self, image_ids: Sequence[str], shards: Sequence[str]) -> pl.DataFrame:
        """:data:`SAMPLE_WEIGHTS` rows, given the ids and shards of the kept rows (in order).

        Raises:
            ValueError: If the lengths differ from the number of kept rows.
        """
        m = int(self.rows.size)
        if len(image_ids) != m or len(shards) != m:
            msg = (
                f"got {len(image_ids)} image_ids and {len(shards)} shards for {m} weighted "
                "rows; pass those of x_unfiltered[kept], in row order"
            )
            raise ValueError(msg)
        return SAMPLE_WEIGHTS.conform(
            pl.DataFrame(
                {
                    "image_id": list(image_ids),
                    "shard": list(shards),
                    "weight": self.weight,
                    "raw_ratio": self.raw_ratio,
                    "p_unfiltered": self.p_unfiltered,
                    "p_kept": self.p_kept,
                    "clipped": self.clipped,
                },
                schema_overrides={"image_id": pl.String, "shard": pl.String},
            )
        )


def sample_weights(
    model: DensityRatioModel,
    x_unfiltered: np.ndarray,
    kept: np.ndarray,
    *,
    w_min: float = DEFAULT_W_MIN,
    w_max: float = DEFAULT_W_MAX,
    batch_size: int = DEFAULT_BATCH_SIZE,
    image_ids: Sequence[str] | None = None,
) -> SampleWeights:
    """Weights for every kept row: out-of-fold density ratio, clipped and scaled to mean 1.

    Rows the probe was trained on are scored by the fold probe that did not see them; the
    others by all fold probes (mean logit). See :func:`clip_normalize` for the bounds.
    Rows are scored in batches of the canonical order and the normalising sums run in that
    order, so with ``image_ids`` every image gets the same bits in any row order.

    Args:
        model: From :func:`fit_density_ratio` on the same ``x_unfiltered`` and ``kept``.
        x_unfiltered: (n, d) float32 embeddings of all images (memmap fine).
        kept: (n,) bool mask of the kept rows.
        w_min: Lower weight bound, in (0, 1].
        w_max: Upper weight bound, ≥ 1.
        batch_size: Rows scored at a time (memory ``batch_size · d · 8`` bytes).
        image_ids: Optional n unique ids of the rows (the canonical order, as in
            :func:`fit_density_ratio`); else row order.

    Returns:
        :class:`SampleWeights` for ``np.flatnonzero(kept)`` (ascending rows).

    Raises:
        ValueError: If the inputs do not match the model or the bounds do not bracket 1.
    """
    _check_bounds(w_min, w_max)
    x = check_matrix(x_unfiltered, "x_unfiltered")
    mask = check_mask(kept, x.shape[0])
    if x.shape[0] != model.n_unfiltered or int(mask.sum()) != model.n_kept:
        msg = (
            f"the model was fitted on {model.n_unfiltered} rows with {model.n_kept} kept, but "
            f"got {x.shape[0]} rows with {int(mask.sum())} kept; refit on these embeddings"
        )
        raise ValueError(msg)
    if model.status == "fitted" and x.shape[1] != model.dim:
        msg = f"x_unfiltered has dim {x.shape[1]} but the model expects {model.dim}; refit"
        raise ValueError(msg)
    if batch_size < 1:
        msg = f"batch_size={batch_size}: expected a positive number of rows"
        raise ValueError(msg)
    order = canonical_order(image_ids, x.shape[0])
    canon = order[mask[order]].astype(np.int64)  # kept rows in canonical order
    log_r = np.zeros(canon.size)
    for start in range(0, canon.size, batch_size):
        idx = canon[start : start + batch_size]
        xb = gather_rows(x, idx)
        if not np.isfinite(xb).all():
            msg = f"x_unfiltered has non-finite values in rows {idx.min()}..{idx.max()}; re-embed"
            raise ValueError(msg)
        log_r[start : start + idx.size] = model.log_ratio(xb, model.fold_of(idx))
    raw = np.exp(log_r)
    weight, clipped, scale = clip_normalize(raw, w_min, w_max)
    stats = weight_stats(weight, clipped)
    stats["raw_ratio_mean"] = float(raw.mean()) if raw.size else None
    stats["scale"] = scale
    stats["w_min"] = w_min
    stats["w_max"] = w_max
    back = np.argsort(canon, kind="stable")  # canonical → ascending row order
    rows, log_r, raw = canon[back], log_r[back], raw[back]
    weight, clipped = weight[back], clipped[back]
    return SampleWeights(
        rows=rows,
        raw_ratio=raw,
        p_kept=np.minimum(1.0, model.prior_kept / raw) if raw.size else raw,
        p_unfiltered=sigmoid(log_r),
        weight=weight,
        clipped=clipped,
        scale=scale,
        w_min=w_min,
        w_max=w_max,
        stats=stats,
    )


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightCheck:
    """One invariant of the weights, for a Dagster asset check.

    Attributes:
        name: Check name (snake_case).
        passed: Whether it holds.
        description: What was checked and the observed value, in a sentence.
        value: The observed value (JSON-serialisable), or None.
    """

    name: str
    passed: bool
    description: str
    value: float | int | None = None


def weight_checks(
    w: np.ndarray,
    *,
    min_ess_ratio: float = DEFAULT_MIN_ESS_RATIO,
    w_min: float | None = None,
    w_max: float | None = None,
    mean_atol: float = MEAN_ATOL,
) -> list[WeightCheck]:
    """:func:`total_checks` for weights held in memory.

    Args:
        w: (n,) final weights.
        min_ess_ratio: Smallest acceptable ``ESS / n`` (in (0, 1]).
        w_min: Lower bound to verify (None: not checked).
        w_max: Upper bound to verify (None: not checked).
        mean_atol: Tolerance of ``|mean - 1|``.

    Raises:
        ValueError: If ``min_ess_ratio`` is not in (0, 1].
    """
    w = np.asarray(w, dtype=np.float64)
    good = np.isfinite(w) & (w > 0)
    bad = int(w.size - np.count_nonzero(good))
    fine = bad == 0 and w.size > 0
    totals = {
        "n": int(w.size),
        "n_bad": bad,
        "mean": float(np.mean(w)) if fine else float("nan"),
        "ess_ratio": effective_sample_size(w) / w.size if fine else float("nan"),
        "min": float(np.min(w[good])) if good.any() else float("nan"),
        "max": float(np.max(w[good])) if good.any() else float("nan"),
    }
    return total_checks(
        totals, min_ess_ratio=min_ess_ratio, w_min=w_min, w_max=w_max, mean_tolerance=mean_atol
    )


def total_checks(
    totals: Mapping[str, Any],
    *,
    min_ess_ratio: float,
    w_min: float | None,
    w_max: float | None,
    mean_tolerance: float,
) -> list[WeightCheck]:
    """The weight-sanity checks from the kept set's totals (no pass over the weights).

    ``totals`` holds ``n, n_bad, mean, ess_ratio, min, max``: from the per-shard sums
    (:func:`~curation_assets.lib.weights.totals.weight_totals`, what the asset checks) or from
    weights in memory (:func:`weight_checks`). Checks ``weights_finite_positive``,
    ``weights_mean_one`` (``|mean − 1| ≤ mean_tolerance``; the stage rescales every shard
    before it lets the mean drift further), ``weights_within_bounds`` (None: that side is not
    checked) and ``weights_ess_ratio``; with no kept image every check passes and says so.

    Raises:
        ValueError: If ``min_ess_ratio`` is not in (0, 1] or ``mean_tolerance`` negative.
    """
    if not 0.0 < min_ess_ratio <= 1.0:
        msg = f"min_ess_ratio={min_ess_ratio}: expected a fraction in (0, 1], e.g. 0.5"
        raise ValueError(msg)
    if not mean_tolerance >= 0:
        msg = f"mean_tolerance={mean_tolerance}: expected a tolerance >= 0, e.g. 0.01"
        raise ValueError(msg)
    n = int(totals["n"])
    if n == 0:
        names = ("finite_positive", "mean_one", "within_bounds", "ess_ratio")
        return [
            WeightCheck(f"weights_{k}", True, "no kept images: nothing to check") for k in names
        ]
    bad = int(totals["n_bad"])
    mean, ratio = float(totals["mean"]), float(totals["ess_ratio"])
    lo, hi = float(totals["min"]), float(totals["max"])
    eps = 1e-12
    low = -math.inf if w_min is None else w_min * (1 - eps)
    high = math.inf if w_max is None else w_max * (1 + eps)
    outside = lo < low or hi > high
    return [
        WeightCheck(
            "weights_finite_positive",
            bad == 0,
            f"{bad} of {n} weights are non-finite or ≤ 0 (expected none).",
            bad,
        ),
        WeightCheck(
            "weights_mean_one",
            bad == 0 and abs(mean - 1.0) <= mean_tolerance,
            f"mean weight {mean:.9f} (expected 1 ± {mean_tolerance:g}, from per-shard sums).",
            mean if math.isfinite(mean) else None,
        ),
        WeightCheck(
            "weights_within_bounds",
            not outside and bad == 0,
            f"weights span [{lo:.6g}, {hi:.6g}] (expected within [{low:g}, {high:g}]).",
            int(outside),
        ),
        WeightCheck(
            "weights_ess_ratio",
            bad == 0 and ratio >= min_ess_ratio,
            f"effective sample size is {ratio:.3f} of n={n} (floor {min_ess_ratio:g}); a low "
            "ratio means few images carry the weight: lower w_max or C.",
            ratio if math.isfinite(ratio) else None,
        ),
    ]
