"""The merge: union of the units' pairs, connected components, the keep policy.

Its whole state is the pair graph: every pair with cosine ≥ the floor τ_min — ``duplicate_pairs``
(≥ τ) and ``candidate_pairs`` (the band [τ_min, τ)), one row per pair with ``found_by`` bits —
and ``duplicate_members`` (one row per image on a stored pair: keep-policy fields, decision),
with those images' vectors in ``duplicate_vectors`` (read by image_id, only for the groups a
merge re-decides: a removed image's cosine is to its kept one). Groups and decisions come from
the pairs ≥ τ only, so changing τ within [τ_min, 1] re-decides from the stored graph without
searching (:func:`merge` with no new pairs). Images on no pair are kept, alone in their group,
and never enter the merge, so its memory grows with the number of pairs, not of images.

Incremental: the old rows of the shards being redone (new, changed or gone) are dropped with
every pair touching them, the units' new pairs are added (they all touch a redone shard, so
they share no pair with the old ones), and components and decisions are recomputed over the
graph (cheap: O(pairs)); an update passes only the components it can change
(:mod:`.localgraph`), the rest of the graph being untouched. The result depends only on the
final set of pairs, so full, incremental and any order of units give the same pairs and
decisions (tested).

Row order inside the merge is canonical — sorted by (image_id, shard) — so the keep policy's
last tie-break ("lowest row") is the smallest image_id.
"""

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import polars as pl

from curation_assets.lib.dedup.keep import ImageMeta, choose, component_sizes, connected_components
from curation_assets.lib.dedup.localgraph import LocalGraph
from curation_assets.lib.dedup.pairs import Pairs, Rows, popcount
from curation_assets.lib.dedup.units import ENDPOINT_SCHEMA, UNIT_PAIR_SCHEMA
from curation_assets.lib.tables import (
    DEDUPLICATED_IMAGES,
    DUPLICATE_MEMBERS,
    DUPLICATE_PAIRS,
    DUPLICATE_VECTORS,
)
from curation_assets.lib.vectors import half_parts

#: What ``deduplicated_images`` holds of a decision (a group's size lives in
#: ``duplicate_members`` only: a group that grows does not rewrite its old members' shards).
_DECISION = ["kept", "duplicate_of", "similarity", "component_id"]

#: A member's columns beside its decision (the endpoints' but the vector).
_NODE = [c for c in ENDPOINT_SCHEMA if c != "vector"]

#: Given image ids, the committed ``duplicate_vectors`` rows of those ids (one per id).
VectorLookup = Callable[[pl.Series], pl.DataFrame]


@dataclass
class Merged:
    """The pair graph after a merge, and what changed.

    Attributes:
        pairs: ``duplicate_pairs`` rows (cosine ≥ τ), sorted.
        members: ``duplicate_members`` rows with their decisions, sorted by image_id.
        changed_shards: Shards holding an image whose decision differs from before (or that
            left or joined the graph): their ``deduplicated_images`` rows must change.
        stats: pairs, new_pairs, images_on_pairs, removed, components_with_duplicates,
            largest_component, removed_below_tau, previously_kept_now_removed,
            found_by_count, pairs_per_clustering.
    """

    pairs: pl.DataFrame
    members: pl.DataFrame
    changed_shards: set[str]
    stats: dict[str, Any] = field(default_factory=dict)
    band: pl.DataFrame = field(default_factory=DUPLICATE_PAIRS.empty)
    """``candidate_pairs`` rows: τ_min ≤ cosine < τ, sorted."""
    changes: pl.DataFrame = field(default_factory=DEDUPLICATED_IMAGES.empty)
    """The ``deduplicated_images`` rows of the images in ``changed_shards`` whose decision
    changed (an image off the graph kept and alone), as they are now."""
    vectors: pl.DataFrame = field(default_factory=DUPLICATE_VECTORS.empty)
    """``duplicate_vectors`` rows to add: the images on the graph that were not on the old
    one (every image on it, for a full run)."""
    local: LocalGraph | None = None
    """Set when ``pairs``, ``band``, ``members`` and ``changes`` are those of the affected
    subgraph only (:mod:`.localgraph`): the rest of the committed graph is unchanged and
    ``stats`` are the whole graph's."""

    @cached_property
    def stored(self) -> pl.DataFrame:
        """Every stored pair (≥ τ_min), sorted: the graph a later merge starts from.

        Read by the run (unchanged check, verdict cache) and the asset (sweep): built once.
        """
        return pl.concat([self.pairs, self.band]).sort("image_id_a", "image_id_b")


