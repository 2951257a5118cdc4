"""Peer baseline for ``curation bench dedup``: faiss ``IndexIVFFlat`` range search at τ.

What a faiss user would run instead of the project's five clusterings: one inverted-file index
(inner product, spherical k-means coarse quantizer with ``nlist`` = the K of one clustering,
trained on the same seeded sample as clustering 1), every row added, then every row searched as
a query with ``range_search`` at the same threshold as the exhaustive ground truth. ``nprobe``
(lists scanned per query) is doubled 1, 2, 4, … until the pair recall reaches the cluster
method's, measured on the same ground-truth pairs, then bisected between the last two powers
of two, so the chosen nprobe is the smallest reaching it.

Recall of a full run: a full run searches every row, so a true pair (i, j) is found when i's
search returns j *or* j's search returns i. When only a sample of queries is timed, the other
endpoints of the sampled true pairs (``partners``) are searched too (untimed) so the recall is
that of the full run; the time is that of the sampled queries only (a random sample of rows,
so its cost per query is unbiased), extrapolated to ``n`` queries and flagged.

:func:`sgemm_gflops` times one float32 matrix product, so that absolute figures from
different machines can be compared.
"""

import time
from typing import Any

import numpy as np

# faiss through lib.cluster, which configures OpenBLAS before faiss is first imported.
from curation_assets.lib.cluster import faiss
from curation_assets.lib.dedup import Pairs
from curation_assets.lib.dedup.pairs import SIM_MARGIN

#: Queries per ``range_search`` call (timed one by one for the median-based figure).
IVF_QUERY_BATCH = 1024
#: Largest nprobe tried by default (also capped at nlist).
IVF_NPROBE_CAP = 256
#: The stop rule of :func:`ivf_baseline` ignores searches shorter than this (timer noise).
STOP_FLOOR_S = 2.0


