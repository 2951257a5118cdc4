"""Benchmarks of cluster-based near-duplicate search (JSON-ready dicts; never timed tests).

* :func:`bench_dedup` — synthetic CLIP-like embeddings (:mod:`curation_assets.tools.synthetic`):
  five k-means clusterings + within-cluster pair search versus exhaustive faiss range search:
  wall times, their ratio, pair recall of 1..5 clusterings, peak memory.
* :func:`bench_dedup_clothing` — real photos with planted edits: near-duplicate pair
  precision/recall of the embedder at τ, and of the full cluster-based :func:`dedup`.
* :func:`calibrate_tau` — the τ sweep behind
  :data:`curation_assets.lib.dedup.TAU_EFFICIENTNET_LITE0`.

Timings on a shared machine are noisy: compare ratios from one run, not absolute seconds
across runs.
"""

import io
import logging
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

# faiss through cluster.py, which configures OpenBLAS before faiss is first imported.
from curation_assets.lib.cluster import BLAS_CONFIG, assign, default_k, faiss, train_clusterings
from curation_assets.lib.dedup import (
    DEFAULT_TAU,
    ImageMeta,
    Pairs,
    calibrated_tau,
    connected_components,
    dedup,
    exhaustive_pairs,
    pair_recall,
    pairs_within_clusters,
    recall_curve,
    union_pairs,
)
from curation_assets.lib.tables import N_CLUSTERINGS
from curation_assets.tools.bench_ivf import IVF_NPROBE_CAP, compare, ivf_baseline, sgemm_gflops
from curation_assets.tools.synthetic import clip_like_embeddings

logger = logging.getLogger(__name__)

#: Above this many rows the exhaustive search runs on a sample of queries and is extrapolated.
EXHAUSTIVE_FULL_MAX_ROWS = 100_000
#: Sampled queries for the exhaustive search (and the recall measurement) above that size.
EXHAUSTIVE_SAMPLE_QUERIES = 10_000