def unite(unit_pairs: Sequence[pl.DataFrame]) -> pl.DataFrame:
    """One row per pair over the units' rows, ``found_by`` = the clusterings that found it.

    A pair's similarity is the same whichever unit found it (a per-pair dot product of the
    same two vectors), so the first is taken.
    """
    frames = [p for p in unit_pairs if p.height]
    if not frames:
        return DUPLICATE_PAIRS.empty()
    rows = pl.concat([p.select(list(UNIT_PAIR_SCHEMA)) for p in frames])
    united = rows.group_by("image_id_a", "image_id_b").agg(
        pl.first("shard_a"),
        pl.first("shard_b"),
        pl.first("similarity"),
        # one row per clustering that found the pair: the sum of distinct bits is their OR
        pl.lit(2, pl.Int32).pow(pl.col("clustering")).sum().cast(pl.Int32).alias("found_by"),
    )
    return _with_names(united)


def _with_names(pairs: pl.DataFrame) -> pl.DataFrame:
    """Add the ``clusterings`` text ('0,2,3') and conform to ``duplicate_pairs``."""
    bits = pairs["found_by"].to_numpy()
    width = int(bits.max()).bit_length() if bits.size else 0
    names = [",".join(str(c) for c in range(width) if (v >> c) & 1) for v in bits.tolist()]
    return DUPLICATE_PAIRS.conform(
        pairs.with_columns(clusterings=pl.Series(names, dtype=pl.String))
    ).sort("image_id_a", "image_id_b")


def merge(
    old_pairs: pl.DataFrame,
    old_members: pl.DataFrame,
    unit_pairs: Sequence[pl.DataFrame],
    unit_endpoints: Sequence[pl.DataFrame],
    *,
    redone: Collection[str],
    policy: Sequence[str],
    tau: float,
    n_clusterings: int,
    floor: float | None = None,
    promote: Callable[[pl.DataFrame], pl.DataFrame] | None = None,
    vectors: VectorLookup | None = None,
) -> Merged:
    """Merge new pairs into the pair graph and re-decide every group.

    Args:
        old_pairs: Every committed stored pair, ``duplicate_pairs`` and ``candidate_pairs``
            (empty for a full run).
        old_members: The committed ``duplicate_members``.
        unit_pairs: The units' pairs (:class:`~curation_assets.lib.dedup.units.UnitResult`).
        unit_endpoints: The units' rows on those pairs.
        redone: Shards whose old rows are replaced (new, changed, gone or waiting): their
            pairs and members are dropped before the new pairs are added.
        policy: Keep policy.
        tau: Cosine threshold: groups are the components of the pairs ≥ τ.
        n_clusterings: Clusterings (for the per-clustering counts).
        floor: τ_min: pairs below it are dropped (None = τ: no candidate band). Units search
            at the floor, so the stored graph holds every pair ≥ τ_min.
        promote: Given the band (pairs in [τ_min, τ)), the ones that join the groups anyway
            (verified by local features: :mod:`~curation_assets.lib.dedup.verified`).
        vectors: The committed vectors of old members, by image_id (``duplicate_vectors``):
            read only for the members of the groups re-decided that are on no new pair.

    Returns:
        A :class:`Merged`.

    Raises:
        RuntimeError: If a new pair was already an old pair (a unit searched an old pair: the
            redone shards were not dropped; a bug, not data), or a re-decided member has no
            vector.

    Memory: the pairs and the rows on them, never the other images; the vectors of the new
    pairs' rows and of the groups re-decided (every one, in a full run or a change of τ).
    """
    gone = sorted(redone)
    keep_pair = ~(pl.col("shard_a").is_in(gone) | pl.col("shard_b").is_in(gone))
    base_pairs = old_pairs.filter(keep_pair) if old_pairs.height else DUPLICATE_PAIRS.empty()
    base_members = (
        old_members.filter(~pl.col("shard").is_in(gone))
        if old_members.height
        else DUPLICATE_MEMBERS.empty()
    )
    new_pairs = unite(unit_pairs)
    clash = new_pairs.join(base_pairs, on=["image_id_a", "image_id_b"], how="semi").height
    if clash:
        msg = f"{clash} new pairs were already committed pairs; the redone shards were not dropped"
        raise RuntimeError(msg)
    floor = tau if floor is None else floor
    every = pl.concat([base_pairs, new_pairs]).filter(pl.col("similarity") >= floor)
    every = every.sort("image_id_a", "image_id_b")
    pairs = every.filter(pl.col("similarity") >= tau)
    endpoints = [e.select(list(ENDPOINT_SCHEMA)) for e in unit_endpoints if e.height]
    nodes = pl.concat(
        [base_members.select(_NODE), *(e.select(_NODE) for e in endpoints)],
        how="vertical_relaxed",
    ).unique("image_id", keep="first")
    on_graph = pl.concat([every["image_id_a"], every["image_id_b"]]).unique().implode()
    nodes = nodes.filter(pl.col("image_id").is_in(on_graph)).sort("image_id", "shard")
    fresh = (
        pl.concat([e.select(DUPLICATE_VECTORS.column_names) for e in endpoints])
        .unique("image_id", keep="first")
        .filter(pl.col("image_id").is_in(on_graph))
        if endpoints
        else DUPLICATE_VECTORS.empty()
    )
    band = every.filter(pl.col("similarity") < tau)
    promoted = promote(band) if promote is not None and band.height else band.head(0)
    grouping = pl.concat([pairs, promoted]) if promoted.height else pairs
    members = _decide(nodes, grouping, policy, base_members, _lookup(fresh, vectors))
    stats = _stats(
        pairs, new_pairs.filter(pl.col("similarity") >= tau), members, tau, n_clusterings
    )
    stats["candidate_pairs"] = band.height
    stats["promoted_pairs"] = promoted.height
    changes, was_kept_now_removed = _changes(old_members, members, gone)
    stats["previously_kept_now_removed"] = was_kept_now_removed
    added = fresh.join(old_members.select("image_id"), on="image_id", how="anti")  # new to it
    return Merged(pairs, members, set(changes["shard"].to_list()), stats, band, changes, added)


