"""Incremental deduplication: add new rows without recomputing old-old pairs."""

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from curation_assets.lib.dedup.full import DedupResult, dedup, open_run, run_stats
from curation_assets.lib.dedup.keep import (
    DEFAULT_POLICY,
    ImageMeta,
    KeepChoice,
    MetaLike,
    check_policy,
    choose,
    component_sizes,
    connected_components,
)
from curation_assets.lib.dedup.pairs import (
    as_assignments,
    merge_disjoint,
    popcount,
    union_pairs,
    within_clusters,
)

logger = logging.getLogger(__name__)


@dataclass
class DedupState:
    """Everything an incremental run needs from the previous one.

    Attributes:
        x_parts: Embedding matrices of the rows so far, in row order (not concatenated; old
            parts may be memmaps: only rows in clusters that receive new rows are read).
        image_id: (n,) ids.
        meta: Per-row keep-policy fields.
        assignments: One (n, top) cluster-id array per clustering (centroids are fixed
            between incremental runs; retraining them requires a full :func:`dedup`).
        tau: Threshold the pairs were found at.
        policy: Keep policy.
        result: The decisions over all n rows.
    """

    x_parts: list[np.ndarray]
    image_id: np.ndarray
    meta: ImageMeta
    assignments: list[np.ndarray]
    tau: float
    policy: tuple[str, ...]
    result: DedupResult

    @classmethod
    def initial(
        cls,
        x: np.ndarray,
        ids: Any,
        meta: MetaLike,
        assignments_list: Sequence[np.ndarray],
        tau: float,
        policy: Sequence[str] = DEFAULT_POLICY,
        *,
        block: int = 2048,
    ) -> "DedupState":
        """Run a full :func:`dedup` and keep what the next incremental run needs."""
        result = dedup(x, ids, meta, assignments_list, tau, policy, block=block)
        n = result.image_id.shape[0]
        return cls(
            [x],
            result.image_id,
            ImageMeta.of(meta),
            [as_assignments(a, n) for a in assignments_list],
            tau,
            check_policy(policy),
            result,
        )


