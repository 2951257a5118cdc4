"""Measure pipeline outputs against the demo corpus's planted ground truth."""

from typing import Any

import polars as pl

from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import (
    DUPLICATE_FILES,
    FILTER_REJECTIONS,
    FILTERED_IMAGES,
    QUARANTINE,
    RAW_IMAGES,
)

# Ground-truth corruption kind -> the quarantine reason ingest should give it.
EXPECTED_REASON = {
    "truncated": "truncated",
    "zero_byte": "zero_byte",
    "not_an_image": "not_an_image",
    "missing_file": "missing_file",
    "orphan_sidecar": "orphan_sidecar",
    "decompression_bomb": "decompression_bomb",
}


def evaluate_ingest(gt: pl.DataFrame, store: DeltaStore) -> dict[str, Any]:
    """Compare ingest tables with the ground truth.

    Args:
        gt: One row per planted input with ``source_uri``, ``kind`` (original,
            near_duplicate, exact_duplicate, corrupt), ``corrupt`` and ``duplicate_of``.
        store: Where ``raw_images``, ``quarantine`` and ``exact_duplicates`` were written.

    Returns:
        Counts: inputs traced to exactly one table, corrupt inputs quarantined (and with the
        expected reason), clean inputs wrongly quarantined, exact-duplicate groups collapsed
        to exactly one kept row.
    """
    raw = store.read(RAW_IMAGES, columns=["source_uri", "image_id"]).with_columns(
        table=pl.lit("raw_images")
    )
    quarantine = store.read(QUARANTINE, columns=["source_uri", "image_id", "reason"])
    dups = store.read(DUPLICATE_FILES, columns=["source_uri", "image_id"]).with_columns(
        table=pl.lit("exact_duplicates")
    )
    located = pl.concat(
        [
            raw,
            quarantine.select("source_uri", "image_id", table=pl.lit("quarantine")),
            dups,
        ]
    )
    # A manifest may list one file twice: compare occurrence counts per source_uri.
    per_uri = located.group_by("source_uri").agg(pl.len().alias("n"), pl.first("table"))
    gt_per_uri = gt.group_by("source_uri").agg(pl.len().alias("n_gt"))
    traced = gt.join(per_uri, on="source_uri", how="left").join(
        gt_per_uri, on="source_uri", how="left"
    )
    corrupt = gt.filter(pl.col("kind") == "corrupt").join(
        quarantine.unique("source_uri"), on="source_uri", how="left"
    )
    expected = corrupt["corrupt"].replace_strict(EXPECTED_REASON, default=None)
    clean = traced.filter(pl.col("kind") != "corrupt")
    # An exact-duplicate group = an original and its byte-identical copies.
    copies = gt.filter(pl.col("kind") == "exact_duplicate")
    groups = pl.concat(
        [
            copies.select(pl.col("duplicate_of").alias("group"), "source_uri"),
            copies.select(
                pl.col("duplicate_of").alias("group"), pl.col("duplicate_of").alias("source_uri")
            ),
        ]
    ).unique()
    group_tables = (
        groups.join(per_uri, on="source_uri", how="left")
        .group_by("group")
        .agg(
            (pl.col("table") == "raw_images").sum().alias("kept"),
            (pl.col("table") == "exact_duplicates").sum().alias("collapsed"),
            pl.len().alias("members"),
        )
    )
    resolved = group_tables.filter(
        (pl.col("kept") == 1) & (pl.col("collapsed") == pl.col("members") - 1)
    ).height
    return {
        "inputs_planted": gt.height,
        "inputs_traced_to_one_table": traced.filter(pl.col("n") == pl.col("n_gt")).height,
        "corrupt_planted": corrupt.height,
        "corrupt_quarantined": int(corrupt["reason"].is_not_null().sum()),
        "corrupt_with_expected_reason": int((corrupt["reason"] == expected).sum()),
        "clean_inputs_wrongly_quarantined": clean.filter(pl.col("table") == "quarantine").height,
        "exact_duplicate_groups_planted": group_tables.height,
        "exact_duplicate_groups_collapsed": resolved,
    }


def evaluate_filter(
    gt: pl.DataFrame,
    store: DeltaStore,
    *,
    category: str,
    positive: tuple[str, str],
    attribute: tuple[str, str],
) -> dict[str, Any]:
    """Measure the filter against ground truth, per ingested image.

    Args:
        gt: Ground truth (``source_uri``, ``kind``, ``attr_*`` columns).
        store: Where ``raw_images``, ``filter_rejections`` and ``filtered_images`` live.
        category: The category whose rejections are evaluated.
        positive: ``(column, value)`` of the ground truth that defines a true positive,
            e.g. ``("attr_source", "photo")``.
        attribute: ``(column, value)`` whose share is compared before and after filtering,
            e.g. ``("attr_palette", "warm")``.

    Returns:
        Recall and precision of the category's rejections, and the attribute's share in the
        unfiltered and the filtered set (in percent).
    """
    truth = gt.filter(pl.col("kind") != "corrupt").unique("source_uri")
    raw = store.read(RAW_IMAGES, columns=["image_id", "source_uri"]).join(
        truth, on="source_uri", how="inner"
    )
    rejected = set(
        store.read(FILTER_REJECTIONS).filter(pl.col("category") == category)["image_id"].to_list()
    )
    kept = set(store.read(FILTERED_IMAGES, columns=["image_id"])["image_id"].to_list())
    col, value = positive
    is_pos = raw[col] == value
    is_rej = raw["image_id"].is_in(list(rejected))
    tp = int((is_pos & is_rej).sum())
    acol, avalue = attribute
    has_attr = raw[acol] == avalue
    in_kept = raw["image_id"].is_in(list(kept))
    return {
        "images_with_ground_truth": raw.height,
        "true_positives_planted": int(is_pos.sum()),
        "removed": int(is_rej.sum()),
        "recall": round(tp / max(1, int(is_pos.sum())), 4),
        "precision": round(tp / max(1, int(is_rej.sum())), 4),
        f"{acol}={avalue}_share_unfiltered_pct": _pct(has_attr),
        f"{acol}={avalue}_share_filtered_pct": _pct(has_attr.filter(in_kept)),
    }


