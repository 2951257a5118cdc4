"""Ground truth and recall: exhaustive pair search, and pair recall of 1..C clusterings."""

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

# faiss through lib.cluster, which configures OpenBLAS before faiss is first imported.
from curation_assets.lib.cluster import faiss
from curation_assets.lib.dedup.pairs import (
    SIM_MARGIN,
    Pairs,
    Rows,
    as_assignments,
    check_tau,
    finish_pairs,
    split_keys,
    within_clusters,
)


def exhaustive_pairs(
    x: np.ndarray,
    tau: float,
    *,
    query_idx: np.ndarray | None = None,
    query_batch: int = 4096,
    db_chunk: int = 65_536,
) -> Pairs:
    """Exact pairs with cosine ≥ ``tau`` by faiss range search (ground truth for recall).

    Args:
        x: (n, d) float32 or float16 (converted a chunk at a time, exactly), L2-normalized.
        tau: Cosine threshold.
        query_idx: Query rows (None = all rows): returns every pair with at least one endpoint
            among them, against ALL rows.
        query_batch: Queries per faiss ``range_search`` call.
        db_chunk: Database rows per IndexFlatIP (the database is indexed chunk by chunk so
            that it is never copied whole).

    Returns:
        Pairs (i < j) sorted, canonical similarities; ``stats``: queries, comparisons,
        seconds, db_chunks and seconds_median_based (median time per database chunk, scaled
        to all rows: robust to a noisy machine). Cost: ``queries · n · d`` multiply-adds
        (all rows: n², not n²/2).

    Candidates at ``tau − SIM_MARGIN`` come from sgemm blocks when there are at most
    :data:`GRAM_MAX_QUERIES` queries (a sampled recall), else from faiss's flat range search;
    either way :func:`~.pairs.finish_pairs` recomputes every similarity exactly, so both give
    the same pairs.

    Memory: one database chunk (``4 · db_chunk · d`` bytes; with few queries an 8,192-row
    block) + the query rows (``4 · queries · d``) + faiss's range-search result buffers.
    """
    check_tau(tau)
    t0 = time.perf_counter()
    src = Rows([x])
    n = src.n
    q_idx = np.arange(n) if query_idx is None else np.unique(np.asarray(query_idx, np.int64))
    is_query = np.zeros(n, dtype=bool)
    is_query[q_idx] = True
    lo = float(tau - SIM_MARGIN)
    ci: list[np.ndarray] = []
    cj: list[np.ndarray] = []
    chunk_seconds: list[float] = []
    gram = _Gram(src, q_idx) if q_idx.size <= GRAM_MAX_QUERIES else None
    for d0 in range(0, n, db_chunk):
        t_chunk = time.perf_counter()
        d1 = min(n, d0 + db_chunk)
        for qrow, prow in (
            gram.search(d0, d1, lo) if gram else _faiss_chunk(src, q_idx, d0, d1, lo, query_batch)
        ):
            # Each unordered pair once: drop self-matches; when both ends are queries keep
            # the occurrence whose query is the smaller row.
            keep = (qrow != prow) & (~is_query[prow] | (qrow < prow))
            a, b = qrow[keep], prow[keep]
            ci.append(np.minimum(a, b))
            cj.append(np.maximum(a, b))
        chunk_seconds.append(time.perf_counter() - t_chunk)
    pairs = finish_pairs(src, ci, cj, tau)
    rate = [s / min(db_chunk, n - c * db_chunk) for c, s in enumerate(chunk_seconds)]
    pairs.stats = {
        "queries": int(q_idx.size),
        "comparisons": int(q_idx.size) * n,
        "seconds": time.perf_counter() - t0,
        "db_chunks": len(chunk_seconds),
        # Noise-robust estimate: median seconds per database row x n.
        "seconds_median_based": float(np.median(rate)) * n if rate else 0.0,
    }
    return pairs


#: Up to this many queries the candidates come from plain sgemm blocks (:class:`_Gram`); above
#: it, from faiss's flat range search. Measured here (2 cores, AVX-512), queries against 200k
#: float16 rows: 97 queries 0.29 s against faiss's 1.8 s, 1,000 queries even (1.27 s), 4,096
#: queries faiss 3.8 s against 4.6 s. A sampled recall on an incremental run has ~100 queries.
GRAM_MAX_QUERIES = 1024


