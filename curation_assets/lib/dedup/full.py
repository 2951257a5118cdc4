"""Full deduplication: within-cluster pairs of every clustering → union → components → keep."""

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from curation_assets.lib.dedup.keep import (
    DEFAULT_POLICY,
    ImageMeta,
    KeepChoice,
    MetaLike,
    as_ids,
    check_policy,
    choose,
    component_sizes,
    connected_components,
    decision_summary,
)
from curation_assets.lib.dedup.pairs import (
    Pairs,
    Rows,
    as_assignments,
    check_tau,
    union_pairs,
    within_clusters,
)

logger = logging.getLogger(__name__)


@dataclass
class DedupResult:
    """Per-image decisions and the pairs behind them, (n,) arrays in row order.

    Attributes:
        image_id: (n,) stable ids.
        kept: (n,) bool.
        duplicate_of: (n,) int64 row of the kept image of the component, -1 for kept rows.
        similarity: (n,) float32 cosine to that kept image, NaN for kept rows.
        component_id: (n,) int64, the smallest row index in the component.
        component_size: (n,) int64.
        pairs: Union of the clusterings' pairs with ``found_by`` bitmask.
        stats: See :func:`dedup`.
    """

    image_id: np.ndarray
    kept: np.ndarray
    duplicate_of: np.ndarray
    similarity: np.ndarray
    component_id: np.ndarray
    component_size: np.ndarray
    pairs: Pairs
    stats: dict[str, Any]

    def images_frame(self) -> pl.DataFrame:
        """Polars frame, one row per image.

        Columns: image_id, kept, duplicate_of (image_id of the kept image, null for kept
        rows), similarity (null for kept rows), component_id, component_size.
        """
        dup = self.duplicate_of
        dup_ids = pl.Series("duplicate_of", self.image_id[np.maximum(dup, 0)])
        dup_ids = dup_ids.scatter(np.flatnonzero(dup < 0), None)
        return pl.DataFrame(
            {
                "image_id": self.image_id,
                "kept": self.kept,
                "duplicate_of": dup_ids,
                "similarity": self.similarity,
                "component_id": self.component_id,
                "component_size": self.component_size,
            }
        ).with_columns(pl.col("similarity").fill_nan(None))

    def pairs_frame(self) -> pl.DataFrame:
        """One row per pair: image_id_i, image_id_j, i, j, similarity, found_by."""
        return self.pairs.frame().with_columns(
            image_id_i=pl.Series(self.image_id[self.pairs.i]),
            image_id_j=pl.Series(self.image_id[self.pairs.j]),
        )


@dataclass
class RunOpening:
    """The checked inputs every deduplication run starts from (full or incremental).

    Attributes:
        rows: Embeddings of every row: the rows already deduplicated, then the added ones.
        ids: (n_added,) ids of the added rows.
        meta: Keep-policy fields of the added rows.
        tau: The cosine threshold.
        policy: The keep policy, checked.
        t0: ``time.perf_counter()`` when the run started.
    """

    rows: Rows
    ids: np.ndarray
    meta: ImageMeta
    tau: float
    policy: tuple[str, ...]
    t0: float


def open_run(
    x_parts: Sequence[np.ndarray],
    ids: Any,
    meta: MetaLike,
    tau: float,
    policy: Sequence[str],
    *,
    n_old: int = 0,
    prefix: str = "",
) -> RunOpening:
    """The opening of :func:`dedup` and :func:`~curation_assets.lib.dedup.dedup_incremental`.

    Checks τ and the policy, stacks the embedding parts (no copy) and checks that ``ids`` and
    ``meta`` hold one row per added embedding (the rows after the first ``n_old``).

    Args:
        x_parts: (n_p, d) float32 L2-normalized embedding matrices, in row order.
        ids: Ids of the added rows.
        meta: width, height, ingested_at of the added rows.
        tau: Cosine threshold in (0, 1].
        policy: Keep policy criteria.
        n_old: Rows already deduplicated (0 for a full run).
        prefix: Prefix of the argument names in error messages (``new_`` for an increment).

    Raises:
        ValueError: If τ, the policy, the shapes or the number of ids or meta rows are wrong.
    """
    check_tau(tau)
    checked = check_policy(policy)
    t0 = time.perf_counter()
    rows = Rows(x_parts)
    n = rows.n - n_old
    ids_arr = as_ids(ids, n)
    meta_ = ImageMeta.of(meta)
    if len(meta_) != n:
        msg = (
            f"{prefix}meta has {len(meta_)} rows but {prefix}x has {n}; pass one meta row per "
            "embedding"
        )
        raise ValueError(msg)
    return RunOpening(rows, ids_arr, meta_, tau, checked, t0)


