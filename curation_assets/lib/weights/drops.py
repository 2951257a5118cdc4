"""Re-weight a shard whose only change is kept images that dedup now removes: cost ∝ those rows.

An incremental dedup run that lands a shard of near-duplicates of old images flips some old
kept images to removed (a new copy won its group's keep policy): one row per new duplicate,
spread over many old shards. The patch (:mod:`~.patch`) redoes such a shard from every one of
its reference rows: it reads the shard's ``raw_images`` metadata, the ids of its embeddings
and its decisions, and recomputes every row's audit attributes. At 1M images a 1 % shard
flipped ~130 rows in each of 21 old shards, and that per-shard work was half the update's
weights step.

A *drop patch* does what those flips change and nothing else. For a shard whose committed
``sample_weights`` rows are exactly its kept images as of the committed decisions, and whose
decisions since differ only in kept → removed rows:

* ``sample_weights``: the committed rows less the dropped ones (every other weight is
  ``clip(scale · raw_ratio)`` with an unchanged ratio and scale: unchanged);
* its stats row: :func:`~.totals.shard_weight_stats` of the remaining rows, as a re-weigh
  computes it (``n_reference`` less the dropped rows under ``correct_for="filter"``, whose
  reference excludes what dedup removed);
* its audit counts: the committed counts less the dropped rows' own (their ``raw_images``
  rows are the only metadata read): ``n_filtered`` and ``weight_sum``, and ``n_unfiltered``
  under ``filter``; a categorical value no reference row has any more is dropped, as a
  recount would. Counts are exact; a ``weight_sum`` differs from a fresh sum by rounding
  (one subtraction a dropped row: relative ~1e-16).

Anything else (a newly kept image, a row that left or joined the shard's decisions, the
uniqueness term on, another scale or probe, committed rows that are not the committed kept
set) leaves the shard to the patch, which handles every case.

Two ways to find the dropped rows:

* :func:`drop_patch_changes` — when dedup changed the shard's decisions in place (its base
  files are the committed ones and its flips are change rows,
  :mod:`curation_assets.lib.revisions`): the change rows written since the committed version
  say which images flipped, and only those images' committed weight rows are read. The
  stats row is the committed one less the dropped rows' sums (a float sum then differs from
  a fresh sum by rounding, ~1e-16 relative a subtraction; counts and the histogram are
  exact); the smallest and largest weight are re-read (one column of the shard) only when a
  dropped row held one of them and no clipped row still does. Memory and reads ∝ the flipped
  rows: the shard's other rows are never read.
* :func:`drop_patch` — when the shard's decisions were rewritten: the group's committed and
  current decisions are compared row by row, and the stats are recomputed from the remaining
  rows (exactly as a re-weigh computes them). Memory: the group's committed and current
  decisions (``image_id, shard, kept``), its committed weight rows (given), and the dropped
  rows' metadata.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from curation_assets.lib.compaction import left_since, same_base
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import (
    AUDIT_SHARD_COUNTS,
    DEDUPLICATED_IMAGES,
    RAW_IMAGES,
    SAMPLE_WEIGHTS,
)
from curation_assets.lib.weights.audit import audit_attributes
from curation_assets.lib.weights.shards import RAW_COLUMNS, ShardScore
from curation_assets.lib.weights.totals import shard_audit_counts, shard_weight_stats

_KEYS = ["attribute", "value", "hit"]


def drop_patch(
    store: DeltaStore,
    group: Sequence[str],
    stored: Mapping[str, pl.DataFrame],
    *,
    versions: Mapping[str, int],
    stats_rows: Mapping[str, Mapping[str, Any]],
    model_ids: Mapping[str, str],
    probe_id: str,
    scale: float,
    settings: Mapping[str, Any],
) -> dict[str, ShardScore]:
    """Rows, stats and counts of the shards of ``group`` that only lost kept images.

    Args:
        store: Delta store.
        group: Shards the patch would redo.
        stored: Shard → its committed ``sample_weights`` rows, sorted by image_id.
        versions: The committed versions of ``deduplicated_images`` and ``audit_shard_counts``
            (a missing one: nothing is drop-patched).
        stats_rows: Shard → its committed stats row (its ``scale`` and ``n_reference``).
        model_ids: Shard → its embedding model (its committed stats row's, scored by the probe
            in use: a shard not here is not drop-patched).
        probe_id: The probe in use.
        scale: The run's normaliser (the committed stats row must have it).
        settings: The stage settings (``correct_for``, ``w_min``, ``w_max``, ``keywords``).

    Returns:
        Shard → what a re-weigh gives it, for the shards that qualify (the others are absent).
        The caller does not call it with the uniqueness term on (its multipliers move with the
        decisions: the patch redoes them).
    """
    names = (DEDUPLICATED_IMAGES.name, AUDIT_SHARD_COUNTS.name)
    if not group or any(versions.get(n) is None for n in names):
        return {}
    columns = ["image_id", "shard", "kept"]
    before = store.read(
        DEDUPLICATED_IMAGES, shards=group, columns=columns, version=versions[names[0]]
    )
    now = store.read(DEDUPLICATED_IMAGES, shards=group, columns=columns)
    diff = before.join(now, on=["image_id", "shard"], how="full", coalesce=True, suffix="_now")
    changed = diff.filter(pl.col("kept").ne_missing(pl.col("kept_now")))
    # kept → removed only; anything else (newly kept, a row gone or new) is the patch's
    ok = changed.group_by("shard").agg(
        (pl.col("kept").eq_missing(True) & pl.col("kept_now").eq_missing(False)).all().alias("ok")
    )
    bad = set(ok.filter(~pl.col("ok"))["shard"].to_list())
    kept_before = {s: g["image_id"] for (s,), g in before.filter(pl.col("kept")).group_by("shard")}
    todo: dict[str, list[str]] = {}
    for shard in group:
        base, rows = stats_rows.get(shard), stored.get(shard)
        if shard in bad or base is None or rows is None or shard not in model_ids:
            continue
        if base["scale"] != scale:
            continue
        ids = kept_before.get(shard, pl.Series(dtype=pl.String))
        if rows.height != ids.len() or not rows["image_id"].equals(ids.sort(), check_names=False):
            continue
        todo[shard] = changed.filter(pl.col("shard") == shard)["image_id"].sort().to_list()
    if not todo:
        return {}
    dropped_ids = [i for ids in todo.values() for i in ids]
    raw = (  # the dropped rows only, filtered in the scan: not every row of the shards
        store.scan(RAW_IMAGES)
        .filter(pl.col("shard").is_in(sorted(todo)) & pl.col("image_id").is_in(dropped_ids))
        .select(RAW_COLUMNS)
        .collect()
        .sort("image_id")
    )
    counts = store.read(AUDIT_SHARD_COUNTS, shards=sorted(todo), version=versions[names[1]])
    out: dict[str, ShardScore] = {}
    for shard, dropped in todo.items():
        meta = raw.filter(pl.col("shard") == shard)
        if meta.height != len(dropped):  # a dropped image without its raw row: the patch's
            continue
        out[shard] = _dropped(
            shard,
            stored[shard],
            dropped,
            meta,
            counts.filter(pl.col("shard") == shard),
            n_reference=int(stats_rows[shard]["n_reference"]),
            model_id=model_ids[shard],
            probe_id=probe_id,
            scale=scale,
            settings=settings,
        )
    return out


def _dropped(
    shard: str,
    rows: pl.DataFrame,
    dropped: list[str],
    raw: pl.DataFrame,
    counts: pl.DataFrame,
    *,
    n_reference: int,
    model_id: str,
    probe_id: str,
    scale: float,
    settings: Mapping[str, Any],
) -> ShardScore:
    """One shard's :class:`~.shards.ShardScore` once its ``dropped`` kept images are removed."""
    w_min, w_max = settings["w_min"], settings["w_max"]
    gone = rows.filter(pl.col("image_id").is_in(dropped))
    weights = rows.filter(~pl.col("image_id").is_in(dropped)).select(SAMPLE_WEIGHTS.column_names)
    raw_ratio = weights["raw_ratio"].to_numpy()
    scaled = scale * raw_ratio
    leaves_reference = settings["correct_for"] == "filter"
    stats = shard_weight_stats(
        shard,
        weight=weights["weight"].to_numpy(),
        raw_ratio=raw_ratio,
        clipped_low=scaled < w_min,
        clipped_high=scaled > w_max,
        n_reference=n_reference - (len(dropped) if leaves_reference else 0),
        scale=scale,
        w_min=w_min,
        w_max=w_max,
        probe_id=probe_id,
        model_id=model_id,
    )
    return ShardScore(weights, stats, _counts_less(shard, counts, raw, gone, settings))


