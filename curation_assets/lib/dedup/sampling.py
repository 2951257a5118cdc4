"""Pair recall on a budget, over the tables: the sample a dedup run measures and pools.

Split from :mod:`~curation_assets.lib.dedup.run` (which calls :func:`budgeted_recall`); the
in-memory measures (exhaustive pairs, recall by number of clusterings) are
:mod:`~curation_assets.lib.dedup.recall`.
"""

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl

from curation_assets.lib.dedup.plan import DedupPlan
from curation_assets.lib.dedup.recall import pooled_recall, recall_on_sample
from curation_assets.lib.memory import MemoryBudget
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import DEDUP_MEMBERS, DEDUP_RUNS
from curation_assets.lib.vectors import half_parts, rows_in_order

#: Fewest recall queries a run samples (below this a sample says little), and the most.
RECALL_MIN_QUERIES = 50
RECALL_MAX_QUERIES = 10_000
#: Fewest reference rows a recall sample reads (when the corpus has them).
RECALL_MIN_REFERENCE = 20_000


def budgeted_recall(
    store: DeltaStore,
    plan: DedupPlan,
    ready: Mapping[str, int],
    covered: set[str],
    counts: dict[str, int],
    *,
    versions: list[str],
    tau: float,
    comparisons: int,
    share: float,
    budget: MemoryBudget,
    dim: int,
    seed: int,
) -> dict[str, Any]:
    """This run's recall sample (budgeted), pooled with the earlier samples of these centroids.

    Queries: a seeded sample of this run's new rows (of the reference when full). Reference:
    the query shards plus randomly chosen other covered shards, up to a tenth of the corpus
    (full) or two rows per new row (incremental), at least :data:`RECALL_MIN_REFERENCE` rows
    and at most a quarter of the memory budget; when whole shards overshoot that, a uniform
    share of their rows (hash of the id, seeded), so the reference is the cap, not the sum of
    the shards' sizes. The sample's exhaustive search (queries ×
    reference) is capped at ``share`` of the run's own comparisons (at least
    :data:`RECALL_MIN_QUERIES` queries). The estimate covers pairs whose partner lies in the
    reference; shards are sampled at random, so it is unbiased for pairs across shards.
    """
    rng = np.random.default_rng(
        [seed, int(hashlib.sha256(",".join(sorted(ready)).encode()).hexdigest()[:8], 16)]
    )
    sizes = dict(ready)
    sizes.update({s: counts.get(s, 0) for s in covered - set(ready)})
    query_shards = sorted(ready)
    total = sum(sizes.get(s, 0) for s in covered)
    # the reference is read from the layout (clustering 0): keep that read a small share of the run
    # (a tenth of the corpus when full; two rows per new row when incremental, whose samples
    # are pooled over the updates since the last full run), within a quarter of the memory
    # budget
    wanted = total // 10 if plan.mode == "full" else 2 * sum(sizes[s] for s in query_shards)
    cap = min(
        budget.rows(4 * dim + 64, share=0.25, minimum=2_000),
        max(RECALL_MIN_REFERENCE, wanted),
    )
    if plan.mode == "full":  # queries come from the reference itself: sample shards
        order = list(rng.permutation(sorted(s for s in covered if sizes.get(s))))
        query_shards = []
    else:
        others = sorted(s for s in covered - set(ready) if sizes.get(s))
        order = [*query_shards, *(others[i] for i in rng.permutation(len(others)))]
    reference, rows = [], 0
    for s in order:
        if rows >= cap and reference:
            break
        reference.append(s)
        rows += sizes.get(s, 0)
    # shards come whole: past the cap, a uniform share of their rows (by a hash of the id,
    # in the scan) keeps the reference at the cap, so its memory does not follow shard size
    fraction = min(1.0, cap / rows) if rows else 1.0
    sample: dict[str, Any] = {"queries": 0, "true_pairs": 0, "found": []}
    if rows >= 2 and (plan.mode == "full" or query_shards):
        sample = _sample(
            store,
            reference,
            query_shards or reference,
            len(versions),
            dim,
            tau,
            comparisons,
            share,
            rng,
            fraction,
        )
    pooled_from = [sample]
    if plan.mode != "full" and plan.commit is not None:
        log = store.read(DEDUP_RUNS, version=plan.commit.outputs.get(DEDUP_RUNS.name))
        pooled_from = [*_samples_since_full(log, ",".join(versions), tau), sample]
    pooled = pooled_recall(pooled_from, len(versions))
    what = {"full": "all deduplicated rows", "retune": "no rows (a retune searches nothing)"}.get(
        plan.mode, "this run's new rows"
    )
    pooled["sample"] = sample
    pooled["measured_on"] = (
        f"{sample.get('queries', 0)} queries from {what} searched exhaustively against "
        f"{sample.get('reference_rows', 0)} rows of {len(reference)} shards"
        + (f" (a {fraction:.3g} share of their rows)" if fraction < 1.0 else "")
        + " (this run); pooled "
        f"with {len(pooled_from) - 1} earlier runs on these centroids: "
        f"{pooled['true_pairs']} true pairs"
    )
    return pooled