def dedup_incremental(
    old_state: DedupState,
    new_x: np.ndarray,
    new_ids: Any,
    new_meta: MetaLike,
    new_assignments: Sequence[np.ndarray],
    tau: float,
    policy: Sequence[str] = DEFAULT_POLICY,
    *,
    block: int = 2048,
) -> DedupState:
    """Add new rows to a deduplication without recomputing old-old pairs.

    New rows get row indices ``n_old .. n_old + n_new - 1``. Only pairs involving a new row
    are searched: each new row against all (old and new) rows of each of its clusters, in
    every clustering. They are merged with the old pairs (no old pair is lost or recomputed),
    components are recomputed (cheap: O(n + pairs)) and the keep policy is re-applied to the
    components that contain a new row; all other rows keep their decisions unchanged. The
    result is identical to :func:`dedup` on the concatenated data (same pairs, similarities,
    found_by bits, components and decisions).

    When a new image wins its component's keep policy (e.g. a higher-resolution copy of an
    image kept before arrives), the new image becomes the kept one, the previously kept image
    becomes a duplicate with ``duplicate_of`` = the new image (and its similarity to it), and
    every other member is re-pointed to the new image. A new row can also merge two old
    components (A~N~B): one image of the merged component is kept. Either way an image
    exported before may leave the curated set: ``stats["previously_kept_now_removed"]``
    counts such images so the asset can surface them. (Keeping the old choice "sticky" would
    make the outcome depend on arrival order and break equality with a full recompute.)

    Args:
        old_state: From :meth:`DedupState.initial` or a previous incremental run.
        new_x: (n_new, d) float32, L2-normalized.
        new_ids: (n_new,) ids.
        new_meta: width, height, ingested_at of the new rows.
        new_assignments: One (n_new,) or (n_new, top) array per clustering, from the SAME
            centroids (and top) as the old rows.
        tau: Must equal ``old_state.tau`` (old pairs were found at it).
        policy: Must equal ``old_state.policy``.
        block: Tile edge of the within-cluster search.

    Returns:
        A new state over ``n_old + n_new`` rows; ``result.stats`` holds the same keys as
        :func:`dedup` (over all rows) plus new_rows, new_pairs, affected_components,
        previously_kept_now_removed and seconds.

    Memory: rows of the clusters that receive new rows (one cluster at a time) + the pairs +
    O(n) per-row arrays.
    """
    n_old = old_state.image_id.shape[0]
    run = open_run(
        [*old_state.x_parts, new_x], new_ids, new_meta, tau, policy, n_old=n_old, prefix="new_"
    )
    policy = run.policy
    if tau != old_state.tau or policy != old_state.policy:
        msg = (
            f"tau={tau}, policy={policy} but the old state used tau={old_state.tau}, "
            f"policy={old_state.policy}; old pairs are only valid at their tau: run a full "
            "dedup() to change either"
        )
        raise ValueError(msg)
    if len(new_assignments) != len(old_state.assignments):
        msg = (
            f"{len(new_assignments)} new assignment arrays but the old state has "
            f"{len(old_state.assignments)} clusterings; assign the new rows with every "
            "clustering's centroids"
        )
        raise ValueError(msg)
    src, n = run.rows, run.rows.n
    n_new = n - n_old
    assignments = []
    for c, (old_a, a) in enumerate(zip(old_state.assignments, new_assignments, strict=True)):
        a2 = as_assignments(a, n_new)
        if a2.shape[1] != old_a.shape[1]:
            msg = (
                f"clustering {c}: new assignments have top={a2.shape[1]} but old ones "
                f"top={old_a.shape[1]}; assign new rows with the same top"
            )
            raise ValueError(msg)
        assignments.append(np.concatenate([old_a, a2.astype(old_a.dtype)]))
    is_new = np.zeros(n, dtype=bool)
    is_new[n_old:] = True
    per_new = [within_clusters(src, a, tau, block=block, is_query=is_new) for a in assignments]
    new_union = union_pairs(per_new)
    old = old_state.result
    pairs = merge_disjoint(old.pairs, new_union)
    t_pairs = time.perf_counter()

    comp = connected_components(n, pairs)
    affected_roots = np.unique(comp[n_old:])
    affected = np.flatnonzero(np.isin(comp, affected_roots))
    ids_all = np.concatenate([old_state.image_id, run.ids])
    meta_all = ImageMeta.concat([old_state.meta, run.meta])
    t_comp = time.perf_counter()
    choice = choose(
        src, affected, comp[affected], meta_all.take(affected), ids_all[affected], policy
    )
    kept = np.concatenate([old.kept, np.ones(n_new, dtype=bool)])
    dup_of = np.concatenate([old.duplicate_of, np.full(n_new, -1, dtype=np.int64)])
    sim = np.concatenate([old.similarity, np.full(n_new, np.nan, dtype=np.float32)])
    previously_kept = affected[(affected < n_old)]
    was_kept = old.kept[previously_kept]
    kept[affected], dup_of[affected], sim[affected] = choice
    size = component_sizes(comp)
    t_end = time.perf_counter()

    pairs.stats = {"pairs": len(pairs)}
    old_per = old.stats.get("pairs_per_clustering", [0] * len(per_new))
    found_by = pairs.found_by if pairs.found_by is not None else np.zeros(0, np.int32)
    found_by_count = np.bincount(popcount(found_by), minlength=len(per_new) + 1)[1:]
    stats = run_stats(
        run,
        searched=per_new,
        pairs_per_clustering=[o + len(p) for o, p in zip(old_per, per_new, strict=True)],
        pairs=pairs,
        found_by_count=[int(v) for v in found_by_count],
        choice=KeepChoice(kept, dup_of, sim),
        comp=comp,
        size=size,
        times=(t_pairs, t_comp, t_end),
        extra={
            "new_rows": n_new,
            "new_pairs": len(new_union),
            "affected_components": int(affected_roots.size),
            "affected_rows": int(affected.size),
            "previously_kept_now_removed": int((was_kept & ~kept[previously_kept]).sum()),
        },
    )
    logger.info(
        "incremental dedup +%d rows: %d new pairs, %d affected components, %d previously "
        "kept now removed, %.1fs",
        n_new,
        len(new_union),
        affected_roots.size,
        stats["previously_kept_now_removed"],
        stats["seconds"],
    )
    result = DedupResult(ids_all, kept, dup_of, sim, comp, size, pairs, stats)
    return DedupState(
        [*old_state.x_parts, new_x],
        ids_all,
        meta_all,
        assignments,
        tau,
        policy,
        result,
    )