def _counts_less(
    shard: str,
    counts: pl.DataFrame,
    raw: pl.DataFrame,
    gone: pl.DataFrame,
    settings: Mapping[str, Any],
) -> pl.DataFrame:
    """A shard's committed audit counts less the ``gone`` rows' own (``raw``: their metadata)."""
    leaves_reference = settings["correct_for"] == "filter"
    meta = raw.join(gone.select("image_id", "weight"), on="image_id", how="inner").sort("image_id")
    attributes = audit_attributes(
        meta, np.zeros((meta.height, 0), np.float32), keywords=settings["keywords"]
    )
    theirs = shard_audit_counts(
        shard, attributes, np.ones(meta.height, bool), meta["weight"].to_numpy()
    ).select(*_KEYS, "n_unfiltered", "n_filtered", "weight_sum")
    merged = counts.join(
        theirs, on=_KEYS, how="left", nulls_equal=True, suffix="_gone", maintain_order="left"
    ).with_columns(pl.col(f"{c}_gone").fill_null(0) for c in ("n_unfiltered", "n_filtered"))
    merged = merged.with_columns(
        n_filtered=pl.col("n_filtered") - pl.col("n_filtered_gone"),
        weight_sum=pl.when(pl.col("weight_sum_gone").is_null())
        .then(pl.col("weight_sum"))
        .otherwise(pl.col("weight_sum") - pl.col("weight_sum_gone")),
        n_unfiltered=(
            pl.col("n_unfiltered") - pl.col("n_unfiltered_gone")
            if leaves_reference
            else pl.col("n_unfiltered")
        ),
    )
    # a categorical value no reference row holds any more is not counted (a recount has no row)
    merged = merged.filter(pl.col("hit").is_not_null() | (pl.col("n_unfiltered") > 0))
    return AUDIT_SHARD_COUNTS.conform(merged.select(AUDIT_SHARD_COUNTS.column_names))