def _sample(
    store: DeltaStore,
    reference: list[str],
    query_shards: list[str],
    n_clusterings: int,
    dim: int,
    tau: float,
    comparisons: int,
    share: float,
    rng: np.random.Generator,
    fraction: float = 1.0,
) -> dict[str, Any]:
    # the reference shards' rows as dedup compared them: clustering 0 of the layout just
    # written holds every laid-out row once, float16, with its cluster in every clustering
    # (one scan; ~10x faster than the per-shard tables' float32 lists at 1M)
    rows = store.scan(DEDUP_MEMBERS).filter(
        (pl.col("clustering") == 0) & pl.col("shard").is_in(reference)
    )
    if fraction < 1.0:  # a uniform share of the rows, drawn with the run's seed
        salt = int(rng.integers(2**32))
        rows = rows.filter(pl.col("image_id").hash(salt) < int(fraction * 2**64))
    rows = rows.select("image_id", "shard", "clusters", "vector")
    frame, parts = half_parts(rows, "vector", dim)
    if frame.is_empty():
        return {"queries": 0, "true_pairs": 0, "found": []}
    # canonical order (the layout's is file order): the seeded sample does not depend on it
    order = np.lexsort((frame["image_id"].to_numpy(), frame["shard"].to_numpy()))
    frame = frame[order]
    x = rows_in_order(parts, order)
    del parts  # the float16 rows as read (x holds them once, in order)
    candidates = np.flatnonzero(frame["shard"].is_in(query_shards).to_numpy())
    wanted = int(share * comparisons / max(1, x.shape[0]))
    q = int(min(candidates.size, RECALL_MAX_QUERIES, max(RECALL_MIN_QUERIES, wanted)))
    query_idx = np.sort(rng.choice(candidates, size=q, replace=False))
    clusters = frame["clusters"].list.to_array(n_clusterings).to_numpy()
    assignments = [clusters[:, c] for c in range(n_clusterings)]
    sample = recall_on_sample(x, assignments, tau, query_idx)
    sample["reference_shards"] = len(reference)
    sample["reference_fraction"] = round(fraction, 6)
    return sample


def _samples_since_full(log: pl.DataFrame, versions: str, tau: float) -> list[dict[str, Any]]:
    """The recall samples at ``tau`` of the runs since the last full run on these centroids.

    A sample measured at another τ (before a retune) counts other pairs: it is not pooled.
    """
    if log.is_empty() or "recall_sample" not in log.columns:
        return []
    rows = log.sort("run_at").to_dicts()
    out: list[dict[str, Any]] = []
    for row in rows:
        if row.get("centroids_versions") != versions:
            out = []
            continue
        if row.get("mode") == "full":
            out = []
        if row.get("recall_sample") and row.get("tau") == tau:
            out.append(json.loads(row["recall_sample"]))
    return out
