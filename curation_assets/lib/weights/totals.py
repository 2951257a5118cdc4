"""Per-shard sums and the global figures built from them (weights and bias audit, stage 7).

A shard is scored once (:mod:`curation_assets.lib.weights.shards`); what the stage reports about
the whole kept set is then a sum over small per-shard rows, never a pass over every weight:

* :func:`shard_weight_stats` → one :data:`WEIGHT_SHARD_STATS` row (Σw, Σw², min, max, clip
  counts, Σ raw ratio · uniqueness multiplier of the unclipped rows, the uniqueness term and
  its missing count, a :data:`HIST_BINS`-bin log histogram);
  :func:`weight_totals` sums them: mean, ESS (Kish ``(Σw)²/Σw²``, exact), clipped share,
  min/max (exact) and quantiles (from the histogram: to one bin, ``(w_max/w_min)^(1/HIST_BINS)``,
  2.3 % with the default bounds). :func:`rescale_factor` is the closed-form normaliser that
  brings the mean back to 1 from those sums; :func:`~.scale.total_checks`
  are the asset checks.
* :func:`shard_audit_counts` → :data:`AUDIT_SHARD_COUNTS` rows (per attribute value: reference
  n, kept n, Σ weight of the kept); :func:`audit_from_counts` sums them over shards into the
  :data:`BIAS_AUDIT` shares, the same figures as
  :func:`~curation_assets.lib.weights.audit.bias_audit` over all rows at once.

Memory: the per-shard rows (one stats row and ~50 count rows per shard).
"""

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl

from curation_assets.lib.tables import AUDIT_SHARD_COUNTS, BIAS_AUDIT, WEIGHT_SHARD_STATS
from curation_assets.lib.weights.audit import MISSING

HIST_BINS = 200
"""Log-spaced weight bins over ``[w_min, w_max]`` stored per shard."""
DISPLAY_BINS = 20
"""Bins of the histogram shown in metadata (``HIST_BINS / DISPLAY_BINS`` stored bins each)."""
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


def hist_edges(w_min: float, w_max: float, bins: int = HIST_BINS) -> np.ndarray:
    """(bins + 1,) log-spaced edges over ``[w_min, w_max]`` (one tiny bin when they are equal)."""
    if w_max <= w_min:
        return np.array([w_min * 0.999, w_max * 1.001])
    return np.geomspace(w_min, w_max, bins + 1)


def shard_weight_stats(
    shard: str,
    *,
    weight: np.ndarray,
    raw_ratio: np.ndarray,
    clipped_low: np.ndarray,
    clipped_high: np.ndarray,
    n_reference: int,
    scale: float,
    w_min: float,
    w_max: float,
    probe_id: str,
    model_id: str,
    multiplier: np.ndarray | None = None,
    uniqueness: Mapping[str, float] | None = None,
    uniqueness_missing: np.ndarray | None = None,
) -> dict[str, Any]:
    """One :data:`WEIGHT_SHARD_STATS` row from a shard's kept rows.

    Args:
        shard: The shard.
        weight: (m,) float64 weights of the shard's kept rows, in canonical (image id) order.
        raw_ratio: (m,) float64 raw ratios of those rows.
        clipped_low: (m,) bool, ``scale · raw_ratio < w_min``.
        clipped_high: (m,) bool, ``scale · raw_ratio > w_max``.
        n_reference: Reference images of the shard.
        scale: The normaliser the weights were made with.
        w_min: Lower bound.
        w_max: Upper bound.
        probe_id: The probe that scored the shard.
        model_id: The embedding model of the shard.
        multiplier: (m,) float64 uniqueness multipliers ``m`` of those rows (the scale
            multiplies ``raw_ratio · m``); None: the term is off (m = 1).
        uniqueness: The term's ``power``, ``floor``, ``reference`` (with ``multiplier``).
        uniqueness_missing: (m,) bool, rows without a uniqueness score (with ``multiplier``).
    """
    w = np.asarray(weight, dtype=np.float64)
    ratio = np.asarray(raw_ratio, dtype=np.float64)
    scaled = ratio if multiplier is None else ratio * np.asarray(multiplier, np.float64)
    edges = hist_edges(w_min, w_max)
    bins = edges.size - 1
    idx = np.clip(np.searchsorted(edges, w, side="right") - 1, 0, bins - 1)
    mid = ~(clipped_low | clipped_high)
    return {
        "shard": shard,
        "probe_id": probe_id,
        "model_id": model_id,
        "scale": float(scale),
        "n_reference": int(n_reference),
        "n_kept": int(w.size),
        "weight_sum": float(np.sum(w)),
        "weight_sq_sum": float(np.dot(w, w)),
        "weight_min": float(w.min()) if w.size else None,
        "weight_max": float(w.max()) if w.size else None,
        "n_bad": int(np.sum(~(np.isfinite(w) & (w > 0)))),
        "n_clipped_low": int(np.sum(clipped_low)),
        "n_clipped_high": int(np.sum(clipped_high)),
        "ratio_sum_unclipped": float(np.sum(scaled[mid])),
        "raw_ratio_sum": float(np.sum(ratio)),
        "histogram": np.bincount(idx, minlength=bins).astype(np.int64).tolist(),
        **_uniqueness_stats(multiplier, uniqueness, uniqueness_missing),
    }