class _Gram:
    """Candidate pairs of a few queries by sgemm over database blocks, in reused buffers.

    Memory: the queries as float32, one ``block × d`` float32 block and one
    ``queries × block`` similarity block (≤ 32 MiB at 1,024 queries).
    """

    def __init__(self, src: Rows, q_idx: np.ndarray, block: int = 8192) -> None:
        self.src, self.q_idx = src, q_idx
        self.queries = src.take(q_idx)
        self.block = block
        self.sims = np.empty((q_idx.size, block), dtype=np.float32)

    def search(self, d0: int, d1: int, lo: float):
        """``(query rows, database rows)`` with similarity ≥ ``lo``, per block of ``[d0, d1)``."""
        for s0 in range(d0, d1, self.block):
            s1 = min(d1, s0 + self.block)
            sims = self.sims[:, : s1 - s0]
            np.matmul(self.queries, self.src.block(s0, s1).T, out=sims)
            q, p = np.nonzero(sims >= np.float32(lo))
            yield self.q_idx[q], p.astype(np.int64) + s0


def _faiss_chunk(src: Rows, q_idx: np.ndarray, d0: int, d1: int, lo: float, query_batch: int):
    """``(query rows, database rows)`` with similarity ≥ ``lo``: faiss range search, per batch."""
    index = faiss.IndexFlatIP(src.d)
    index.add(src.block(d0, d1))
    for q0 in range(0, q_idx.size, query_batch):
        qi = q_idx[q0 : q0 + query_batch]
        lims, _, found = index.range_search(src.take(qi), lo)
        yield np.repeat(qi, np.diff(lims).astype(np.int64)), found.astype(np.int64) + d0


def pair_recall(found: Pairs, truth: Pairs) -> float:
    """Fraction of ``truth`` pairs present in ``found`` (NaN when ``truth`` is empty)."""
    if len(truth) == 0:
        return float("nan")
    return float(np.isin(truth.keys(), found.keys(), assume_unique=True).mean())


def _touching(p: Pairs, is_query: np.ndarray) -> Pairs:
    keep = is_query[p.i] | is_query[p.j]
    return Pairs(p.i[keep], p.j[keep], p.sim[keep])


def recall_curve(
    found_list: Sequence[Pairs], truth: Pairs, *, query_rows: np.ndarray | None = None
) -> list[float]:
    """Recall of the cumulative union of clusterings 1, 1..2, ..., 1..C against ``truth``.

    Args:
        found_list: Pairs per clustering, in order.
        truth: True pairs (e.g. :func:`exhaustive_pairs`, possibly on sampled queries).
        query_rows: When ``truth`` covers only pairs touching sampled rows, those rows (an
            (n,) bool mask or indices): found pairs are restricted the same way.

    Returns:
        C recalls, non-decreasing.
    """
    mask = None
    if query_rows is not None:
        q = np.asarray(query_rows)
        if q.dtype != bool:
            n = int(max([*(int(p.j.max()) + 1 for p in found_list if len(p)), int(q.max()) + 1]))
            mask = np.zeros(n, dtype=bool)
            mask[q] = True
        else:
            mask = q
    keys = np.empty(0, np.int64)
    out = []
    for p in found_list:
        p2 = _touching(p, mask) if mask is not None else p
        keys = np.union1d(keys, p2.keys())
        out.append(pair_recall(Pairs(*split_keys(keys), np.empty(0, np.float32)), truth))
    return out


def recall_by_num_clusterings(
    x: np.ndarray,
    assignments_list: Sequence[np.ndarray],
    tau: float,
    *,
    sample_size: int = 10_000,
    seed: int = 0,
    block: int = 2048,
) -> dict[str, Any]:
    """Pair recall of 1, 2, ..., C clusterings (cumulative union) against exhaustive search.

    A seeded random sample of query rows is searched exhaustively against ALL rows (true
    pairs = pairs with at least one endpoint in the sample) and within their clusters.

    Args:
        x: (n, d) float32, L2-normalized.
        assignments_list: (n,) or (n, top) cluster ids per clustering.
        tau: Cosine threshold.
        sample_size: Query rows (≤ n; at most 10 000 is plenty: cost is sample · n · d).
        seed: Seeds the sample.
        block: Tile edge of the within-cluster search.

    Returns:
        ``{"recall": [r1, ..., rC], "true_pairs", "found_pairs": [cumulative counts],
        "sample_size", "seed", "tau", "seconds_exhaustive", "seconds_clusters"}``.
    """
    src = Rows([x])
    n = src.n
    size = min(sample_size, n)
    sample = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
    is_query = np.zeros(n, dtype=bool)
    is_query[sample] = True
    truth = exhaustive_pairs(x, tau, query_idx=sample)
    t0 = time.perf_counter()
    found = [
        within_clusters(src, as_assignments(a, n), tau, block=block, is_query=is_query)
        for a in assignments_list
    ]
    seconds = time.perf_counter() - t0
    recall = recall_curve(found, truth)
    cumulative = []
    keys = np.empty(0, np.int64)
    for p in found:
        keys = np.union1d(keys, p.keys())
        cumulative.append(int(keys.size))
    return {
        "recall": recall,
        "true_pairs": len(truth),
        "found_pairs": cumulative,
        "sample_size": int(size),
        "seed": int(seed),
        "tau": float(tau),
        "seconds_exhaustive": round(float(truth.stats["seconds"]), 3),
        "seconds_clusters": round(seconds, 3),
    }