def _peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench_dedup(
    n: int,
    dim: int,
    *,
    seed: int = 0,
    k: int | None = None,
    tau: float | None = None,
    exhaustive_queries: int | None = None,
    n_clusterings: int = N_CLUSTERINGS,
    top: int = 1,
    niter: int = 10,
    max_points_per_centroid: int = 128,
    dup_noise: float = 0.15,
    ivf: bool = True,
    ivf_nprobe_cap: int = IVF_NPROBE_CAP,
) -> dict[str, Any]:
    """Cluster-based pair search versus exhaustive search on synthetic CLIP-like embeddings.

    Steps, each timed: generate ``n × dim`` embeddings (not counted in either method);
    train ``n_clusterings`` spherical k-means (seeds ``seed .. seed+C-1``); assign every row
    to its ``top`` nearest centroids; find within-cluster pairs per clustering; union and
    connected components. Exhaustive: faiss range search of queries against all rows — all
    ``n`` rows when ``n ≤ EXHAUSTIVE_FULL_MAX_ROWS``, else a seeded sample of
    ``exhaustive_queries`` rows, whose time is extrapolated linearly to ``n`` queries
    (``exhaustive_extrapolated: true``; exhaustive cost is exactly proportional to the number
    of queries). Recall of the cumulative union of 1..C clusterings is measured against the
    exhaustive pairs (on the sampled queries' pairs when sampled).

    Peer baseline (``ivf``, after both): faiss ``IndexIVFFlat`` with ``nlist = k``, trained on
    clustering 1's sample, every row a query of ``range_search`` at τ, nprobe doubled until
    its recall on the same true pairs reaches the five clusterings' (see
    :mod:`curation_assets.tools.bench_ivf`); its search time is extrapolated from the same
    sampled queries when the exhaustive one is. ``sgemm_gflops`` (numpy float32
    4096×512 @ 512×4096, median of 3) is measured at the start and end of the run.

    Peak RSS is the process peak (``ru_maxrss``): run in a fresh process for a clean number.
    ``peak_rss_mb`` is taken before the baseline is built; the baseline's index adds about
    one matrix (``ivf_baseline.index_mb``, ``ivf_baseline.peak_rss_mb``).

    Args:
        n: Rows.
        dim: Embedding dimension.
        seed: Seeds the data, the clusterings and the query sample.
        k: Clusters per clustering (None → :func:`default_k`).
        tau: Cosine threshold (None → :data:`DEFAULT_TAU`, the CLIP ViT-B-32 value).
        exhaustive_queries: Queries for the exhaustive search (None → all rows up to
            ``EXHAUSTIVE_FULL_MAX_ROWS``, else ``EXHAUSTIVE_SAMPLE_QUERIES``).
        n_clusterings: Independent clusterings.
        top: Centroids per row (2 = each row in its 2 nearest clusters).
        niter: k-means iterations.
        max_points_per_centroid: k-means training sample cap per centroid. 128 (not faiss's
            256): training is the largest cost of the cluster method and, at 1M × 512 with
            K = 1024, five clusterings reached the same pair recall (0.994-0.995) with 64,
            128 and 256 points per centroid.
        dup_noise: Edit size of the planted duplicates (see :func:`clip_like_embeddings`).
        ivf: Also run the IVFFlat peer baseline (``ivf_baseline`` and comparison keys).
        ivf_nprobe_cap: Largest nprobe the baseline tries.

    Returns:
        A JSON-serializable dict, times in seconds: the parameters; ``train_s``,
        ``assign_s``, ``pairs_s_per_clustering``, ``cluster_method_s`` (their sum, data
        generation excluded); ``exhaustive_s`` (measured or extrapolated, with
        ``exhaustive_extrapolated``, ``exhaustive_queries``, ``exhaustive_note``);
        ``cluster_over_exhaustive``; noise-robust ``*_median_based`` versions (C × median per
        clustering; median per database chunk) and the ratio against a symmetric exhaustive
        search that would compute each pair once (``cluster_over_exhaustive_symmetric``);
        ``recall_by_num_clusterings`` with ``recall_standard_error``, ``true_pairs``;
        ``matrix_mb``, ``peak_rss_mb`` and ``peak_rss_over_matrix``; ``sgemm_gflops``
        (start), ``sgemm_gflops_end`` and ``sgemm_gflops_by_phase``; process CPU seconds
        ``cluster_method_cpu_s``, ``exhaustive_cpu_s``; with ``ivf``: ``ivf_baseline`` (see
        :func:`~curation_assets.tools.bench_ivf.ivf_baseline`, plus its ``peak_rss_mb``),
        ``faster_at_equal_recall``, ``ivf_over_cluster`` (IVF build + search of all n
        queries over ``cluster_method_s``), its median-based and CPU-time
        (``ivf_over_cluster_cpu``) versions and a verdict sentence.
    """
    tau = DEFAULT_TAU if tau is None else tau
    k = default_k(n) if k is None else k
    if exhaustive_queries is None:
        exhaustive_queries = n if n <= EXHAUSTIVE_FULL_MAX_ROWS else EXHAUSTIVE_SAMPLE_QUERIES
    exhaustive_queries = min(exhaustive_queries, n)
    rss_start = _peak_rss_mb()
    gflops_start = sgemm_gflops()

    t = time.perf_counter()
    x, group = clip_like_embeddings(n, dim, seed=seed, dup_noise=dup_noise)
    gen_s = time.perf_counter() - t
    matrix_mb = x.nbytes / 2**20
    gflops = {"start": gflops_start, "before_cluster_method": sgemm_gflops()}

    cpu0 = time.process_time()
    t = time.perf_counter()
    seeds = tuple(range(seed, seed + n_clusterings))
    models = train_clusterings(
        x, k, seeds, niter=niter, max_points_per_centroid=max_points_per_centroid
    )
    train_s = time.perf_counter() - t

    assignments = []
    assign_each: list[float] = []
    for m in models:
        t = time.perf_counter()
        assignments.append(assign(x, m.centroids, top=top)[0])
        assign_each.append(time.perf_counter() - t)
    assign_s = sum(assign_each)

    per: list[Pairs] = []
    pair_s: list[float] = []
    for a in assignments:
        t = time.perf_counter()
        per.append(pairs_within_clusters(x, a, tau))
        pair_s.append(time.perf_counter() - t)

    t = time.perf_counter()
    union = union_pairs(per)
    comp = connected_components(n, union)
    components_s = time.perf_counter() - t
    cluster_total_s = train_s + assign_s + sum(pair_s) + components_s
    cluster_cpu_s = time.process_time() - cpu0
    gflops["before_exhaustive"] = sgemm_gflops()

    extrapolated = exhaustive_queries < n
    if extrapolated:
        query_idx = np.sort(
            np.random.default_rng(seed).choice(n, size=exhaustive_queries, replace=False)
        )
    else:
        query_idx = None
    cpu0 = time.process_time()
    t = time.perf_counter()
    truth = exhaustive_pairs(x, tau, query_idx=query_idx)
    exhaustive_measured_s = time.perf_counter() - t
    exhaustive_cpu_s = (time.process_time() - cpu0) * n / exhaustive_queries
    exhaustive_s = exhaustive_measured_s * n / exhaustive_queries
    exhaustive_median_s = truth.stats["seconds_median_based"] * n / exhaustive_queries
    # Noise-robust cluster-method time: C x (median train + median assign + median pairs).
    cluster_median_s = (
        n_clusterings
        * (
            float(np.median([m.train_seconds for m in models]))
            + float(np.median(assign_each))
            + float(np.median(pair_s))
        )
        + components_s
    )
    recall = recall_curve(per, truth, query_rows=query_idx)

    planted_truth = int(((group[truth.i] == group[truth.j]) & (group[truth.i] >= 0)).sum())
    peak = _peak_rss_mb()
    baseline: dict[str, Any] = {}
    if ivf:
        gflops["before_ivf"] = sgemm_gflops()
        recall_all = recall[-1] if recall else float("nan")
        ivf_out = ivf_baseline(
            x,
            truth,
            query_idx,
            nlist=k,
            tau=tau,
            seed=seed,
            niter=niter,
            max_points_per_centroid=max_points_per_centroid,
            target_recall=recall_all,
            nprobe_cap=ivf_nprobe_cap,
            stop_after_s=exhaustive_measured_s,
        )
        ivf_out["peak_rss_mb"] = round(_peak_rss_mb(), 1)
        baseline = {
            "ivf_baseline": ivf_out,
            **compare(cluster_total_s, cluster_median_s, ivf_out),
            "ivf_over_cluster_cpu": round(ivf_out["total_cpu_s"] / max(cluster_cpu_s, 1e-9), 3),
        }
    gflops["end"] = sgemm_gflops()
    out: dict[str, Any] = {
        "benchmark": "dedup",
        "n": n,
        "dim": dim,
        "seed": seed,
        "tau": tau,
        "k": k,
        "clusterings": n_clusterings,
        "top": top,
        "niter": niter,
        "max_points_per_centroid": max_points_per_centroid,
        "dup_noise": dup_noise,
        "faiss_threads": faiss.omp_get_max_threads(),
        "blas": BLAS_CONFIG,
        "generate_s": round(gen_s, 2),
        "train_s": round(train_s, 2),
        "train_s_per_clustering": [round(m.train_seconds, 2) for m in models],
        "kmeans_imbalance": [round(m.imbalance, 3) for m in models],
        "assign_s": round(assign_s, 2),
        "assign_s_per_clustering": [round(v, 2) for v in assign_each],
        "pairs_s_per_clustering": [round(s, 2) for s in pair_s],
        "largest_cluster": [p.stats["largest_cluster"] for p in per],
        "components_s": round(components_s, 2),
        "cluster_method_s": round(cluster_total_s, 2),
        "pairs_per_clustering": [len(p) for p in per],
        "pairs_union": len(union),
        "duplicate_components": int(
            ((comp == np.arange(n)) & (np.bincount(comp, minlength=n) > 1)).sum()
        ),
        "rows_removed": int(n - (comp == np.arange(n)).sum()),
        "exhaustive_queries": int(exhaustive_queries),
        "exhaustive_extrapolated": bool(extrapolated),
        "exhaustive_measured_s": round(exhaustive_measured_s, 2),
        "exhaustive_s": round(exhaustive_s, 2),
        "exhaustive_note": (
            "faiss range search, every query against all n rows (n^2 dot products); "
            + (
                f"time of {exhaustive_queries} sampled queries x {n / exhaustive_queries:.1f}"
                if extrapolated
                else "all queries measured"
            )
        ),
        "cluster_over_exhaustive": round(cluster_total_s / exhaustive_s, 4),
        "speedup": round(exhaustive_s / cluster_total_s, 1),
        "cluster_method_s_median_based": round(cluster_median_s, 2),
        "exhaustive_s_median_based": round(exhaustive_median_s, 2),
        "cluster_over_exhaustive_median_based": round(cluster_median_s / exhaustive_median_s, 4),
        "exhaustive_symmetric_lower_bound_s": round(exhaustive_median_s / 2, 2),
        "cluster_over_exhaustive_symmetric": round(2 * cluster_median_s / exhaustive_median_s, 4),
        "true_pairs": len(truth),
        "true_pairs_planted": planted_truth,
        "recall_by_num_clusterings": [round(r, 4) for r in recall],
        # Binomial standard error of each recall (pairs treated as independent draws).
        "recall_standard_error": [
            round(float(np.sqrt(r * (1 - r) / max(len(truth), 1))), 4) for r in recall
        ],
        "recall_measured_on": (
            f"pairs touching {exhaustive_queries} sampled rows" if extrapolated else "all pairs"
        ),
        "matrix_mb": round(matrix_mb, 1),
        "peak_rss_mb": round(peak, 1),
        "peak_rss_mb_before": round(rss_start, 1),
        "peak_rss_over_matrix": round(peak / matrix_mb, 3),
        "cluster_method_cpu_s": round(cluster_cpu_s, 2),
        "exhaustive_cpu_s": round(exhaustive_cpu_s, 2),
        "cpu_note": (
            "process CPU seconds (user + sys, all threads) of the same phases: less sensitive "
            "than wall time to other processes on a shared machine (spin-waits still count); "
            "exhaustive scaled like exhaustive_s"
        ),
        "sgemm_gflops": gflops_start,
        "sgemm_gflops_end": gflops["end"],
        "sgemm_gflops_by_phase": gflops,
        "sgemm_note": (
            "numpy float32 (4096x512) @ (512x4096), median of 3, same process; by_phase: "
            "measured just before each phase (a drop means other load during the run)"
        ),
        **baseline,
    }
    logger.info(
        "bench_dedup n=%d: cluster %.1fs vs exhaustive %.1fs, recall %s",
        n,
        cluster_total_s,
        exhaustive_s,
        out["recall_by_num_clusterings"],
    )
    return out