@dataclass(frozen=True)
class Drop:
    """A shard drop-patched from the change rows (:func:`drop_patch_changes`).

    Attributes:
        stats: Its new :data:`~curation_assets.lib.tables.WEIGHT_SHARD_STATS` row.
        counts: Its new :data:`AUDIT_SHARD_COUNTS` rows.
        gone: Its committed :data:`SAMPLE_WEIGHTS` rows of the dropped images (to tombstone).
    """

    stats: dict[str, Any]
    counts: pl.DataFrame
    gone: pl.DataFrame


_SUMS = (
    "n_kept",
    "weight_sum",
    "weight_sq_sum",
    "n_bad",
    "n_clipped_low",
    "n_clipped_high",
    "ratio_sum_unclipped",
    "raw_ratio_sum",
)


def drop_patch_changes(
    store: DeltaStore,
    shards: Sequence[str],
    *,
    version: int | None,
    versions: Mapping[str, int],
    stats_rows: Mapping[str, Mapping[str, Any]],
    probe_id: str,
    scale: float,
    settings: Mapping[str, Any],
) -> dict[str, Drop]:
    """Shards of ``shards`` that only lost kept images, from the change rows since the commit.

    A shard qualifies when its ``deduplicated_images`` base files are the ones of the committed
    version (dedup changed it in place only), every decision changed since is a kept image
    that is now removed (or a change that leaves ``kept`` as it was), and its committed stats
    row has this probe and scale. The caller passes only shards whose raw images and
    embeddings are the committed ones and whose weight rows are the committed ones (not
    stale), and does not call it with the uniqueness term on.

    Args:
        store: Delta store.
        shards: Shards the patch would redo.
        version: The committed ``sample_weights`` version (None: the latest).
        versions: The committed versions of ``deduplicated_images`` and ``audit_shard_counts``.
        stats_rows: Shard → its committed stats row (a shard not here is not patched).
        probe_id: The probe in use.
        scale: The run's normaliser.
        settings: The stage settings (``correct_for``, ``w_min``, ``w_max``, ``keywords``).

    Returns:
        Shard → its :class:`Drop`, for the shards that qualify (the others are absent: the
        caller redoes them another way).

    Memory and reads: the change rows since the committed version, the committed weight rows
    and ``raw_images`` metadata of the flipped images, the shards' committed counts; one
    shard's ``weight`` column when a dropped row held its smallest or largest weight.
    """
    names = (DEDUPLICATED_IMAGES.name, AUDIT_SHARD_COUNTS.name)
    if not shards or any(versions.get(n) is None for n in names):
        return {}
    since = versions[names[0]]
    same = same_base(store, names[0], since, shards)
    todo = [
        s
        for s in shards
        if s in same
        and s in stats_rows
        and stats_rows[s]["probe_id"] == probe_id
        and stats_rows[s]["scale"] == scale
    ]
    if not todo:
        return {}
    # the committed weight rows of the images dedup removed since (and shards changed otherwise)
    gone_rows, bad = left_since(
        store,
        DEDUPLICATED_IMAGES,
        since=since,
        shards=todo,
        flag="kept",
        listed=lambda ids: store.read(SAMPLE_WEIGHTS, shards=todo, version=version, keys=ids),
    )
    ids = gone_rows["image_id"].to_list()
    raw = (  # the dropped rows' metadata only, filtered in the scan
        store.scan(RAW_IMAGES)
        .filter(
            pl.col("shard").is_in(sorted(set(gone_rows["shard"]))) & pl.col("image_id").is_in(ids)
        )
        .select(RAW_COLUMNS)
        .collect()
    )
    counts = store.read(AUDIT_SHARD_COUNTS, shards=todo, version=versions[names[1]])
    out: dict[str, Drop] = {}
    for shard in todo:
        if shard in bad:
            continue
        gone = gone_rows.filter(pl.col("shard") == shard).sort("image_id")
        meta = raw.filter(pl.col("shard") == shard)
        if meta.height != gone.height:  # a dropped image without its raw row: the patch's
            continue
        mine = counts.filter(pl.col("shard") == shard)
        if not gone.height:  # its weights do not move: the committed row and counts stand
            out[shard] = Drop(dict(stats_rows[shard]), mine, gone)
            continue
        stats = _stats_less(store, stats_rows[shard], gone, version, scale, settings)
        out[shard] = Drop(stats, _counts_less(shard, mine, meta, gone, settings), gone)
    return out