def _pct(mask: pl.Series) -> float:
    """Share of True values in percent (0 for an empty series)."""
    return round(100.0 * int(mask.sum()) / mask.len(), 2) if mask.len() else 0.0


def evaluate_dedup(gt: pl.DataFrame, store: DeltaStore) -> dict[str, Any]:
    """Near-duplicate removal against the planted groups (same ``base_id``).

    Only images that reached deduplication (in ``deduplicated_images``) count. A planted group
    is an original and its edited copies; exact byte duplicates were collapsed at ingest.

    Returns:
        Pair precision/recall (a pair = two images placed in one component), removal precision
        (removed images whose kept image is of the same base) and removal recall (correct
        removals over the removals the ground truth calls for: group size − 1 per group).
    """
    from curation_assets.lib.tables import DEDUPLICATED_IMAGES

    truth = (
        gt.filter(pl.col("kind").is_in(["original", "near_duplicate"]))
        .select("source_uri", "base_id")
        .unique("source_uri")
    )
    raw = store.read(RAW_IMAGES, columns=["image_id", "source_uri"])
    images = store.read(
        DEDUPLICATED_IMAGES, columns=["image_id", "kept", "duplicate_of", "component_id"]
    )
    base = raw.join(truth, on="source_uri", how="inner").select("image_id", "base_id")
    df = images.join(base, on="image_id", how="left")

    def pairs(counts: pl.Series) -> int:
        c = counts.cast(pl.Int64)
        return int((c * (c - 1) // 2).sum())

    true_pairs = pairs(df.drop_nulls("base_id").group_by("base_id").len()["len"])
    pred_pairs = pairs(df.group_by("component_id").len()["len"])
    tp_pairs = pairs(df.drop_nulls("base_id").group_by("base_id", "component_id").len()["len"])
    removed = df.filter(~pl.col("kept")).join(
        base.rename({"image_id": "duplicate_of", "base_id": "kept_base"}),
        on="duplicate_of",
        how="left",
    )
    correct = int((removed["base_id"] == removed["kept_base"]).fill_null(False).sum())
    should = int(
        df.drop_nulls("base_id").group_by("base_id").len().select((pl.col("len") - 1).sum()).item()
        or 0
    )
    return {
        "images_deduplicated": df.height,
        "planted_groups": int(
            df.drop_nulls("base_id").group_by("base_id").len().filter(pl.col("len") > 1).height
        ),
        "pair_recall": round(tp_pairs / true_pairs, 4) if true_pairs else None,
        "pair_precision": round(tp_pairs / pred_pairs, 4) if pred_pairs else None,
        "removed": removed.height,
        "removal_precision": round(correct / removed.height, 4) if removed.height else None,
        "removal_recall": round(correct / should, 4) if should else None,
    }


def evaluate_weights(
    gt: pl.DataFrame, store: DeltaStore, *, attribute: tuple[str, str]
) -> dict[str, Any]:
    """Share of a ground-truth attribute: unfiltered → filtered → kept → kept under weights.

    Args:
        gt: Ground truth (``source_uri``, ``kind``, ``attr_*`` columns).
        store: Where raw_images, filtered_images and sample_weights live.
        attribute: ``(column, value)``, e.g. ``("attr_palette", "warm")``.

    Returns:
        Shares in percent: every ingested image with ground truth, the filtered set, the kept
        set (filtered and deduplicated, what is weighted) and the kept set under the weights;
        and the weighted share's distance to the unfiltered one in points.
    """
    from curation_assets.lib.tables import SAMPLE_WEIGHTS

    col, value = attribute
    truth = gt.filter(pl.col("kind") != "corrupt").unique("source_uri")
    raw = store.read(RAW_IMAGES, columns=["image_id", "source_uri"]).join(
        truth.select("source_uri", col), on="source_uri", how="inner"
    )
    raw = raw.with_columns(has=(pl.col(col) == value).fill_null(False))
    filtered = set(store.read(FILTERED_IMAGES, columns=["image_id"])["image_id"].to_list())
    w = store.read(SAMPLE_WEIGHTS, columns=["image_id", "weight"])
    kept = raw.join(w, on="image_id", how="inner")
    weighted = (
        round(100.0 * float((kept["weight"] * kept["has"]).sum()) / float(kept["weight"].sum()), 2)
        if kept.height
        else 0.0
    )
    unfiltered = _pct(raw["has"])
    return {
        f"{col}={value}_share_unfiltered_pct": unfiltered,
        f"{col}={value}_share_filtered_pct": _pct(
            raw.filter(pl.col("image_id").is_in(filtered))["has"]
        ),
        f"{col}={value}_share_kept_pct": _pct(kept["has"]),
        f"{col}={value}_share_weighted_pct": weighted,
        "weighted_minus_unfiltered_pts": round(weighted - unfiltered, 2),
    }
