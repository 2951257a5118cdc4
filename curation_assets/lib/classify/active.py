"""Active learning: choose the unlabelled images a person should label next.

For one category, :func:`build_label_queue` combines two sources of candidates:

1. **Neighbours of hard positives.** A *hard positive* is a labelled positive that
   cross-validation keeps missing: its out-of-fold score is below the threshold in more than
   half of the repeats (:func:`find_hard_positives`). When there is none, the lowest-scored
   10 % of the positives stand in. Images like a hard positive are where the probe is blind,
   so their nearest *unlabelled* neighbours (cosine, exact faiss ``IndexFlatIP``) are queued
   with reason ``neighbor_of_hard_positive:<image_id>``.
2. **Uncertainty sampling.** The unlabelled images whose score is closest to the threshold,
   reason ``uncertain_near_threshold``. For a zero-shot scorer without a threshold the
   highest-scored unlabelled images are queued instead (``top_zero_shot_score``): they are the
   likeliest positives, and positives are what such a category lacks.

**Ranking.** Neighbours come first, interleaved across hard positives: the nearest neighbour
of every hard positive (hardest positive first, i.e. lowest mean OOF score), then every second
nearest, and so on, so a short queue covers all hard positives. Uncertain images follow,
closest to the threshold first; neighbours leave at least ``min(n_uncertain, max_queue // 2)``
places to them. An image is queued once, with its first reason. Ties are
broken by image_id, so the queue is deterministic.

**Determinism.** :func:`build_label_queue` first sorts the corpus by image id, so the same
images, labels and classifier give the same queue in any input row order: the neighbour index
holds the unlabelled images in id order (faiss returns equal similarities in index order), the
subsample for a large corpus is drawn from that order with ``seed``, and each hard positive's
neighbours are ranked by similarity, then image id. Similarities come from a faiss (BLAS)
product whose last float32 bit can depend on the batch an image is searched in; with the
canonical order the batches are the same on every run.
"""

import logging
from collections.abc import Sequence
from typing import Protocol

import faiss
import numpy as np
import polars as pl

from curation_assets.lib.tables import LABEL_QUEUE

logger = logging.getLogger(__name__)


REASON_NEIGHBOR = "neighbor_of_hard_positive"
REASON_UNCERTAIN = "uncertain_near_threshold"
REASON_TOP_SCORE = "top_zero_shot_score"


class Scorer(Protocol):
    """What the queue needs from a classifier (a Probe or a ZeroShotScorer)."""

    category: str

    @property
    def threshold(self) -> float | None:
        """The filtering threshold (None: score only); read-only, so a Probe's float fits."""
        ...

    def score(self, x: np.ndarray) -> np.ndarray:
        """(n, d) float32 L2-normalized → (n,) float32 scores."""
        ...


def find_hard_positives(
    oof: pl.DataFrame,
    threshold: float,
    *,
    min_miss_fraction: float = 0.5,
    fallback_fraction: float = 0.1,
    min_count: int = 1,
) -> pl.DataFrame:
    """Labelled positives that cross-validation keeps missing.

    Args:
        oof: ``image_id``, ``label``, ``oof_score`` and ``oof_scores`` (one per repeat), as
            :meth:`~curation_assets.lib.classify.Probe.oof_frame` returns.
        threshold: The probe's threshold.
        min_miss_fraction: A positive is hard when the share of repeats scoring it below the
            threshold is greater than this.
        fallback_fraction: When none is hard, the lowest-scored share of positives (≥ 1).
        min_count: When fewer than this are hard, the lowest-scored positives that are not
            hard are added (marked ``fallback``) up to this count. The default 1 applies the
            fallback only when none is hard.

    Returns:
        ``image_id``, ``oof_score``, ``miss_fraction``, ``fallback`` (True when chosen by the
        fallback rule), hardest first (lowest mean OOF score, then image_id).
    """
    pos = oof.filter(pl.col("label") == 1).drop_nulls("image_id")
    pos = pos.with_columns(
        miss_fraction=(pl.col("oof_scores").list.eval(pl.element() < threshold).list.mean())
        .fill_null(0.0)
        .cast(pl.Float64)
    ).sort("oof_score", "image_id")
    is_hard = pl.col("miss_fraction") > min_miss_fraction
    hard = pos.filter(is_hard).with_columns(fallback=False)
    if hard.is_empty() and not pos.is_empty():
        n = max(1, int(np.ceil(fallback_fraction * pos.height)))
        hard = pos.head(n).with_columns(fallback=True)
    elif hard.height < min_count:
        extra = pos.filter(~is_hard).head(min_count - hard.height).with_columns(fallback=True)
        hard = pl.concat([hard, extra]).sort("oof_score", "image_id")
    return hard.select("image_id", "oof_score", "miss_fraction", "fallback")