def _uniqueness_stats(
    multiplier: np.ndarray | None,
    uniqueness: Mapping[str, float] | None,
    missing: np.ndarray | None,
) -> dict[str, Any]:
    """The stats row's uniqueness columns (nulls when the term is off)."""
    if multiplier is None or uniqueness is None:
        return {c: None for c in UNIQUENESS_STATS}
    miss = np.zeros(len(multiplier), bool) if missing is None else np.asarray(missing, bool)
    return {
        "uniqueness_power": float(uniqueness["power"]),
        "uniqueness_floor": float(uniqueness["floor"]),
        "uniqueness_reference": float(uniqueness["reference"]),
        "n_uniqueness_missing": int(miss.sum()),
        "uniqueness_multiplier_sum": float(np.sum(np.asarray(multiplier)[~miss])),
    }


UNIQUENESS_STATS = (
    "uniqueness_power",
    "uniqueness_floor",
    "uniqueness_reference",
    "n_uniqueness_missing",
    "uniqueness_multiplier_sum",
)
"""The :data:`WEIGHT_SHARD_STATS` columns of the uniqueness term (added after the others)."""


def upgrade_stats(stats: pl.DataFrame) -> pl.DataFrame:
    """Committed stats rows in the current schema.

    Columns a table written before they existed lacks (the uniqueness term's) are added as
    nulls ("not used").
    """
    missing = [c for c in WEIGHT_SHARD_STATS.columns if c.name not in stats.columns]
    if not missing:
        return stats
    return WEIGHT_SHARD_STATS.conform(
        stats.with_columns(pl.lit(None, c.dtype).alias(c.name) for c in missing)
    )


def stats_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """:data:`WEIGHT_SHARD_STATS` rows as a frame of the table's schema."""
    if not rows:
        return WEIGHT_SHARD_STATS.empty()
    return WEIGHT_SHARD_STATS.conform(pl.DataFrame(rows, schema=WEIGHT_SHARD_STATS.schema))


