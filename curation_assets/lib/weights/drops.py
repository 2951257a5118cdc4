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

Memory: the group's committed and current decisions (``image_id, shard, kept``), its committed
weight rows (given), and the dropped rows' metadata.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

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
    bases: Mapping[str, tuple[float, int]],
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
        bases: Shard → the ``scale`` and ``n_reference`` of its committed stats row.
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
        base, rows = bases.get(shard), stored.get(shard)
        if shard in bad or base is None or rows is None or shard not in model_ids:
            continue
        if base[0] != scale:
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
            n_reference=bases[shard][1],
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
    return ShardScore(
        weights,
        stats,
        AUDIT_SHARD_COUNTS.conform(merged.select(AUDIT_SHARD_COUNTS.column_names)),
    )