def sgemm_gflops(m: int = 4096, k: int = 512, n: int = 4096, repeats: int = 3) -> float:
    """GFLOP/s of numpy's float32 ``(m, k) @ (k, n)`` product (median of ``repeats``)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    _ = a @ b  # warm-up (thread pool start, page faults of the output)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        _ = a @ b
        times.append(time.perf_counter() - t)
    return round(2.0 * m * k * n / float(np.median(times)) / 1e9, 1)


def current_rss_mb() -> float:
    """Resident set size of this process now (``/proc/self/statm``; 0.0 where absent)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            pages = int(fh.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    import resource

    return pages * resource.getpagesize() / 2**20


def _nprobes(nlist: int, cap: int) -> list[int]:
    out, p = [], 1
    while p <= min(cap, nlist):
        out.append(p)
        p *= 2
    if out and out[-1] < min(cap, nlist):
        out.append(min(cap, nlist))
    return out


def _search(
    index: Any, x: np.ndarray, rows: np.ndarray, radius: float, batch: int
) -> tuple[np.ndarray, list[float]]:
    """Range search of ``x[rows]``: found pair keys (i < j, self-matches dropped), batch times."""
    keys: list[np.ndarray] = []
    seconds: list[float] = []
    for b0 in range(0, rows.size, batch):
        qi = rows[b0 : b0 + batch]
        q = np.ascontiguousarray(x[qi], dtype=np.float32)
        t = time.perf_counter()
        lims, _, found = index.range_search(q, radius)
        seconds.append(time.perf_counter() - t)
        a = np.repeat(qi.astype(np.int64), np.diff(lims).astype(np.int64))
        b = found.astype(np.int64)
        keep = a != b
        a, b = a[keep], b[keep]
        keys.append((np.minimum(a, b) << 32) | np.maximum(a, b))
    return (np.unique(np.concatenate(keys)) if keys else np.empty(0, np.int64)), seconds


def ivf_baseline(
    x: np.ndarray,
    truth: Pairs,
    query_idx: np.ndarray | None,
    *,
    nlist: int,
    tau: float,
    seed: int,
    niter: int,
    max_points_per_centroid: int,
    target_recall: float,
    nprobe_cap: int = IVF_NPROBE_CAP,
    stop_after_s: float | None = None,
    query_batch: int = IVF_QUERY_BATCH,
) -> dict[str, Any]:
    """Build an IVFFlat index over ``x`` and tune nprobe to reach ``target_recall``.

    Args:
        x: (n, d) float32, L2-normalized.
        truth: Exact pairs at ``tau`` touching the query rows (from ``exhaustive_pairs``).
        query_idx: Sorted sampled query rows, or None when every row is a query.
        nlist: Inverted lists (the K of one clustering).
        tau: Cosine threshold; the search radius is ``tau - SIM_MARGIN`` as for the truth.
        seed: Seeds the training sample (the same rows as clustering 1) and faiss k-means.
        niter: k-means iterations of the coarse quantizer.
        max_points_per_centroid: Training sample = ``nlist · max_points_per_centroid`` rows.
        target_recall: Pair recall to reach (the cluster method's, all clusterings).
        nprobe_cap: Largest nprobe tried (also at most ``nlist``).
        stop_after_s: Stop doubling nprobe once the search of the timed queries takes longer
            than this (the measured exhaustive search of the same queries: beyond it IVF is
            slower than brute force); ignored below ``STOP_FLOOR_S``.
        query_batch: Queries per ``range_search`` call.

    Returns:
        A JSON-ready dict: build (train, add) seconds (wall; ``*_cpu_s``: process CPU),
        index size and RSS growth, one entry per nprobe tried (recall, measured and
        extrapolated search seconds; sorted by nprobe, powers of two then the bisection
        between the last two), the chosen nprobe (smallest reaching the target) or
        ``target_reached: false`` and why it stopped.
    """
    n, d = x.shape
    radius = float(tau - SIM_MARGIN)
    rss0 = current_rss_mb()

    cpu0 = time.process_time()
    t0 = time.perf_counter()
    n_train = min(n, nlist * max_points_per_centroid)
    # The same rows as train_kmeans(seed=seed) samples for clustering 1.
    if n_train < n:
        pos = np.sort(np.random.default_rng(seed).choice(n, size=n_train, replace=False))
        sample = np.ascontiguousarray(x[pos], dtype=np.float32)
    else:
        sample = np.ascontiguousarray(x, dtype=np.float32)
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.spherical = True
    index.cp.niter = niter
    index.cp.seed = seed
    index.cp.min_points_per_centroid = 1
    index.cp.max_points_per_centroid = max(max_points_per_centroid, -(-n_train // nlist))
    index.train(sample)
    del sample
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for a0 in range(0, n, 65_536):
        index.add(np.ascontiguousarray(x[a0 : a0 + 65_536], dtype=np.float32))
    add_s = time.perf_counter() - t0
    build_s = train_s + add_s
    build_cpu_s = time.process_time() - cpu0
    rss_built = current_rss_mb()
    index_mb = (n * (d * 4 + 8) + nlist * d * 4) / 2**20
    list_sizes = np.array([index.get_list_size(i) for i in range(nlist)], dtype=np.int64)

    sampled = query_idx is not None
    queries = np.arange(n, dtype=np.int64) if query_idx is None else np.asarray(query_idx)
    queries = queries.astype(np.int64)
    is_query = np.zeros(n, dtype=bool)
    is_query[queries] = True
    ends = np.unique(np.concatenate([truth.i, truth.j]).astype(np.int64))
    partners = ends[~is_query[ends]]
    truth_keys = truth.keys()

    def measure(p: int) -> dict[str, Any]:
        index.nprobe = p
        cpu0 = time.process_time()
        found, batch_s = _search(index, x, queries, radius, query_batch)
        search_cpu_s = (time.process_time() - cpu0) * n / queries.size
        measured_s = float(sum(batch_s))
        if partners.size:
            found_p, _ = _search(index, x, partners, radius, query_batch)
            found = np.union1d(found, found_p)
        recall = (
            float(np.isin(truth_keys, found, assume_unique=True).mean())
            if len(truth)
            else float("nan")
        )
        per_query = [
            s / min(query_batch, queries.size - i * query_batch) for i, s in enumerate(batch_s)
        ]
        return {
            "nprobe": p,
            "recall": round(recall, 4),
            "recall_standard_error": round(
                float(np.sqrt(recall * (1 - recall) / max(len(truth), 1))), 4
            ),
            "search_measured_s": round(measured_s, 3),
            "search_s": round(measured_s * n / queries.size, 3),
            "search_s_median_based": round(float(np.median(per_query)) * n, 3),
            "search_cpu_s": round(search_cpu_s, 3),
            "_recall": recall,
            "_measured_s": measured_s,
        }

    def reaches(e: dict[str, Any]) -> bool:
        return e["_recall"] >= target_recall - 1e-12

    tried: list[dict[str, Any]] = []
    chosen: dict[str, Any] | None = None
    stopped = "nprobe cap reached"
    for p in _nprobes(nlist, nprobe_cap):
        entry = measure(p)
        tried.append(entry)
        if reaches(entry):
            chosen = entry
            stopped = "target recall reached"
            break
        measured_s = entry["_measured_s"]
        if stop_after_s is not None and measured_s > max(stop_after_s, STOP_FLOOR_S):
            stopped = (
                f"search of the timed queries ({measured_s:.1f} s) took longer than exhaustive "
                f"search of the same queries ({stop_after_s:.1f} s)"
            )
            break
    if chosen is not None and len(tried) > 1:
        # Bisect between the last power of two that missed and the one that reached, so the
        # chosen nprobe is the smallest integer reaching the target (recall grows with nprobe:
        # the lists probed at p are the first p of those probed at p + 1).
        lo, hi = tried[-2]["nprobe"], chosen["nprobe"]
        while hi - lo > 1:
            mid = (lo + hi) // 2
            entry = measure(mid)
            tried.append(entry)
            if reaches(entry):
                hi, chosen = mid, entry
            else:
                lo = mid
        tried.sort(key=lambda e: e["nprobe"])
    last = tried[-1]
    for e in tried:
        e.pop("_recall")
        e.pop("_measured_s")
    return {
        "method": "faiss IndexIVFFlat (METRIC_INNER_PRODUCT, spherical k-means quantizer) "
        "+ range_search; every row a query",
        "nlist": int(nlist),
        "radius": radius,
        "train_rows": int(n_train),
        "train_rows_note": "the same seeded sample as clustering 1 (seed, nlist = its K)",
        "niter": int(niter),
        "train_s": round(train_s, 2),
        "add_s": round(add_s, 2),
        "build_s": round(build_s, 2),
        "build_cpu_s": round(build_cpu_s, 2),
        "largest_list": int(list_sizes.max()) if list_sizes.size else 0,
        "index_mb": round(index_mb, 1),
        "rss_growth_mb": round(rss_built - rss0, 1),
        "queries_timed": int(queries.size),
        "search_extrapolated": bool(sampled),
        "search_note": (
            f"time of {queries.size} sampled queries x {n / queries.size:.1f}; recall of a "
            f"full run: the {partners.size} other endpoints of the sampled true pairs were "
            "searched too (untimed)"
            if sampled
            else "all n queries measured"
        ),
        "query_batch": int(query_batch),
        "target_recall": round(target_recall, 4),
        "nprobe_tried": tried,
        "recall_by_nprobe": [e["recall"] for e in tried],
        "target_reached": chosen is not None,
        "stopped_because": stopped,
        "chosen_nprobe": chosen["nprobe"] if chosen else None,
        "recall": chosen["recall"] if chosen else last["recall"],
        "search_s": chosen["search_s"] if chosen else last["search_s"],
        "search_s_median_based": (chosen or last)["search_s_median_based"],
        "total_s": round(build_s + (chosen or last)["search_s"], 2),
        "total_s_median_based": round(build_s + (chosen or last)["search_s_median_based"], 2),
        "total_cpu_s": round(build_cpu_s + (chosen or last)["search_cpu_s"], 2),
        "figures_at": f"nprobe={(chosen or last)['nprobe']}"
        + ("" if chosen else " (largest tried; target NOT reached)"),
    }


def compare(cluster_s: float, cluster_median_s: float, ivf: dict[str, Any]) -> dict[str, Any]:
    """Which method is faster at the cluster method's recall, and by how much (same run)."""
    ivf_s, ivf_med = float(ivf["total_s"]), float(ivf["total_s_median_based"])
    cluster_s = max(cluster_s, 1e-9)
    reached = bool(ivf["target_reached"])
    if not reached:
        verdict = (
            "IVF did not reach the cluster method's recall up to nprobe "
            f"{ivf['nprobe_tried'][-1]['nprobe']} ({ivf['stopped_because']}); "
            f"at that nprobe (recall {ivf['recall']}) it took {ivf_s / cluster_s:.2f}x the "
            "cluster method's time"
        )
        faster = (
            "cluster"
            if ivf_s >= cluster_s
            else "undetermined (IVF faster but at lower recall; target not reached)"
        )
    else:
        faster = "cluster" if cluster_s < ivf_s else "ivf"
        ratio = max(ivf_s, cluster_s) / max(min(ivf_s, cluster_s), 1e-9)
        verdict = (
            f"at recall >= {ivf['target_recall']}: {faster} is {ratio:.2f}x faster "
            f"(cluster {cluster_s:.1f} s, IVF nprobe={ivf['chosen_nprobe']} {ivf_s:.1f} s)"
        )
    return {
        "faster_at_equal_recall": faster,
        "ivf_over_cluster": round(ivf_s / cluster_s, 3),
        "ivf_over_cluster_median_based": round(ivf_med / max(cluster_median_s, 1e-9), 3),
        "equal_recall_verdict": verdict,
    }