def _ranked_neighbors(
    x_unl: np.ndarray,
    ids_unl: np.ndarray,
    queries: np.ndarray,
    query_ids: list[str],
    k: int,
) -> list[tuple[str, str, float]]:
    """``(image_id, hard_positive_id, similarity)`` interleaved by neighbour rank."""
    if x_unl.shape[0] == 0 or queries.shape[0] == 0 or k <= 0:
        return []
    index = faiss.IndexFlatIP(x_unl.shape[1])
    index.add(x_unl)
    k_eff = min(k, x_unl.shape[0])
    sims, idx = index.search(queries, k_eff)
    ranked = []
    for q in range(queries.shape[0]):  # per hard positive: most similar first, ties by id
        hits = [
            (-float(sims[q, j]), str(ids_unl[idx[q, j]])) for j in range(k_eff) if idx[q, j] >= 0
        ]
        ranked.append(sorted(hits))
    out = []
    for j in range(k_eff):  # j-th nearest of every hard positive, hardest first
        for q in range(queries.shape[0]):
            if j < len(ranked[q]):
                neg_sim, image_id = ranked[q][j]
                out.append((image_id, query_ids[q], -neg_sim))
    return out


def build_label_queue(
    x_all: np.ndarray,
    ids_all: Sequence[str],
    labelled_mask: np.ndarray,
    probe: Scorer,
    oof_scores_by_image: pl.DataFrame | None = None,
    *,
    k_neighbors: int = 10,
    n_uncertain: int = 100,
    max_queue: int = 500,
    seed: int = 0,
    max_index: int = 2_000_000,
    scores_all: np.ndarray | None = None,
    min_hard_positives: int = 1,
) -> pl.DataFrame:
    """Rank unlabelled images to label next for one category (see the module docstring).

    Memory: the unlabelled vectors are copied into a faiss flat index (≤ ``max_index`` rows,
    ``4 * d`` bytes each); the search is (hard positives × unlabelled), no N×N matrix.

    Args:
        x_all: (N, d) float32, L2-normalized embeddings of the corpus (labelled images
            included: hard positives are looked up here by id).
        ids_all: N image ids, unique, aligned with ``x_all``.
        labelled_mask: (N,) bool, True where the image already has a label for this category.
        probe: The category's classifier (``category``, ``threshold``, ``score``).
        oof_scores_by_image: Labelled images' OOF scores (``Probe.oof_frame()``); default: taken
            from ``probe`` when it is a trained probe, else no hard positives.
        k_neighbors: Unlabelled neighbours per hard positive.
        n_uncertain: Images queued by uncertainty (at most).
        max_queue: Queue length cap. Neighbours come first but leave
            ``min(n_uncertain, max_queue // 2)`` places to uncertain images.
        seed: Seed of the random subsample of unlabelled images when there are more than
            ``max_index`` of them (otherwise nothing is random).
        max_index: Cap on unlabelled images in the neighbour index.
        scores_all: Optional precomputed ``probe.score(x_all)`` (N,) float32.
        min_hard_positives: Top the hard positives up to this many with the lowest-scored
            other positives (:func:`find_hard_positives` ``min_count``). At a 0.99 recall
            target few positives are missed out of fold, so the default (1) may give only
            ``k_neighbors`` neighbours.

    Returns:
        Rows of :data:`LABEL_QUEUE`, ordered by rank.

    Raises:
        ValueError: On misaligned inputs or duplicate ids.
    """
    x = np.asarray(x_all)
    ids = np.asarray(list(ids_all), dtype=object)
    mask = np.asarray(labelled_mask, dtype=bool).ravel()
    if x.ndim != 2 or ids.shape[0] != x.shape[0] or mask.shape[0] != x.shape[0]:
        msg = (
            f"x_all {x.shape}, ids_all ({ids.shape[0]},) and labelled_mask ({mask.shape[0]},) "
            "must describe the same N images"
        )
        raise ValueError(msg)
    if len(set(ids.tolist())) != ids.shape[0]:
        msg = "ids_all holds duplicate image ids; pass each image once"
        raise ValueError(msg)
    if max_queue < 0 or n_uncertain < 0 or k_neighbors < 0:
        msg = f"max_queue={max_queue}, n_uncertain={n_uncertain}, k={k_neighbors} must be >= 0"
        raise ValueError(msg)
    if scores_all is not None and np.asarray(scores_all).size != x.shape[0]:
        msg = f"scores_all has {np.asarray(scores_all).size} scores for {x.shape[0]} images"
        raise ValueError(msg)
    # Canonical order (image id): nothing below depends on the order the rows came in.
    # Already sorted (the label_queue asset sorts) → no copy of the corpus beyond float32.
    canon = np.argsort(ids.astype(str), kind="stable")
    if np.array_equal(canon, np.arange(canon.size)):
        x = np.ascontiguousarray(x, dtype=np.float32)
    else:
        x = np.ascontiguousarray(x[canon], dtype=np.float32)
        ids, mask = ids[canon], mask[canon]
    scores = (
        np.asarray(probe.score(x), dtype=np.float32)
        if scores_all is None
        else np.asarray(scores_all, dtype=np.float32).ravel()[canon]
    )
    threshold = probe.threshold
    unl = np.flatnonzero(~mask)
    if unl.size > max_index:
        rng = np.random.default_rng(seed)
        unl = np.sort(rng.choice(unl, size=max_index, replace=False))
        logger.info("label queue: neighbour index subsampled to %d (seed %d)", max_index, seed)

    # 1. Neighbours of hard positives.
    oof = oof_scores_by_image
    oof_frame = getattr(probe, "oof_frame", None)
    if oof is None and callable(oof_frame):
        frame = oof_frame()
        oof = frame if isinstance(frame, pl.DataFrame) else None
    neighbors: list[tuple[str, str, float]] = []
    n_hard = 0
    if oof is not None and threshold is not None:
        hard = find_hard_positives(oof, threshold, min_count=min_hard_positives)
        pos_of = {image_id: i for i, image_id in enumerate(ids.tolist())}
        hard_ids = [h for h in hard["image_id"].to_list() if h in pos_of]
        if len(hard_ids) < hard.height:
            logger.warning(
                "label queue %s: %d hard positives are not in ids_all and are ignored",
                probe.category,
                hard.height - len(hard_ids),
            )
        n_hard = len(hard_ids)
        if hard_ids:
            queries = x[[pos_of[h] for h in hard_ids]]
            neighbors = _ranked_neighbors(x[unl], ids[unl], queries, hard_ids, k_neighbors)

    reserved = min(n_uncertain, max_queue // 2)
    rows: list[tuple[str, str, float | None]] = []
    seen: set[str] = set()
    for image_id, hp, sim in neighbors:
        if len(rows) >= max_queue - reserved:
            break
        if image_id not in seen:
            seen.add(image_id)
            rows.append((image_id, f"{REASON_NEIGHBOR}:{hp}", sim))

    # 2. Uncertainty sampling among all unlabelled images (not only the index subsample).
    all_unl = np.flatnonzero(~mask)
    if threshold is not None:
        key = np.abs(scores[all_unl].astype(np.float64) - threshold)
        reason = REASON_UNCERTAIN
    else:
        key = -scores[all_unl].astype(np.float64)
        reason = REASON_TOP_SCORE
    order = all_unl[np.lexsort((ids[all_unl].astype(str), key))]
    n_added = 0
    for i in order:
        if n_added >= n_uncertain or len(rows) >= max_queue:
            break
        image_id = str(ids[i])
        if image_id not in seen:
            seen.add(image_id)
            rows.append((image_id, reason, None))
            n_added += 1

    pos_of_all = {image_id: i for i, image_id in enumerate(ids.tolist())}
    queue = pl.DataFrame(
        {
            "rank": pl.Series(np.arange(1, len(rows) + 1), dtype=pl.Int32),
            "image_id": pl.Series([r[0] for r in rows], dtype=pl.String),
            "category": pl.Series([probe.category] * len(rows), dtype=pl.String),
            "reason": pl.Series([r[1] for r in rows], dtype=pl.String),
            "score": pl.Series([float(scores[pos_of_all[r[0]]]) for r in rows], dtype=pl.Float32),
            "similarity": pl.Series([r[2] for r in rows], dtype=pl.Float32),
            "threshold": pl.Series([threshold] * len(rows), dtype=pl.Float32),
        }
    )
    logger.info(
        "label queue %s: %d hard positives -> %d neighbours, %d %s (of %d unlabelled)",
        probe.category,
        n_hard,
        len(rows) - n_added,
        n_added,
        reason,
        all_unl.size,
    )
    return LABEL_QUEUE.conform(queue)


def build_label_queues(
    x_all: np.ndarray,
    ids_all: Sequence[str],
    labels: pl.DataFrame,
    classifiers: Sequence[Scorer],
) -> pl.DataFrame:
    """:func:`build_label_queue` for every classifier, one after the other.

    Args:
        x_all: (N, d) float32, L2-normalized embeddings of the corpus, sorted by image id.
        ids_all: N image ids aligned with ``x_all``.
        labels: The labels in force (``image_id``, ``category``).
        classifiers: The classifiers in force.

    Returns:
        Rows of :data:`LABEL_QUEUE`, category after category (empty without classifiers).
    """
    ids = list(ids_all)
    queues = []
    for clf in classifiers:
        done = set(labels.filter(pl.col("category") == clf.category)["image_id"].to_list())
        mask = np.fromiter((i in done for i in ids), dtype=bool, count=len(ids))
        queues.append(build_label_queue(x_all, ids, mask, clf))
    return pl.concat(queues) if queues else LABEL_QUEUE.empty()


def queue_reasons(queue: pl.DataFrame) -> dict[str, int]:
    """Queued images per reason kind (``neighbor_of_hard_positive`` without its image id)."""
    counts = queue["reason"].str.split(":").list.first().value_counts().rows()
    return {str(k): int(v) for k, v in counts}