def recall_on_sample(
    x: np.ndarray,
    assignments_list: Sequence[np.ndarray],
    tau: float,
    query_idx: np.ndarray,
) -> dict[str, Any]:
    """Pair recall of 1..C clusterings on a sample: queries against a reference set.

    The true pairs are every pair at cosine ≥ ``tau`` with an endpoint among the queries and
    the other in ``x`` (exhaustive search, :func:`exhaustive_pairs`). Clustering c finds a
    pair exactly when both ends share its cluster (the within-cluster search is exhaustive
    inside a cluster), so no within-cluster search is repeated here.

    Args:
        x: (m, d) reference rows (the queries among them), L2-normalized; float16 is searched
            as its exact float32 values (:func:`exhaustive_pairs`).
        assignments_list: (m,) cluster id per clustering.
        tau: Cosine threshold.
        query_idx: Rows of ``x`` that are queries.

    Returns:
        ``{"true_pairs", "found": [pairs found by the union of clusterings 1..c], "queries",
        "reference_rows", "comparisons", "seconds_exhaustive"}``; :func:`pooled_recall` turns
        one or more of these into recall and its standard error.
    """
    # 16k database rows a chunk: the chunk and faiss's copy of it are 64 MiB, not 256 MiB
    # (a full run's sample has a few thousand queries: faiss's range search)
    truth = exhaustive_pairs(x, tau, query_idx=query_idx, db_chunk=16_384)
    hit = np.zeros(len(truth), dtype=bool)
    found = []
    for a in assignments_list:
        a = np.asarray(a)
        hit |= a[truth.i] == a[truth.j]
        found.append(int(hit.sum()))
    return {
        "true_pairs": len(truth),
        "found": found,
        "queries": int(np.unique(query_idx).size),
        "reference_rows": int(x.shape[0]),
        "comparisons": int(truth.stats.get("comparisons", 0)) if truth.stats else 0,
        "seconds_exhaustive": round(float((truth.stats or {}).get("seconds", 0.0)), 3),
    }


def pooled_recall(samples: Sequence[dict[str, Any]], n_clusterings: int) -> dict[str, Any]:
    """Recall of 1..C clusterings pooled over samples, with standard errors.

    Pooling the samples of several runs (each on its new rows) gives the recall of the
    current clusterings a precision no single small sample has. The standard error is the
    Agresti–Coull one, ``sqrt(p(1 − p)/(t + 4))`` with ``p = (found + 2)/(t + 4)``: unlike
    ``sqrt(r(1 − r)/t)`` it is not 0 when every one of few true pairs was found (41 of 41
    gives ±0.03, not ±0). It treats the t true pairs as independent (pairs inside one
    near-duplicate group are not, so it is a lower bound).

    Returns:
        ``{"recall": [...], "stderr": [...], "true_pairs", "samples", "queries"}``; empty lists
        when no true pair was seen.
    """
    true = sum(int(s.get("true_pairs", 0)) for s in samples)
    found = np.zeros(n_clusterings, dtype=np.int64)
    for s in samples:
        f = s.get("found") or [0] * n_clusterings
        found += np.asarray(f[:n_clusterings] + [f[-1]] * (n_clusterings - len(f)), np.int64)
    if not true:
        return {
            "recall": [],
            "stderr": [],
            "true_pairs": 0,
            "samples": len(samples),
            "queries": sum(int(s.get("queries", 0)) for s in samples),
        }
    r = found / true
    p = (found + 2) / (true + 4)
    return {
        "recall": [round(float(v), 4) for v in r],
        "stderr": [round(float(np.sqrt(v * (1 - v) / (true + 4))), 4) for v in p],
        "true_pairs": true,
        "samples": len(samples),
        "queries": sum(int(s.get("queries", 0)) for s in samples),
    }