def run_stats(
    run: RunOpening,
    *,
    searched: Sequence[Pairs],
    pairs_per_clustering: list[int],
    pairs: Pairs,
    found_by_count: list[int],
    choice: KeepChoice,
    comp: np.ndarray,
    size: np.ndarray,
    times: tuple[float, float, float],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The statistics of a run (see :func:`dedup`); ``extra`` goes before the timings.

    Args:
        run: The run's opening.
        searched: Pairs each clustering's search found in this run.
        pairs_per_clustering: Pairs of each clustering over all rows.
        pairs: The union over all rows.
        found_by_count: Pairs found by exactly 1, 2, ... clusterings.
        choice: Keep decisions over all rows.
        comp: (n,) component ids.
        size: (n,) component sizes.
        times: ``perf_counter()`` after the pairs, the components and the keep policy.
        extra: Statistics only an incremental run has.
    """
    t_pairs, t_comp, t_end = times
    return {
        "n": int(comp.shape[0]),
        "tau": run.tau,
        "policy": list(run.policy),
        "clusterings": len(searched),
        "pairs_per_clustering": pairs_per_clustering,
        "pairs_union": len(pairs),
        "found_by_count": found_by_count,
        **decision_summary(choice.kept, choice.similarity, comp, size, run.tau),
        "comparisons": int(sum(p.stats["comparisons"] for p in searched)),
        **(extra or {}),
        "seconds_pairs": round(t_pairs - run.t0, 3),
        "seconds_components": round(t_comp - t_pairs, 3),
        "seconds_keep": round(t_end - t_comp, 3),
        "seconds": round(t_end - run.t0, 3),
    }


def dedup(
    x: np.ndarray,
    ids: Any,
    meta: MetaLike,
    assignments_list: Sequence[np.ndarray],
    tau: float,
    policy: Sequence[str] = DEFAULT_POLICY,
    *,
    block: int = 2048,
) -> DedupResult:
    """Deduplicate: within-cluster pairs of every clustering → union → components → keep.

    Args:
        x: (n, d) float32, L2-normalized (a memmap works; clusters are gathered one by one).
        ids: (n,) image ids (str).
        meta: width, height, ingested_at per row (:class:`ImageMeta`, mapping or polars frame).
        assignments_list: One (n,) or (n, top) cluster-id array per clustering.
        tau: Cosine threshold (:func:`calibrated_tau`).
        policy: Keep policy (:func:`choose_kept`).
        block: Tile edge of the within-cluster search (:func:`pairs_within_clusters`).

    Returns:
        :class:`DedupResult`. ``stats``: n, tau, policy, clusterings, pairs_per_clustering,
        pairs_union, found_by_count, kept, removed, components, components_with_duplicates,
        largest_component, removed_below_tau, min_similarity_to_kept, comparisons and seconds
        (pairs, components, keep, total).

    Memory: per clustering as :func:`pairs_within_clusters`; plus O(n + pairs) for the graph.
    """
    run = open_run([x], ids, meta, tau, policy)
    src, n = run.rows, run.rows.n
    per = [
        within_clusters(src, as_assignments(a, n), tau, block=block, is_query=None)
        for a in assignments_list
    ]
    union = union_pairs(per)
    t_pairs = time.perf_counter()
    comp = connected_components(n, union)
    t_comp = time.perf_counter()
    choice = choose(src, np.arange(n), comp, run.meta, run.ids, run.policy)
    size = component_sizes(comp)
    stats = run_stats(
        run,
        searched=per,
        pairs_per_clustering=[len(p) for p in per],
        pairs=union,
        found_by_count=union.stats["found_by_count"],
        choice=choice,
        comp=comp,
        size=size,
        times=(t_pairs, t_comp, time.perf_counter()),
    )
    logger.info(
        "dedup n=%d tau=%.3f: %d pairs (%s per clustering), %d removed, %.1fs",
        n,
        tau,
        len(union),
        stats["pairs_per_clustering"],
        stats["removed"],
        stats["seconds"],
    )
    return DedupResult(
        run.ids, choice.kept, choice.duplicate_of, choice.similarity, comp, size, union, stats
    )