# --------------------------------------------------------------------------------------------
# Real photos with planted edits (τ calibration)
# --------------------------------------------------------------------------------------------

EDIT_KINDS = ("crop", "jpeg", "flip", "colour", "rotate", "resize")


def plant_edits(image: Image.Image, rng: np.random.Generator) -> list[tuple[str, Image.Image]]:
    """One edited copy of an RGB image per kind in :data:`EDIT_KINDS`.

    crop keeps 80-95 % of the area (random position); jpeg re-encodes at quality 40-70;
    flip mirrors horizontally; colour scales saturation and brightness by 0.85-1.15 each;
    rotate turns by ±3-8° (corners filled with the mean colour); resize scales to 0.5-0.8.
    """
    w, h = image.size
    out: list[tuple[str, Image.Image]] = []
    area = rng.uniform(0.80, 0.95)
    side = float(np.sqrt(area))
    cw, ch = max(1, round(w * side)), max(1, round(h * side))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    out.append(("crop", image.crop((x0, y0, x0 + cw, y0 + ch))))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=int(rng.integers(40, 71)))
    out.append(("jpeg", Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    out.append(("flip", ImageOps.mirror(image)))
    shifted = ImageEnhance.Color(image).enhance(rng.uniform(0.85, 1.15))
    out.append(("colour", ImageEnhance.Brightness(shifted).enhance(rng.uniform(0.85, 1.15))))
    angle = float(rng.uniform(3.0, 8.0) * rng.choice([-1.0, 1.0]))
    fill = tuple(int(v) for v in np.asarray(image).reshape(-1, 3).mean(0))
    out.append(("rotate", image.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=fill)))
    s = rng.uniform(0.5, 0.8)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    out.append(("resize", image.resize(size, Image.Resampling.BICUBIC)))
    return out


def embed_with_planted_edits(
    photos: Path, *, seed: int = 0, batch_size: int = 32, limit: int | None = None
) -> dict[str, Any]:
    """Embed every JPEG under ``photos`` and one copy per edit kind, with the project embedder.

    Args:
        photos: Folder searched recursively for ``*.jpg``.
        seed: Seeds the edit parameters.
        batch_size: Images per forward pass.
        limit: Use at most this many photos (sorted by path).

    Returns:
        ``{"vectors": (m, dim) float32 L2-normalized, "photo": (m,) int64 photo index,
        "kind": (m,) str ("original" or an edit kind), "model_id": str, "photos": int}``.
    """
    import torch

    from curation_assets.lib.embed import EmbedderSpec, load_embedder

    paths = sorted(photos.rglob("*.jpg"))[:limit]
    if not paths:
        msg = f"no *.jpg under {photos}; point it at e.g. clothing-small/validation"
        raise ValueError(msg)
    embedder = load_embedder(EmbedderSpec())
    rng = np.random.default_rng(seed)
    tensors: list[Any] = []
    photo: list[int] = []
    kind: list[str] = []
    vectors: list[np.ndarray] = []

    def flush() -> None:
        if tensors:
            vectors.append(embedder.encode_images(torch.stack(tensors)))
            tensors.clear()

    for p_idx, path in enumerate(paths):
        with Image.open(path) as im:
            original = ImageOps.exif_transpose(im).convert("RGB")
        for name, img in [("original", original), *plant_edits(original, rng)]:
            tensors.append(embedder.preprocess(img))
            photo.append(p_idx)
            kind.append(name)
            if len(tensors) >= batch_size:
                flush()
    flush()
    return {
        "vectors": np.concatenate(vectors),
        "photo": np.asarray(photo, dtype=np.int64),
        "kind": np.asarray(kind),
        "model_id": embedder.model_id,
        "photos": len(paths),
    }


def calibrate_tau(
    vectors: np.ndarray,
    photo: np.ndarray,
    kind: np.ndarray,
    *,
    taus: np.ndarray | None = None,
) -> dict[str, Any]:
    """Sweep τ: pair precision/recall of "same photo" (planted) vs "different photos".

    Every pair of versions of one photo (original-copy and copy-copy) is a positive; every
    pair of versions of two different photos is a negative. Memory: the (m, m) similarity
    matrix (m = a few thousand here; this is a calibration tool, not the pipeline).

    Args:
        vectors: (m, dim) float32, L2-normalized.
        photo: (m,) photo index of each row.
        kind: (m,) ``original`` or edit kind of each row.
        taus: Thresholds to sweep (default 0.70 … 0.99 by 0.005).

    Returns:
        ``best_f1_tau`` with its precision/recall, the sweep, per-edit recall of
        original-copy pairs at ``best_f1_tau``, and quantiles of the different-photo
        similarities.
    """
    taus = np.round(np.arange(0.70, 0.9901, 0.005), 3) if taus is None else taus
    sims = vectors @ vectors.T
    iu, ju = np.triu_indices(len(vectors), 1)
    s = sims[iu, ju]
    same = photo[iu] == photo[ju]
    pos, neg = s[same], s[~same]
    sweep = []
    for t in taus:
        tp = int((pos >= t).sum())
        fp = int((neg >= t).sum())
        prec = tp / (tp + fp) if tp + fp else 1.0
        rec = tp / pos.size
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        sweep.append(
            {"tau": float(t), "precision": prec, "recall": rec, "f1": f1, "false_pairs": fp}
        )
    best = max(sweep, key=lambda r: r["f1"])
    orig = np.flatnonzero(kind == "original")
    per_edit = {}
    for name in EDIT_KINDS:
        copies = np.flatnonzero(kind == name)
        pair_s = sims[orig, copies] if copies.size == orig.size else np.empty(0)
        per_edit[name] = {
            "recall_at_best_tau": float((pair_s >= best["tau"]).mean()) if pair_s.size else None,
            "median_sim": float(np.median(pair_s)) if pair_s.size else None,
            "p05_sim": float(np.quantile(pair_s, 0.05)) if pair_s.size else None,
        }
    return {
        "positive_pairs": int(pos.size),
        "negative_pairs": int(neg.size),
        "best_f1_tau": best["tau"],
        "best": best,
        "sweep": sweep,
        "per_edit_original_copy": per_edit,
        "different_photos_sim": {
            "p50": float(np.median(neg)),
            "p99": float(np.quantile(neg, 0.99)),
            "p9999": float(np.quantile(neg, 0.9999)),
            "max": float(neg.max()),
        },
        "planted_pairs_sim": {
            "p01": float(np.quantile(pos, 0.01)),
            "p05": float(np.quantile(pos, 0.05)),
            "p50": float(np.median(pos)),
        },
    }


def bench_dedup_clothing(
    clothing_dir: Path,
    *,
    split: str = "validation",
    seed: int = 0,
    tau: float | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """Near-duplicate precision/recall on real photos with planted edits.

    Embeds every photo of ``clothing_dir/split`` and 6 edited copies each
    (:func:`plant_edits`), then reports (1) the τ sweep of :func:`calibrate_tau` and
    (2) the full pipeline — five clusterings (:func:`default_k`), :func:`dedup` at ``tau``
    (None → :func:`calibrated_tau` of the embedder) — scored on pairs (found vs planted) and
    on images (a removed image is correct when it is a version of the photo it is marked a
    duplicate of).

    Returns:
        A JSON-serializable dict.
    """
    t0 = time.perf_counter()
    emb = embed_with_planted_edits(clothing_dir / split, seed=seed, limit=limit)
    embed_s = time.perf_counter() - t0
    v, photo, kind = emb["vectors"], emb["photo"], emb["kind"]
    cal = calibrate_tau(v, photo, kind)
    tau = calibrated_tau(emb["model_id"]) if tau is None else tau
    n = v.shape[0]
    k = default_k(n)
    models = train_clusterings(v, k, tuple(range(seed, seed + N_CLUSTERINGS)))
    assignments = [assign(v, m.centroids)[0] for m in models]
    # Crops and resizes have fewer pixels than the original; other copies have as many but
    # arrived later, so the policy (resolution, earliest, smallest id) keeps the original.
    meta = ImageMeta(
        width=np.where(np.isin(kind, ["crop", "resize"]), 1, 2).astype(np.int64),
        height=np.ones(n, dtype=np.int64),
        ingested_at=(kind != "original").astype(np.int64),
    )
    ids = np.asarray([f"{p:05d}-{kd}" for p, kd in zip(photo, kind, strict=True)])
    result = dedup(v, ids, meta, assignments, tau)
    truth_all = exhaustive_pairs(v, tau)
    planted = _planted_pairs(photo)
    found = result.pairs
    found_planted = np.isin(found.keys(), planted, assume_unique=True)
    removed = ~result.kept
    correct = photo[removed] == photo[result.duplicate_of[removed]]
    per_edit_removed = {name: float((~result.kept[kind == name]).mean()) for name in EDIT_KINDS}
    sweep_at = next((r for r in cal["sweep"] if abs(r["tau"] - tau) < 1e-9), None)
    return {
        "benchmark": "dedup_clothing",
        "photos_dir": str(clothing_dir / split),
        "photos": emb["photos"],
        "images": int(n),
        "model_id": emb["model_id"],
        "seed": seed,
        "embed_s": round(embed_s, 1),
        "tau": tau,
        "embedder_pairs_at_tau": sweep_at,
        "best_f1_tau": cal["best_f1_tau"],
        "best_f1": cal["best"],
        "per_edit_original_copy": cal["per_edit_original_copy"],
        "different_photos_sim": cal["different_photos_sim"],
        "planted_pairs_sim": cal["planted_pairs_sim"],
        "k": k,
        "pipeline_pairs": len(found),
        "pipeline_pair_precision": float(found_planted.mean()) if len(found) else None,
        "pipeline_pair_recall_vs_planted": float(
            np.isin(planted, found.keys(), assume_unique=True).mean()
        ),
        "pipeline_pair_recall_vs_exhaustive": pair_recall(found, truth_all),
        "images_removed": int(removed.sum()),
        "images_removed_should_be": int(n - emb["photos"]),
        "removed_correct_fraction": float(correct.mean()) if correct.size else None,
        "originals_kept_fraction": float(result.kept[kind == "original"].mean()),
        "removed_fraction_by_edit": per_edit_removed,
        "dedup_stats": result.stats,
    }


def _planted_pairs(photo: np.ndarray) -> np.ndarray:
    """Sorted keys (i << 32 | j) of all pairs of rows showing the same photo."""
    keys = []
    order = np.argsort(photo, kind="stable")
    bounds = np.flatnonzero(np.diff(photo[order])) + 1
    for rows in np.split(order, bounds):
        r = np.sort(rows)
        ii, jj = np.triu_indices(r.size, 1)
        keys.append((r[ii].astype(np.int64) << 32) | r[jj].astype(np.int64))
    return np.sort(np.concatenate(keys)) if keys else np.empty(0, np.int64)