def _lookup(
    fresh: pl.DataFrame, committed: VectorLookup | None
) -> Callable[[pl.Series], pl.Series]:
    """The vectors of some members, in their order: the new rows' (``fresh``), else committed.

    Raises:
        RuntimeError: If a member has neither (its vector row was lost: the state is torn).
    """

    def vectors_of(ids: pl.Series) -> pl.Series:
        want = ids.implode()
        known = fresh.filter(pl.col("image_id").is_in(want))
        missing = ids.filter(~ids.is_in(known["image_id"].implode()))
        if missing.len() and committed is not None:
            known = pl.concat([known, committed(missing).select(known.columns)])
        got = ids.to_frame("image_id").join(
            known.unique("image_id"), on="image_id", how="left", maintain_order="left"
        )
        if lost := got["vector"].null_count():
            msg = f"{lost} images on the pair graph have no vector in duplicate_vectors: torn"
            raise RuntimeError(msg)
        return got["vector"]

    return vectors_of


def _decide(
    nodes: pl.DataFrame,
    pairs: pl.DataFrame,
    policy: Sequence[str],
    old: pl.DataFrame,
    vectors_of: Callable[[pl.Series], pl.Series],
) -> pl.DataFrame:
    """Components and keep decisions of the graph's rows (``nodes`` sorted by image_id).

    A group's decisions depend only on who is in it (the policy ranks its members; each
    duplicate's similarity is to the kept one), so a group whose members are exactly one old
    group's (``old``: the committed members of the shards not redone) keeps its decisions, and
    the keep policy runs only over the other groups: those a new pair, a redone shard or a
    dropped pair changed (an update's, not the whole graph's). Same result as deciding all.
    Only those groups' vectors are read (``vectors_of``: image ids → vectors in their order).
    """
    n = nodes.height
    if n == 0:
        return DUPLICATE_MEMBERS.empty()
    row_of = nodes.select("image_id").with_row_index("_row")
    ij = (
        pairs.select("image_id_a", "image_id_b")
        .join(row_of.rename({"image_id": "image_id_a", "_row": "i"}), on="image_id_a")
        .join(row_of.rename({"image_id": "image_id_b", "_row": "j"}), on="image_id_b")
    )
    if ij.height != pairs.height:
        msg = f"{pairs.height - ij.height} pairs name an image with no vector; state is torn"
        raise RuntimeError(msg)
    i = ij["i"].to_numpy().astype(np.int64)
    j = ij["j"].to_numpy().astype(np.int64)
    graph = Pairs(np.minimum(i, j), np.maximum(i, j), np.zeros(i.size, np.float32))
    comp = connected_components(n, graph)
    ids = nodes["image_id"].to_numpy()
    before = _same_group_as_before(nodes, comp, old)
    todo = np.flatnonzero(~before["same"].to_numpy())
    sub = nodes[todo]
    choice = choose(
        _member_rows(vectors_of(sub["image_id"])),
        np.arange(todo.size),
        comp[todo],
        ImageMeta.of(sub),
        ids[todo],
        policy,
    )
    kept = before["kept"].to_numpy().astype(bool)
    kept[todo] = choice.kept
    keeper_ids = before["component_id"].to_numpy().astype(object)
    dup_ids = before["duplicate_of"].to_numpy().astype(object)
    sim = before["similarity"].cast(pl.Float32).to_numpy().astype(np.float32)
    local_keeper = np.where(choice.kept, np.arange(todo.size), choice.duplicate_of)
    keeper_ids[todo] = ids[todo][local_keeper]
    dup_local = ids[todo][np.maximum(choice.duplicate_of, 0)].astype(object)
    dup_local[choice.kept] = None
    dup_ids[todo] = dup_local
    sim[todo] = choice.similarity
    return DUPLICATE_MEMBERS.conform(
        nodes.with_columns(
            kept=pl.Series(kept),
            duplicate_of=pl.Series(dup_ids.tolist(), dtype=pl.String),
            similarity=pl.Series(sim).fill_nan(None),
            component_id=pl.Series(keeper_ids.tolist(), dtype=pl.String),
            component_size=pl.Series(component_sizes(comp)),
        )
    )