def weight_totals(stats: pl.DataFrame, *, w_min: float, w_max: float) -> dict[str, Any]:
    """The kept set's weight figures from its per-shard rows (sums in shard order).

    Returns:
        JSON-compatible dict: ``n, n_reference, mean, ess, ess_ratio, min, max, n_bad,
        clipped_share, raw_ratio_mean, p01 … p99`` (quantiles to one histogram bin) and
        ``histogram`` (``edges``, ``counts`` of :data:`DISPLAY_BINS` log bins over
        ``[w_min, w_max]``). Undefined figures (no kept row) are None.
    """
    s = stats.sort("shard")
    n = int(s["n_kept"].sum())
    out: dict[str, Any] = {"n": n, "n_reference": int(s["n_reference"].sum())}
    fine_edges = hist_edges(w_min, w_max)
    step = max(1, (fine_edges.size - 1) // DISPLAY_BINS)
    if n == 0:
        out.update({k: None for k in ("mean", "ess", "ess_ratio", "min", "max")})
        out.update({f"p{round(q * 100):02d}": None for q in QUANTILES})
        out.update({"n_bad": 0, "clipped_share": None, "raw_ratio_mean": None})
        out["histogram"] = {"edges": [float(e) for e in fine_edges[::step]], "counts": []}
        return out
    total = math.fsum(s["weight_sum"].to_list())
    sq = math.fsum(s["weight_sq_sum"].to_list())
    counts = np.sum(np.asarray(s["histogram"].to_list(), dtype=np.int64), axis=0)
    ess = total * total / sq if sq > 0 else 0.0
    clipped = int(s.select((pl.col("n_clipped_low") + pl.col("n_clipped_high")).sum()).item())
    out.update(
        {
            "mean": total / n,
            "ess": ess,
            "ess_ratio": ess / n,
            "min": float(s["weight_min"].min()),  # type: ignore[arg-type]
            "max": float(s["weight_max"].max()),  # type: ignore[arg-type]
            "n_bad": int(s["n_bad"].sum()),
            "clipped_share": clipped / n,
            "raw_ratio_mean": math.fsum(s["raw_ratio_sum"].to_list()) / n,
        }
    )
    out.update(_uniqueness_totals(s, n))
    cum = np.cumsum(counts)
    for q in QUANTILES:
        b = int(np.searchsorted(cum, q * n, side="left"))
        b = min(b, counts.size - 1)
        out[f"p{round(q * 100):02d}"] = float(math.sqrt(fine_edges[b] * fine_edges[b + 1]))
    shown = [int(counts[i : i + step].sum()) for i in range(0, counts.size, step)]
    out["histogram"] = {"edges": [float(e) for e in fine_edges[::step]], "counts": shown}
    return out


def _uniqueness_totals(stats: pl.DataFrame, n: int) -> dict[str, Any]:
    """``uniqueness_missing`` and ``uniqueness_multiplier_mean`` (over the rows with a score).

    Only when the shards were weighted with the uniqueness term; nothing otherwise.
    """
    if "n_uniqueness_missing" not in stats.columns:
        return {}
    used = stats.filter(pl.col("n_uniqueness_missing").is_not_null())
    if used.is_empty():
        return {}
    missing = int(used["n_uniqueness_missing"].sum())
    scored = n - missing
    total = math.fsum(used["uniqueness_multiplier_sum"].to_list())
    return {
        "uniqueness_missing": missing,
        "uniqueness_multiplier_mean": total / scored if scored > 0 else None,
    }


def rescale_factor(stats: pl.DataFrame, *, w_min: float, w_max: float) -> float | None:
    """The scale that brings the mean weight to 1, from the per-shard sums (closed form).

    With ``L`` rows clipped low, ``H`` high and ``R`` the raw-ratio sum of the others, the
    scale keeping that partition with mean 1 is ``(n − w_min·L − w_max·H) / R`` — the last step
    of :func:`~curation_assets.lib.weights.scale.clip_normalize`. Rows that cross a bound under
    the new scale move the mean by at most ``(w_max − w_min) / n`` each, so after re-scoring the
    mean is 1 up to those rows (the stage measures it again and reports it).

    Returns:
        The new scale, or None when it is undefined (no kept row, or every row clipped).

    Raises:
        ValueError: If the shards were scored with different scales (a torn state: re-score).
    """
    if stats.is_empty() or int(stats["n_kept"].sum()) == 0:
        return None
    scales = stats.filter(pl.col("n_kept") > 0)["scale"].unique()
    if scales.len() != 1:
        msg = (
            f"shards were scored with {scales.len()} different scales; a consistent rescale "
            "needs one (re-score every shard: config mode=full)"
        )
        raise ValueError(msg)
    n = int(stats["n_kept"].sum())
    low, high = int(stats["n_clipped_low"].sum()), int(stats["n_clipped_high"].sum())
    r_mid = math.fsum(stats["ratio_sum_unclipped"].to_list())
    target = n - w_min * low - w_max * high
    if r_mid <= 0 or target <= 0:
        return None
    return target / r_mid


# --------------------------------------------------------------------------------------------
# Audit counts
# --------------------------------------------------------------------------------------------


def _split_name(col: str) -> tuple[str, str]:
    attribute, sep, value = col.partition(":")
    return (attribute, value) if sep else (col, "true")


def shard_audit_counts(
    shard: str, attributes: pl.DataFrame, kept: np.ndarray, weight: np.ndarray
) -> pl.DataFrame:
    """:data:`AUDIT_SHARD_COUNTS` rows of one shard.

    Args:
        shard: The shard.
        attributes: One row per reference image of the shard: ``image_id`` + attribute columns
            (:func:`~curation_assets.lib.weights.audit.audit_attributes`), canonical order.
        kept: (n,) bool, aligned with ``attributes``.
        weight: (n,) float64 weight of each row (0 where not kept).

    Returns:
        Per Boolean attribute two rows (``hit`` True and False, non-null rows only, written
        even when zero so a shard with no caption still counts); per categorical attribute one
        row per value (null is :data:`~curation_assets.lib.weights.audit.MISSING`).
    """
    kept = np.asarray(kept, dtype=bool)
    w = np.where(kept, np.asarray(weight, dtype=np.float64), 0.0)
    cols: dict[str, list] = {
        k: [] for k in ("attribute", "value", "hit", "n_unfiltered", "n_filtered", "weight_sum")
    }

    def add(attribute: str, value: str, hit: bool | None, sel: np.ndarray) -> None:
        cols["attribute"].append(attribute)
        cols["value"].append(value)
        cols["hit"].append(hit)
        cols["n_unfiltered"].append(int(sel.sum()))
        cols["n_filtered"].append(int((sel & kept).sum()))
        cols["weight_sum"].append(float(np.sum(w[sel])))

    for col in attributes.columns:
        if col == "image_id":
            continue
        series = attributes[col]
        if series.dtype == pl.Boolean:
            attribute, value = _split_name(col)
            present = series.is_not_null().to_numpy()
            truth = series.fill_null(False).to_numpy().astype(bool)
            add(attribute, value, True, present & truth)
            add(attribute, value, False, present & ~truth)
        else:
            # each value's rows by an integer code (sorted values: np.unique's order), not by
            # comparing numpy strings (26 ms a shard at 1M rows, most of a patched shard's cost)
            values = series.cast(pl.String).fill_null(MISSING).rename("v")
            uniq = values.unique().sort()
            codes = (
                values.to_frame()
                .join(
                    uniq.to_frame().with_row_index("code"),
                    on="v",
                    how="left",
                    maintain_order="left",
                )["code"]
                .to_numpy()
            )
            for k, v in enumerate(uniq.to_list()):
                add(col, str(v), None, codes == k)
    frame = pl.DataFrame(
        cols, schema={k: v for k, v in AUDIT_SHARD_COUNTS.schema.items() if k != "shard"}
    )
    return AUDIT_SHARD_COUNTS.conform(frame.with_columns(shard=pl.lit(shard)))


def audit_from_counts(counts: pl.DataFrame) -> pl.DataFrame:
    """The :data:`BIAS_AUDIT` table from per-shard counts (their sum over shards).

    Shares are defined as in :func:`~curation_assets.lib.weights.audit.bias_audit`: a
    categorical value's share among all rows; a Boolean's share of True among non-null rows;
    weighted shares over Σ weight. Sorted by attribute, then unfiltered share descending.
    """
    if counts.is_empty():
        return BIAS_AUDIT.empty()
    keys = ["attribute", "value", "hit"]
    summed = (
        counts.sort([*keys, "shard"], nulls_last=True)
        .group_by(keys, maintain_order=True)
        .agg(pl.col("n_unfiltered").sum(), pl.col("n_filtered").sum(), pl.col("weight_sum").sum())
    )
    boolean = summed.filter(pl.col("hit").is_not_null())
    categorical = summed.filter(pl.col("hit").is_null())
    frames = []
    if categorical.height:
        den = pl.col("attribute")
        frames.append(
            categorical.with_columns(
                _share("n_unfiltered", den),
                _share("n_filtered", den),
                _share("weight_sum", den),
            ).select(_audit_columns())
        )
    if boolean.height:
        den = ["attribute", "value"]
        frames.append(
            boolean.with_columns(
                _share("n_unfiltered", den),
                _share("n_filtered", den),
                _share("weight_sum", den),
            )
            .filter(pl.col("hit"))
            .select(_audit_columns())
        )
    out = pl.concat(frames, how="vertical_relaxed").with_columns(
        ((pl.col("share_filtered") - pl.col("share_unfiltered")) * 100).alias("shift_filtered_pts"),
        ((pl.col("share_weighted") - pl.col("share_unfiltered")) * 100).alias("shift_weighted_pts"),
    )
    return BIAS_AUDIT.conform(out).sort(
        ["attribute", "share_unfiltered", "value"], descending=[False, True, False]
    )


def _share(col: str, over: pl.Expr | list[str]) -> pl.Expr:
    total = pl.col(col).sum().over(over).cast(pl.Float64)
    return (
        pl.when(total > 0)
        .then(pl.col(col).cast(pl.Float64) / total)
        .otherwise(None)
        .alias(f"__share_{col}")
    )


def _audit_columns() -> list[pl.Expr]:
    return [
        pl.col("attribute"),
        pl.col("value"),
        pl.col("__share_n_unfiltered").alias("share_unfiltered"),
        pl.col("__share_n_filtered").alias("share_filtered"),
        pl.col("__share_weight_sum").alias("share_weighted"),
        pl.col("n_unfiltered"),
        pl.col("n_filtered"),
    ]
