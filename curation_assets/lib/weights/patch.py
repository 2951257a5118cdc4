"""Re-weight a shard from its stored raw ratios, without reading its embeddings.

A kept row's ``raw_ratio`` depends only on its embedding and on whether it was in the probe's
training fold (its image_id), and its ``p_unfiltered`` / ``p_kept`` only on that ratio; so a
shard whose ``raw_images`` and ``image_embeddings`` did not change since it was scored with
the probe in use keeps them. Its weights move only with what did change: the dedup decisions
(which rows are the reference, which are kept), the uniqueness scores and the scale. This
module redoes such a shard from its stored :data:`SAMPLE_WEIGHTS` rows:

1. The reference rows as :func:`~.shards.read_shards` defines them
   (:func:`~.shards.reference_rows`) — ``raw_images`` metadata, ``deduplicated_images``
   decisions, and the ``image_id`` column of ``image_embeddings`` (a column projection: the
   embeddings are not read).
2. Each kept row's stored ``raw_ratio``, ``p_unfiltered`` and ``p_kept`` (Float64 in the
   table, as the probe computed them); a row kept now without one (newly kept) makes the patch
   impossible: the shard is scored in full instead.
3. :func:`~.shards.weigh_shard` — the code :func:`~.shards.score_shard` runs after the probe —
   with the run's scale and uniqueness term: the rows, stats row and audit counts a re-score
   with that probe gives, bit for bit when the re-score computes the same ratios. (It may
   not, in the last bit of a few rows: the probe's matrix products round a row differently
   with the number of rows in its batch, which changes with the kept set, and with the
   layout of the probe's arrays, fitted vs loaded. The patch keeps each ratio as first
   computed.)

A shard whose decisions only lost kept images is drop-patched first (:mod:`~.drops`): the
committed rows, stats and counts less the dropped rows' own, without step 1's reads.

Not patched (scored in full from the embeddings): a shard whose raw images or embeddings
changed, one never scored with the committed probe, one with a newly kept row, and every
shard when the audit has zero-shot concepts with a text encoder (their attributes are read off
the embeddings). A patched shard whose rows come out equal to the ones it has is not
rewritten.

Used by :func:`~.update.update_weights` for the shards an incremental run redoes and for the
rescale pass (every shard, from the rows as the run left them).
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from curation_assets.lib.memory import shard_batches
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import (
    AUDIT_SHARD_COUNTS,
    DEDUPLICATED_IMAGES,
    IMAGE_EMBEDDINGS,
    RAW_IMAGES,
    SAMPLE_WEIGHTS,
    WEIGHT_SHARD_STATS,
)
from curation_assets.lib.weights.audit import TextEncoder
from curation_assets.lib.weights.drops import drop_patch, drop_patch_changes
from curation_assets.lib.weights.plan import WeightsPlan
from curation_assets.lib.weights.probe import SampledProbe
from curation_assets.lib.weights.shards import (
    ROW_OVERHEAD,
    ShardScore,
    reference_rows,
    weigh_shard,
)
from curation_assets.lib.weights.uniqueness import UniquenessTerm, read_uniqueness

PATCH_ROW_BYTES = ROW_OVERHEAD + 200
"""Working bytes of one row while its shard is patched: its raw metadata and attributes
(:data:`~.shards.ROW_OVERHEAD`) plus its stored weight row and dedup decision."""


@dataclass(frozen=True)
class PatchSource:
    """Where the stored rows of the shards that may be patched are.

    Attributes:
        model_ids: Shard → its embedding model (from its stats row): the shards that may be
            patched.
        version: The ``sample_weights`` version holding their rows (None: the latest).
        stale: Shards whose rows now differ from the ones at ``version`` (a run killed
            before its commit wrote them): rewritten even when the patch gives the rows at
            ``version``.
        committed: The committed versions of ``deduplicated_images`` (the commit's input) and
            ``audit_shard_counts``: what a drop patch (:mod:`~.drops`) starts from. Empty: none
            (the rescale pass).
        rows: Shard → its committed stats row (the shards of ``model_ids``), for the drop
            patches (:mod:`~.drops`).
    """

    model_ids: Mapping[str, str]
    version: int | None = None
    stale: frozenset[str] = frozenset()
    committed: Mapping[str, int] = field(default_factory=dict)
    rows: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass
class Redone:
    """What :func:`redo_shards` did.

    Attributes:
        stats: The shards' :data:`WEIGHT_SHARD_STATS` rows.
        counts: Their :data:`AUDIT_SHARD_COUNTS` rows.
        scored: Shards scored from their embeddings.
        patched: Shards patched from their stored ratios.
        dropped: Of those, shards drop-patched (:mod:`~.drops`: they only lost kept images).
        written: Shards whose ``sample_weights`` rows were rewritten.
        deleted: Rows of drop-patched shards deleted by tombstones (their shards not rewritten).
    """

    stats: list[dict[str, Any]] = field(default_factory=list)
    counts: list[pl.DataFrame] = field(default_factory=list)
    scored: int = 0
    patched: int = 0
    dropped: int = 0
    written: int = 0
    deleted: int = 0

    def add(self, other: "Redone") -> None:
        """Add another pass' figures (the rescale's) to these counts (stats are replaced)."""
        self.stats, self.counts = other.stats, other.counts
        self.scored += other.scored
        self.patched += other.patched
        self.dropped += other.dropped
        self.written += other.written
        self.deleted += other.deleted


def incremental_source(store: DeltaStore, plan: WeightsPlan) -> PatchSource:
    """The shards of an incremental plan that may be patched, and their committed rows.

    A shard qualifies when its ``raw_images`` and ``image_embeddings`` files are the ones the
    last commit recorded (only ``deduplicated_images`` / ``image_uniqueness`` changed, or a
    killed run rewrote its weights) and the commit's stats have its row, scored by the
    committed probe. Reads the Delta logs and the committed stats table (one row per shard).

    Memory: the committed stats rows (one per shard).
    """
    commit = plan.commit
    if plan.mode != "incremental" or commit is None or plan.probe is None or not plan.shards:
        return PatchSource({})
    version = commit.outputs.get(SAMPLE_WEIGHTS.name)
    if version is None:
        return PatchSource({})
    changed: set[str] = set()
    for table in (RAW_IMAGES.name, IMAGE_EMBEDDINGS.name):
        changed |= store.changed_shards(table, commit.inputs.get(table))
    todo = set(plan.shards) - changed
    committed = store.read(
        WEIGHT_SHARD_STATS, version=commit.outputs.get(WEIGHT_SHARD_STATS.name)
    ).filter((pl.col("probe_id") == plan.probe.probe_id) & pl.col("shard").is_in(sorted(todo)))
    model_ids = dict(zip(committed["shard"], committed["model_id"], strict=True))
    stale = store.changed_shards(SAMPLE_WEIGHTS.name, version) & set(model_ids)
    versions = {
        DEDUPLICATED_IMAGES.name: commit.inputs.get(DEDUPLICATED_IMAGES.name),
        AUDIT_SHARD_COUNTS.name: commit.outputs.get(AUDIT_SHARD_COUNTS.name),
    }
    committed_versions = {k: v for k, v in versions.items() if v is not None}
    rows = {row["shard"]: row for row in committed.iter_rows(named=True)}
    return PatchSource(model_ids, version, frozenset(stale), committed_versions, rows)


def rescale_source(stats: pl.DataFrame) -> PatchSource:
    """Every shard of ``stats`` (the run's stats, just written), from the latest rows."""
    model_ids = dict(zip(stats["shard"].to_list(), stats["model_id"].to_list(), strict=True))
    return PatchSource(model_ids)


def redo_shards(
    store: DeltaStore,
    shards: Sequence[str],
    source: PatchSource,
    *,
    probe: SampledProbe,
    scale: float,
    term: UniquenessTerm | None,
    settings: Mapping[str, Any],
    max_rows: int,
    encoder: TextEncoder | None,
    score: Callable[[list[str]], tuple[list[dict[str, Any]], list[pl.DataFrame]]],
) -> Redone:
    """Redo ``shards``: patch those ``source`` allows, ``score`` (and write) the others.

    Args:
        store: Delta store.
        shards: The shards to redo.
        source: Which of them may be patched, from which rows.
        probe: The probe (its ``prior_kept`` and id; the stored ratios are its).
        scale: The run's normaliser.
        term: The run's uniqueness term (None: off).
        settings: The stage settings (``correct_for``, ``w_min``, ``w_max``, ``keywords``,
            ``concepts``).
        max_rows: Rows of one group of patched shards (:data:`PATCH_ROW_BYTES` each).
        encoder: The concept text encoder (with ``settings["concepts"]`` nothing is patched).
        score: Scores and writes shards from their embeddings: their stats and counts.

    Memory: one group of patched shards (``max_rows`` rows of :data:`PATCH_ROW_BYTES`), or
    what ``score`` holds. The shards of a group whose rows changed are written in one Delta
    commit (at 1M, 20 patched shards: 1.9 s as one commit each); a drop-patched shard is not
    rewritten at all: its dropped rows' tombstones are appended, the group's in one commit
    (merge-on-read: :mod:`curation_assets.lib.revisions`). A shard dedup changed in place
    (change rows) is drop-patched first from those change rows alone
    (:func:`~.drops.drop_patch_changes`: memory ∝ its flipped rows, its other rows unread).
    """
    out = Redone()
    wanted = [s for s in shards if s in source.model_ids]
    if settings["concepts"] and encoder is not None:
        wanted = []
    fallback = [s for s in shards if s not in set(wanted)]
    if term is None:  # shards dedup changed in place, from the change rows alone
        quick = _drop_from_changes(store, wanted, source, probe, scale, settings, out)
        wanted = [s for s in wanted if s not in quick]
    sizes = store.shard_row_counts(RAW_IMAGES.name)
    for group in shard_batches(sizes, wanted, max_rows):
        stored = store.read(SAMPLE_WEIGHTS, shards=group, version=source.version)
        olds = {
            k[0]: v.sort("image_id") for k, v in stored.partition_by("shard", as_dict=True).items()
        }
        dropped = (
            drop_patch(
                store,
                group,
                olds,
                versions=source.committed,
                stats_rows=source.rows,
                model_ids=source.model_ids,
                probe_id=probe.probe_id,
                scale=scale,
                settings=settings,
            )
            if term is None
            else {}
        )
        rest = [s for s in group if s not in dropped]
        frames = (
            reference_rows(store, rest, settings["correct_for"], ["image_id", "shard"])
            if rest
            else pl.DataFrame()
        )
        parts = (
            {k[0]: v for k, v in frames.partition_by("shard", as_dict=True).items()} if rest else {}
        )
        scores = read_uniqueness(store, rest) if term is not None and rest else {}
        rewrite: dict[str, pl.DataFrame] = {}
        tombstones: list[pl.DataFrame] = []
        for shard in group:
            old = olds.get(shard, SAMPLE_WEIGHTS.empty())
            if shard in dropped:
                out.dropped += 1
                patched: ShardScore | None = dropped[shard]
            else:
                frame = parts.get(shard, frames.clear()).sort("image_id")
                patched = patch_shard(
                    shard,
                    frame,
                    old,
                    model_id=source.model_ids[shard],
                    probe_id=probe.probe_id,
                    scale=scale,
                    w_min=settings["w_min"],
                    w_max=settings["w_max"],
                    keywords=settings["keywords"],
                    uniqueness=term,
                    uniqueness_scores=scores.get(shard),
                )
            if patched is None:
                fallback.append(shard)
                continue
            out.patched += 1
            if shard in dropped and shard not in source.stale:  # its rows less the dropped
                gone = old.join(patched.weights.select("image_id"), on="image_id", how="anti")
                tombstones.append(gone.select(SAMPLE_WEIGHTS.column_names))
            elif shard in source.stale or not patched.weights.equals(
                old.select(SAMPLE_WEIGHTS.column_names)
            ):
                rewrite[shard] = patched.weights
            out.stats.append(patched.stats)
            out.counts.append(patched.counts)
        if rewrite:  # the group's changed shards in one Delta commit, not one per shard
            store.replace_rows(SAMPLE_WEIGHTS, "shard", list(rewrite), list(rewrite.values()))
            out.written += len(rewrite)
        gone = pl.concat(tombstones) if tombstones else SAMPLE_WEIGHTS.empty()
        if gone.height:  # the dropped rows' tombstones, one commit: their shards stay as they are
            store.append_changes(SAMPLE_WEIGHTS, gone, deleted=True)
            out.deleted += gone.height
    if fallback:
        stats, counts = score(fallback)
        out.stats += stats
        out.counts += counts
        out.scored += len(fallback)
        out.written += len(fallback)
    return out


def _drop_from_changes(
    store: DeltaStore,
    wanted: Sequence[str],
    source: PatchSource,
    probe: SampledProbe,
    scale: float,
    settings: Mapping[str, Any],
    out: Redone,
) -> set[str]:
    """Drop-patch the shards of ``wanted`` that dedup changed in place; returns them.

    Their stats and counts go to ``out``; their dropped rows' tombstones are appended in one
    commit (none of them is rewritten).
    """
    quick = drop_patch_changes(
        store,
        [s for s in wanted if s not in source.stale],
        version=source.version,
        versions=source.committed,
        stats_rows=source.rows,
        probe_id=probe.probe_id,
        scale=scale,
        settings=settings,
    )
    for drop in quick.values():
        out.patched += 1
        out.dropped += 1
        out.stats.append(drop.stats)
        out.counts.append(drop.counts)
    gone = pl.concat([d.gone for d in quick.values()]) if quick else SAMPLE_WEIGHTS.empty()
    if gone.height:
        store.append_changes(SAMPLE_WEIGHTS, gone.select(SAMPLE_WEIGHTS.column_names), deleted=True)
        out.deleted += gone.height
    return set(quick)


def patch_shard(
    shard: str,
    frame: pl.DataFrame,
    stored: pl.DataFrame,
    *,
    model_id: str,
    probe_id: str,
    scale: float,
    w_min: float,
    w_max: float,
    keywords: Sequence[str] = (),
    uniqueness: UniquenessTerm | None = None,
    uniqueness_scores: pl.DataFrame | None = None,
) -> ShardScore | None:
    """One shard's rows, stats and counts from its stored ratios (None: a kept row has none).

    Args:
        shard: The shard.
        frame: Its reference rows now (:func:`~.shards.reference_rows`), sorted by image_id.
        stored: Its :data:`SAMPLE_WEIGHTS` rows scored by the probe ``probe_id``.
        model_id: The shard's embedding model (its stats row's: the embeddings did not change).
        probe_id: The probe's id.
        scale: The normaliser.
        w_min: Lower weight bound.
        w_max: Upper weight bound.
        keywords: Extra caption keywords for the audit (concepts are never patched).
        uniqueness: The uniqueness term, or None (off).
        uniqueness_scores: The shard's ``image_id, uniqueness`` rows (None: none yet).

    Returns:
        What :func:`~.shards.score_shard` returns for this shard with that probe, scale and
        term; None when a kept row has no stored ratio (score the shard in full).

    Memory: the shard's rows (given) and a few float64 arrays of its kept rows.
    """
    kept_ids = frame.filter(pl.col("kept")).select("image_id")
    ratios = stored.select("image_id", "raw_ratio", "p_unfiltered", "p_kept")
    old = kept_ids.join(ratios, on="image_id", how="left", maintain_order="left")
    if old.height != kept_ids.height or old["raw_ratio"].null_count():
        return None
    return weigh_shard(
        shard,
        frame,
        np.zeros((frame.height, 0), np.float32),  # read only for concepts: none here
        old["raw_ratio"].to_numpy(),
        old["p_unfiltered"],
        old["p_kept"],
        model_id=model_id,
        probe_id=probe_id,
        scale=scale,
        w_min=w_min,
        w_max=w_max,
        keywords=keywords,
        uniqueness=uniqueness,
        uniqueness_scores=uniqueness_scores,
    )