def _member_rows(vector: pl.Series) -> Rows:
    """The members' float16 vectors as :class:`~.pairs.Rows`: one copy, 2·d bytes a member.

    Reinterpreted in place of the Binary column, a chunk at a time (``Rows`` reads the chunks
    as one matrix and converts the rows it gathers to float32 exactly); converting the column
    through Arrow and NumPy held it three times (measured: +0.8 GB for 300k members).
    """
    if vector.is_empty():
        return Rows([np.zeros((0, 0), np.float16)])
    sizes = vector.bin.size().drop_nulls().to_numpy()
    dim = int(sizes.max()) // 2 if sizes.size else 0  # a null or odd row: half_parts says so
    _, parts = half_parts(vector.to_frame().lazy(), vector.name, dim)
    return Rows(parts or [np.zeros((0, dim), np.float16)])


def _same_group_as_before(nodes: pl.DataFrame, comp: np.ndarray, old: pl.DataFrame) -> pl.DataFrame:
    """Per node: ``same`` (its group is exactly one old group) and that group's old decision.

    A group is the same when every member is an old member, all of one old group, and that
    old group had as many members (a member it lost, e.g. to a redone shard, shows there).
    """
    keys = ["image_id", "shard"]
    decision = ["kept", "duplicate_of", "similarity", "component_id", "component_size"]
    joined = (
        nodes.select(keys)
        .with_columns(_comp=pl.Series(comp))
        .join(old.select(*keys, *decision), on=keys, how="left", maintain_order="left")
    )
    return joined.with_columns(
        same=(
            (pl.col("component_id").null_count() == 0)
            & (pl.col("component_id").n_unique() == 1)
            & (pl.col("component_size").first() == pl.len())
        ).over("_comp")
    )


def _stats(
    pairs: pl.DataFrame,
    new_pairs: pl.DataFrame,
    members: pl.DataFrame,
    tau: float,
    n_clusterings: int,
) -> dict[str, Any]:
    bits = pairs["found_by"].to_numpy().astype(np.int64)
    removed = members.filter(~pl.col("kept"))
    members = members.filter(pl.col("component_size") > 1)  # not the candidate-only images
    count = np.bincount(popcount(bits), minlength=n_clusterings + 1)[1:] if bits.size else []
    return {
        "pairs": pairs.height,
        "new_pairs": new_pairs.height,
        "images_on_pairs": members.height,
        "removed": removed.height,
        "components_with_duplicates": int(members["component_id"].n_unique())
        if members.height
        else 0,
        "largest_component": int(members["component_size"].to_numpy().max(initial=0)),
        "removed_below_tau": removed.filter(pl.col("similarity") < tau).height,
        "found_by_count": [int(v) for v in count],
        "pairs_per_clustering": [int(((bits >> c) & 1).sum()) for c in range(n_clusterings)],
    }


def _as_rows(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select("image_id", "shard", *_DECISION)


def _changes(
    old_members: pl.DataFrame, members: pl.DataFrame, gone: list[str]
) -> tuple[pl.DataFrame, int]:
    """Rows whose decisions changed (as now), and how many kept images became duplicates.

    Redone shards are rewritten anyway; among the others an image changes when its decision
    differs, counting an image off the graph as kept and alone.
    """
    old = _as_rows(old_members.filter(~pl.col("shard").is_in(gone)))
    new = _as_rows(members.filter(~pl.col("shard").is_in(gone)))
    both = old.join(new, on=["image_id", "shard"], how="full", coalesce=True, suffix="_new")
    # an image off the graph is kept, alone (duplicate_of and similarity null): joining a
    # group it keeps, or leaving one it kept, changes nothing in its deduplicated_images row
    both = both.with_columns(
        [
            pl.col(c).fill_null(pl.lit(True) if c.startswith("kept") else pl.col("image_id"))
            for c in ("kept", "kept_new", "component_id", "component_id_new")
        ]
    )
    differs = pl.any_horizontal([pl.col(c).ne_missing(pl.col(f"{c}_new")) for c in _DECISION])
    changed = both.filter(differs)
    flipped = changed.filter(pl.col("kept") & ~pl.col("kept_new")).height
    now = changed.select("image_id", "shard", *[pl.col(f"{c}_new").alias(c) for c in _DECISION])
    return DEDUPLICATED_IMAGES.conform(now).sort("shard", "image_id"), flipped