def _stats_less(
    store: DeltaStore,
    row: Mapping[str, Any],
    gone: pl.DataFrame,
    version: int | None,
    scale: float,
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    """A committed stats row less the ``gone`` rows' own sums, counts and histogram bins.

    The smallest (largest) weight stays unless a gone row held it and no row clipped to
    ``w_min`` (``w_max``) remains; then the shard's remaining weights are read (one column).
    """
    w_min, w_max = settings["w_min"], settings["w_max"]
    w = gone["weight"].to_numpy()
    ratio = gone["raw_ratio"].to_numpy()
    theirs = shard_weight_stats(
        row["shard"],
        weight=w,
        raw_ratio=ratio,
        clipped_low=scale * ratio < w_min,
        clipped_high=scale * ratio > w_max,
        n_reference=0,
        scale=scale,
        w_min=w_min,
        w_max=w_max,
        probe_id=row["probe_id"],
        model_id=row["model_id"],
    )
    out = dict(row)
    for c in _SUMS:
        out[c] = row[c] - theirs[c]
    out["histogram"] = [a - b for a, b in zip(row["histogram"], theirs["histogram"], strict=True)]
    if settings["correct_for"] == "filter":  # its reference excludes what dedup removed
        out["n_reference"] = row["n_reference"] - gone.height
    if out["n_kept"] == 0:  # as a re-weigh of no row gives
        out.update({c: 0 if c.startswith("n_") else 0.0 for c in _SUMS})
        out["weight_min"] = out["weight_max"] = None
        return out
    low_held = w.min() <= row["weight_min"] and not (
        out["n_clipped_low"] and row["weight_min"] == w_min
    )
    high_held = w.max() >= row["weight_max"] and not (
        out["n_clipped_high"] and row["weight_max"] == w_max
    )
    if low_held or high_held or row["n_bad"]:
        rest = (
            store.scan(SAMPLE_WEIGHTS, version=version, shards=[row["shard"]])
            .join(gone.lazy().select("image_id"), on="image_id", how="anti")
            .select(pl.col("weight").min().alias("lo"), pl.col("weight").max().alias("hi"))
            .collect()
        )
        out["weight_min"], out["weight_max"] = rest["lo"].item(), rest["hi"].item()
    return out
