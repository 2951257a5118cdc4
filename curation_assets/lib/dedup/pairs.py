"""Near-duplicate removal within k-means clusters (DALL·E 2 pre-training mitigations, stage 6).

The method, as in the DALL·E 2 paper: for each of several independent clusterings, find all
pairs of images in the same cluster whose cosine similarity is ≥ τ (blocked matrix products
inside each cluster, never an N×N matrix); take the union of the pairs of all clusterings; the
connected components of that pair graph are groups of near-duplicates; keep one image per
component by a deterministic policy. A pair cut apart by one clustering's boundary is usually
found by another: pair recall against exhaustive search is measured by
:func:`recall_by_num_clusterings` on a sample of rows.

Components, not pairs, decide. Near-duplicate chains (A~B and B~C with A≁C) form ONE component
with ONE kept image; every removed image records ``duplicate_of`` = the component's kept image
and its cosine similarity to *that* image, computed directly. Through a chain that similarity
may be below τ: it is reported as it is (``stats["removed_below_tau"]`` counts such rows), not
replaced by the similarity of the pair that linked it.

Similarities are canonical: candidate pairs come from float32 matrix products with a margin of
``SIM_MARGIN`` below τ, and every reported similarity is then recomputed as a per-pair dot
product, so the same pair has bit-identical similarity (and the same in/out decision at τ)
whether it came from a full run, an incremental run or :func:`exhaustive_pairs`.

Row indices: all functions work on row positions ``0..n-1`` of ``x``; rows of an incremental
batch are appended after the old rows (``n_old + k``). Every array is (n,) in row order.
"""

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import polars as pl
import scipy.sparse
from scipy.sparse.csgraph import connected_components as _scipy_components

# faiss through cluster.py, which configures OpenBLAS before faiss is first imported.
from curation_assets.lib.cluster import faiss

logger = logging.getLogger(__name__)

#: Candidate pairs are taken at ``tau - SIM_MARGIN`` from the (blocked) float32 GEMM, then
#: re-checked against ``tau`` with a per-pair dot product (float32 GEMM error on unit vectors
#: of dim ≤ 4096 is < 1e-5).
SIM_MARGIN = 1e-4

#: Cosine τ for near-duplicates with open_clip ViT-B-32 image embeddings. NOT calibrated here
#: (no CLIP weights can be downloaded in this environment): 0.95 is the value commonly used in
#: practice for near-duplicate (not merely semantic) matches with CLIP ViT-B/32 image
#: embeddings (practitioner guidance puts near-duplicates at cosine 0.95-0.99; SemDeDup,
#: which calls pairs with cosine > 1 - eps duplicates, uses larger eps, i.e. lower thresholds,
#: to remove *semantic* duplicates). Re-calibrate with
#: :func:`curation_assets.lib.bench_dedup.calibrate_tau` once CLIP weights are available.
TAU_OPEN_CLIP_VIT_B_32 = 0.95

#: Cosine τ for timm tf_efficientnet_lite0 (ImageNet weights, 1280-d pooled features,
#: L2-normalized), calibrated in this repository with
#: :func:`curation_assets.lib.bench_dedup.bench_dedup_clothing` (seed 0) on the 341 real photos
#: of ``clothing-small/validation``. Each photo got 6 edited copies
#: (:func:`~curation_assets.lib.bench_dedup.plant_edits`: crop keeping 80-95 % of the area,
#: JPEG re-encode at quality 40-70, horizontal flip, saturation and brightness ×0.85-1.15,
#: rotation ±3-8°, resize to 0.5-0.8), all 2 387 images embedded with
#: ``load_embedder(EmbedderSpec())``. Positives: every pair of versions of one photo
#: (original-copy and copy-copy, 7 161 pairs); negatives: every pair of versions of two
#: different photos (2 840 530 pairs). τ was swept 0.70-0.99 by 0.005: F1 peaks on the plateau
#: 0.855-0.86 (0.965); 0.86 is its precision-side end. At τ = 0.86: pair precision 0.970,
#: pair recall 0.960 (original-copy 0.983, copy-copy 0.951); per edit, original-copy recall is
#: crop 0.974, JPEG 0.982, flip 1.0, colour 1.0, rotation 1.0, resize 0.944 — for this model
#: flips are NOT the hardest edit (median cosine 0.972): downscaling, JPEG and crops are
#: (median ≈ 0.95, 5th percentile 0.86-0.89). Different photos: median cosine 0.34,
#: 99.99th percentile 0.85, max 0.92; the 214 false pairs at 0.86 come from 16 pairs of
#: genuinely different garments shot on the same background, which ImageNet features do not
#: tell apart. Through the full dedup (components + keep policy) at 0.86: 99.3 % of copies
#: removed, 96.5 % of originals kept, 95.9 % of removed images point at their own photo
#: (7 components merge two photos). τ = 0.88 trades to 98.5 % / 98.2 % / 97.9 %.
TAU_EFFICIENTNET_LITE0 = 0.86

#: Default τ for CLIP-like embeddings (the production open_clip ViT-B-32 embedder, and the
#: synthetic benchmark). Prefer :func:`calibrated_tau` with the embeddings' ``model_id``.
DEFAULT_TAU = TAU_OPEN_CLIP_VIT_B_32

_TAU_BY_MODEL_PREFIX: dict[str, float] = {
    "timm:tf_efficientnet_lite0@": TAU_EFFICIENTNET_LITE0,
    "open_clip:ViT-B-32@": TAU_OPEN_CLIP_VIT_B_32,
}

#: Keep-policy criteria, applied in order; ties after all of them go to the lowest row.
POLICY_CRITERIA = ("resolution", "earliest", "smallest_id")
DEFAULT_POLICY: tuple[str, ...] = POLICY_CRITERIA

_MAX_ROWS = 2**31 - 1  # pair keys pack (i, j) as i << 32 | j


def calibrated_tau(model_id: str) -> float:
    """The near-duplicate cosine threshold for embeddings of ``model_id``.

    Args:
        model_id: ``backend:model@weights`` as recorded with every embedding row
            (``Embedder.model_id``); the weights part is not checked.

    Returns:
        ``TAU_EFFICIENTNET_LITE0`` (0.86, calibrated here on real photos with planted edits)
        for ``timm:tf_efficientnet_lite0@...``; ``TAU_OPEN_CLIP_VIT_B_32`` (0.95, from
        practice, not calibrated here) for ``open_clip:ViT-B-32@...``.

    Raises:
        ValueError: For any other model: a threshold does not transfer between embedders.
    """
    for prefix, tau in _TAU_BY_MODEL_PREFIX.items():
        if model_id.startswith(prefix):
            return tau
    msg = (
        f"no calibrated near-duplicate tau for model_id={model_id!r} (known: "
        f"{sorted(_TAU_BY_MODEL_PREFIX)}); pass tau explicitly, calibrated with "
        "curation_assets.lib.bench_dedup.calibrate_tau on photos embedded by this model"
    )
    raise ValueError(msg)


# --------------------------------------------------------------------------------------------
# Pairs
# --------------------------------------------------------------------------------------------


@dataclass
class Pairs:
    """A set of image pairs, sorted by ``(i, j)``, each pair once.

    Attributes:
        i: (m,) int64 row index, ``i < j``.
        j: (m,) int64 row index.
        sim: (m,) float32 cosine similarity (canonical per-pair dot product).
        found_by: (m,) int32 bitmask (bit c set ⇔ clustering c found the pair) or None.
        stats: How the pairs were found (timings, comparisons, ...).
    """

    i: np.ndarray
    j: np.ndarray
    sim: np.ndarray
    found_by: np.ndarray | None = None
    stats: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        """Number of pairs."""
        return int(self.i.shape[0])

    @classmethod
    def empty(cls) -> "Pairs":
        """No pairs."""
        return cls(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32))

    def keys(self) -> np.ndarray:
        """(m,) int64 keys ``i << 32 | j`` (sorted, unique)."""
        return _keys(self.i, self.j)

    def frame(self) -> pl.DataFrame:
        """Polars frame ``i, j, similarity[, found_by]``."""
        cols: dict[str, Any] = {"i": self.i, "j": self.j, "similarity": self.sim}
        if self.found_by is not None:
            cols["found_by"] = self.found_by
        return pl.DataFrame(cols)


def _keys(i: np.ndarray, j: np.ndarray) -> np.ndarray:
    return (i.astype(np.int64) << 32) | j.astype(np.int64)


def _split_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return keys >> 32, keys & 0xFFFFFFFF


class _Rows:
    """Rows of one or more (n_p, d) float32 matrices, read as one stacked matrix, no copy.

    Lets an incremental run read old rows (possibly a memmap) and new rows without
    concatenating them; only the rows asked for are gathered.
    """

    def __init__(self, parts: Sequence[np.ndarray]) -> None:
        if not parts:
            msg = "no embedding matrices given; expected at least one (n, d) array"
            raise ValueError(msg)
        d = parts[0].shape[1] if parts[0].ndim == 2 else -1
        for p in parts:
            if p.ndim != 2 or p.shape[1] != d:
                shapes = [q.shape for q in parts]
                msg = f"embedding shapes {shapes}: expected (n, d) arrays with one common d"
                raise ValueError(msg)
        self.parts = list(parts)
        self.offsets = np.cumsum([0, *[p.shape[0] for p in parts]])
        self.n = int(self.offsets[-1])
        self.d = int(d)
        if self.n > _MAX_ROWS:
            msg = f"{self.n} rows: at most {_MAX_ROWS} rows per deduplication run"
            raise ValueError(msg)

    def take(self, idx: np.ndarray) -> np.ndarray:
        """(len(idx), d) float32 C-contiguous copy of the rows ``idx``."""
        if len(self.parts) == 1:
            return np.ascontiguousarray(self.parts[0][idx], dtype=np.float32)
        out = np.empty((len(idx), self.d), dtype=np.float32)
        part = np.searchsorted(self.offsets, idx, side="right") - 1
        for p, arr in enumerate(self.parts):
            sel = part == p
            if sel.any():
                out[sel] = arr[idx[sel] - self.offsets[p]]
        return out

    def block(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as float32 C-contiguous (a view when possible)."""
        p = int(np.searchsorted(self.offsets, start, side="right") - 1)
        if stop <= self.offsets[p + 1]:
            o = self.offsets[p]
            return np.ascontiguousarray(self.parts[p][start - o : stop - o], dtype=np.float32)
        return self.take(np.arange(start, stop))


def _exact_sims(rows: _Rows, i: np.ndarray, j: np.ndarray, batch: int = 65_536) -> np.ndarray:
    """Canonical cosine of pairs (per-pair float32 dot products, batch-independent)."""
    out = np.empty(len(i), dtype=np.float32)
    for s in range(0, len(i), batch):
        a = rows.take(i[s : s + batch])
        b = rows.take(j[s : s + batch])
        out[s : s + batch] = np.einsum("ij,ij->i", a, b)
    return out


def _finish_pairs(rows: _Rows, ci: list[np.ndarray], cj: list[np.ndarray], tau: float) -> Pairs:
    """Deduplicate candidate pairs, recompute similarities exactly, keep those ≥ tau."""
    if not ci:
        return Pairs.empty()
    keys = np.unique(_keys(np.concatenate(ci), np.concatenate(cj)))
    i, j = _split_keys(keys)
    sim = _exact_sims(rows, i, j)
    keep = sim >= np.float32(tau)
    return Pairs(i[keep], j[keep], sim[keep])


def _as_assignments(assignments: np.ndarray, n: int) -> np.ndarray:
    a = np.asarray(assignments)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[0] != n:
        msg = (
            f"assignments have shape {np.shape(assignments)} for {n} rows; expected (n,) or "
            "(n, top) cluster ids from curation_assets.lib.cluster.assign"
        )
        raise ValueError(msg)
    return a


def _clusters(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of each cluster: ``(rows, starts)``; cluster c's rows are sorted ascending."""
    flat = a.ravel()
    order = np.argsort(flat, kind="stable")
    rows = (order // a.shape[1]).astype(np.int64)
    sorted_ids = flat[order]
    first_valid = int(np.searchsorted(sorted_ids, 0))  # negative ids = unassigned
    bounds = np.flatnonzero(np.diff(sorted_ids[first_valid:])) + 1 + first_valid
    starts = np.concatenate([[first_valid], bounds, [flat.size]]).astype(np.int64)
    return rows, starts


def _check_tau(tau: float) -> None:
    if not 0.0 < tau <= 1.0:
        msg = f"tau={tau}: expected a cosine threshold in (0, 1], e.g. calibrated_tau(model_id)"
        raise ValueError(msg)


def _within_clusters(
    rows: _Rows,
    a: np.ndarray,
    tau: float,
    *,
    block: int,
    is_query: np.ndarray | None,
) -> Pairs:
    """Pair search inside clusters; with ``is_query`` only pairs touching a query row."""
    t0 = time.perf_counter()
    members_all, starts = _clusters(a)
    lo = np.float32(tau - SIM_MARGIN)
    ci: list[np.ndarray] = []
    cj: list[np.ndarray] = []
    comparisons = 0
    searched = 0
    largest = 0
    for c in range(len(starts) - 1):
        m = members_all[starts[c] : starts[c + 1]]
        nc = m.size
        largest = max(largest, nc)
        if nc < 2:
            continue
        if is_query is None:
            searched += 1
            xc = rows.take(m)
            for r0 in range(0, nc, block):
                xa = xc[r0 : r0 + block]
                for c0 in range(r0, nc, block):
                    diagonal = c0 == r0
                    # xa @ xa.T is one symmetric product (numpy calls BLAS syrk: half the flops).
                    s = xa @ (xa if diagonal else xc[c0 : c0 + block]).T
                    comparisons += s.size // 2 if diagonal else s.size
                    if diagonal:
                        np.fill_diagonal(s, -1.0)
                    ii, jj = _above(s, lo)
                    if diagonal:
                        upper = ii < jj
                        ii, jj = ii[upper], jj[upper]
                    if ii.size:
                        ci.append(m[r0 + ii])
                        cj.append(m[c0 + jj])
            continue
        q = is_query[m]
        ql = np.flatnonzero(q)
        if ql.size == 0:
            continue
        searched += 1
        xc = rows.take(m)
        xq = xc[ql]
        for q0 in range(0, ql.size, block):
            lq_all = ql[q0 : q0 + block]
            xa = xq[q0 : q0 + block]
            for c0 in range(0, nc, block):
                s = xa @ xc[c0 : c0 + block].T
                comparisons += s.size
                own = np.flatnonzero((lq_all >= c0) & (lq_all < c0 + s.shape[1]))
                s[own, lq_all[own] - c0] = -1.0  # a row is not its own duplicate
                ii, jj = _above(s, lo)
                if not ii.size:
                    continue
                lq, lp = lq_all[ii], c0 + jj
                keep = ~q[lp] | (lq < lp)  # both ends queries: report once
                gi, gj = m[lq[keep]], m[lp[keep]]
                ci.append(np.minimum(gi, gj))
                cj.append(np.maximum(gi, gj))
    pairs = _finish_pairs(rows, ci, cj, tau)
    pairs.stats = {
        "clusters": len(starts) - 1,
        "clusters_searched": searched,
        "largest_cluster": largest,
        "comparisons": int(comparisons),
        "candidates": int(sum(len(v) for v in ci)),
        "pairs": len(pairs),
        "seconds": time.perf_counter() - t0,
    }
    return pairs


def _above(s: np.ndarray, lo: np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``s >= lo``, scanning only rows whose maximum reaches ``lo`` (sparse)."""
    hit = np.flatnonzero(s.max(axis=1) >= lo)
    if hit.size == 0:
        return hit, hit
    ii, jj = np.nonzero(s[hit] >= lo)
    return hit[ii], jj


def _query_mask(n: int, rows: np.ndarray | None) -> np.ndarray | None:
    if rows is None:
        return None
    r = np.asarray(rows)
    if r.dtype == bool:
        if r.shape != (n,):
            msg = f"rows mask has shape {r.shape}; expected ({n},) booleans"
            raise ValueError(msg)
        return r
    mask = np.zeros(n, dtype=bool)
    mask[r.astype(np.int64)] = True
    return mask


def pairs_within_clusters(
    x: np.ndarray,
    assignments: np.ndarray,
    tau: float,
    *,
    block: int = 2048,
    rows: np.ndarray | None = None,
) -> Pairs:
    """All pairs (i < j) sharing a cluster with cosine ≥ ``tau``.

    Each cluster's rows are gathered and compared block by block: (block × block) float32
    products on the upper triangle only, so big clusters never need an (n_c × n_c) matrix.

    Args:
        x: (n, d) float32, L2-normalized. Only one cluster's rows are gathered at a time, so a
            memmap works.
        assignments: (n,) or (n, top) int cluster ids (``assign(...)[0]``); with top > 1 a row
            is compared within each of its clusters. Negative ids are ignored.
        tau: Cosine threshold in (0, 1].
        block: Tile edge. Memory: ``4 · d · max_cluster`` bytes (the gathered cluster) +
            ``5 · block²`` bytes (one tile and its mask) + the candidate pairs.
        rows: Optional query rows (indices or an (n,) bool mask): then only pairs with at
            least one endpoint among them are searched (each such row against its whole
            cluster), e.g. new rows of an incremental run or a recall sample.

    Returns:
        Pairs sorted by (i, j), similarity recomputed per pair, with ``stats`` (clusters,
        clusters_searched, largest_cluster, comparisons, candidates, pairs, seconds).
    """
    _check_tau(tau)
    src = _Rows([x])
    a = _as_assignments(assignments, src.n)
    return _within_clusters(src, a, tau, block=block, is_query=_query_mask(src.n, rows))


def union_pairs(pairs_list: Sequence[Pairs]) -> Pairs:
    """Union of the pairs of several clusterings, with a ``found_by`` bitmask.

    Args:
        pairs_list: Pairs of clustering 0, 1, ... (at most 31), each sorted and unique.

    Returns:
        Pairs sorted by (i, j); ``found_by`` bit c is set when ``pairs_list[c]`` holds the pair.
        ``stats``: ``pairs_per_clustering``, ``pairs``, ``found_by_count`` (how many pairs
        were found by exactly 1, 2, ... clusterings).
    """
    if len(pairs_list) > 31:
        msg = f"{len(pairs_list)} clusterings: found_by is an int32 bitmask of at most 31"
        raise ValueError(msg)
    per = [len(p) for p in pairs_list]
    if not pairs_list or sum(per) == 0:
        out = Pairs.empty()
        out.found_by = np.empty(0, np.int32)
        out.stats = {"pairs_per_clustering": per, "pairs": 0, "found_by_count": []}
        return out
    keys = np.concatenate([p.keys() for p in pairs_list])
    bits = np.concatenate(
        [np.full(len(p), 1 << c, dtype=np.int32) for c, p in enumerate(pairs_list)]
    )
    sims = np.concatenate([p.sim for p in pairs_list])
    order = np.argsort(keys, kind="stable")
    keys, bits, sims = keys[order], bits[order], sims[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    found_by = np.bitwise_or.reduceat(bits, starts).astype(np.int32)
    i, j = _split_keys(keys[starts])
    count = np.bincount(_popcount(found_by), minlength=len(pairs_list) + 1)[1:]
    return Pairs(
        i,
        j,
        sims[starts],
        found_by,
        {
            "pairs_per_clustering": per,
            "pairs": int(starts.size),
            "found_by_count": [int(c) for c in count],
        },
    )


def _popcount(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.int64)
    out = np.zeros(v.shape, dtype=np.int64)
    while v.any():
        out += v & 1
        v >>= 1
    return out


def _merge_disjoint(a: Pairs, b: Pairs) -> Pairs:
    """Union of two pair sets known to share no pair (keeps found_by), sorted by (i, j)."""
    keys = np.concatenate([a.keys(), b.keys()])
    order = np.argsort(keys, kind="stable")
    fa = a.found_by if a.found_by is not None else np.zeros(len(a), np.int32)
    fb = b.found_by if b.found_by is not None else np.zeros(len(b), np.int32)
    i, j = _split_keys(keys[order])
    return Pairs(
        i,
        j,
        np.concatenate([a.sim, b.sim])[order],
        np.concatenate([fa, fb])[order].astype(np.int32),
    )


def connected_components(n: int, pairs: Pairs) -> np.ndarray:
    """Connected components of the pair graph on ``n`` rows.

    Returns:
        (n,) int64 canonical component id = the smallest row index in the component (a row
        without pairs is its own component). Canonical ids make full and incremental runs
        comparable and stay fixed for components that new rows do not touch.

    Memory: a sparse (n × n) graph with one entry per pair + a few (n,) arrays.
    """
    if len(pairs) and int(max(pairs.i.max(), pairs.j.max())) >= n:
        msg = f"pairs refer to row {int(pairs.j.max())} but n={n}; pass n = number of rows"
        raise ValueError(msg)
    graph = scipy.sparse.coo_matrix(
        (np.ones(len(pairs), dtype=np.int8), (pairs.i, pairs.j)), shape=(n, n)
    ).tocsr()
    _, labels = _scipy_components(graph, directed=False)
    _, first = np.unique(labels, return_index=True)
    return first[labels].astype(np.int64)


# --------------------------------------------------------------------------------------------
# Keep policy
# --------------------------------------------------------------------------------------------


@dataclass
class ImageMeta:
    """Per-image fields the keep policy reads, (n,) each, in row order.

    Attributes:
        width: (n,) int64 pixels.
        height: (n,) int64 pixels.
        ingested_at: (n,) int64 nanoseconds since the epoch (missing → latest possible).
    """

    width: np.ndarray
    height: np.ndarray
    ingested_at: np.ndarray

    def __len__(self) -> int:
        """Number of images."""
        return int(self.width.shape[0])

    @classmethod
    def of(cls, meta: "ImageMeta | Mapping[str, Any] | pl.DataFrame") -> "ImageMeta":
        """From an ImageMeta, a mapping or a polars frame with width/height/ingested_at."""
        if isinstance(meta, ImageMeta):
            return meta
        try:
            w, h, t = meta["width"], meta["height"], meta["ingested_at"]
        except (KeyError, pl.exceptions.ColumnNotFoundError) as exc:
            msg = f"meta lacks {exc}; expected columns width, height, ingested_at"
            raise ValueError(msg) from exc
        return cls(_as_int(w, 0), _as_int(h, 0), _as_time(t))

    def take(self, idx: np.ndarray) -> "ImageMeta":
        """Rows ``idx``."""
        return ImageMeta(self.width[idx], self.height[idx], self.ingested_at[idx])

    @staticmethod
    def concat(parts: Sequence["ImageMeta"]) -> "ImageMeta":
        """Rows of ``parts`` one after the other."""
        return ImageMeta(
            np.concatenate([p.width for p in parts]),
            np.concatenate([p.height for p in parts]),
            np.concatenate([p.ingested_at for p in parts]),
        )


def _to_numpy(v: Any) -> np.ndarray:
    return v.to_numpy() if isinstance(v, pl.Series) else np.asarray(v)


def _as_int(v: Any, missing: int) -> np.ndarray:
    a = _to_numpy(v)
    if a.dtype.kind == "f" or a.dtype == object:
        a = np.where(np.isnan(a.astype(np.float64)), missing, a.astype(np.float64))
    return a.astype(np.int64)


def _as_time(v: Any) -> np.ndarray:
    a = _to_numpy(v)
    if a.dtype.kind == "M":
        nat = np.isnat(a)
        out = a.astype("datetime64[ns]").view(np.int64).copy()
        out[nat] = np.iinfo(np.int64).max
        return out
    return _as_int(a, np.iinfo(np.int64).max)


def _as_ids(image_id: Any, n: int) -> np.ndarray:
    ids = _to_numpy(image_id)
    if ids.dtype == object:
        ids = ids.astype(str)
    if ids.shape != (n,):
        msg = f"image_id has shape {ids.shape}; expected ({n},), one id per row"
        raise ValueError(msg)
    return ids


def _check_policy(policy: Sequence[str]) -> tuple[str, ...]:
    bad = [p for p in policy if p not in POLICY_CRITERIA]
    if bad or len(set(policy)) != len(policy):
        msg = (
            f"policy={tuple(policy)}: expected distinct criteria from {POLICY_CRITERIA} "
            "(applied in order; ties then go to the lowest row)"
        )
        raise ValueError(msg)
    return tuple(policy)


def _keepers(
    components: np.ndarray,
    meta: ImageMeta,
    image_id: np.ndarray,
    policy: Sequence[str],
) -> np.ndarray:
    """(m,) int64 local index of the kept row of each row's component (empty when m = 0)."""
    m = components.shape[0]
    if m == 0:
        return np.empty(0, dtype=np.int64)
    keys: list[np.ndarray] = [np.arange(m)]  # last tie-break: lowest row
    for criterion in reversed(_check_policy(policy)):
        if criterion == "resolution":
            keys.append(-(meta.width * meta.height))
        elif criterion == "earliest":
            keys.append(meta.ingested_at)
        else:
            keys.append(image_id)
    keys.append(components)  # primary key
    order = np.lexsort(keys)
    comp_sorted = components[order]
    starts = np.flatnonzero(np.r_[True, comp_sorted[1:] != comp_sorted[:-1]])
    keeper_sorted = np.repeat(order[starts], np.diff(np.r_[starts, m]))
    keeper = np.empty(m, dtype=np.int64)
    keeper[order] = keeper_sorted
    return keeper


class KeepChoice(NamedTuple):
    """What the keep policy decided, (n,) each.

    Attributes:
        kept: bool, True for the one kept image of each component.
        duplicate_of: int64 row of the component's kept image for removed rows, -1 if kept.
        similarity: float32 cosine to the kept image for removed rows (may be < τ through a
            chain), NaN for kept rows.
    """

    kept: np.ndarray
    duplicate_of: np.ndarray
    similarity: np.ndarray


def _choose(
    rows: _Rows,
    idx: np.ndarray,
    components: np.ndarray,
    meta: ImageMeta,
    image_id: np.ndarray,
    policy: Sequence[str],
) -> KeepChoice:
    """Keep choice for the global rows ``idx`` (whole components), arrays aligned with idx."""
    keeper = idx[_keepers(components, meta, image_id, policy)]
    kept = keeper == idx
    dup_of = np.where(kept, -1, keeper).astype(np.int64)
    sim = np.full(idx.shape[0], np.nan, dtype=np.float32)
    removed = np.flatnonzero(~kept)
    sim[removed] = _exact_sims(rows, idx[removed], keeper[removed])
    return KeepChoice(kept, dup_of, sim)


def choose_kept(
    components: np.ndarray,
    *,
    x: np.ndarray,
    width: np.ndarray,
    height: np.ndarray,
    ingested_at: np.ndarray,
    image_id: np.ndarray,
    policy: Sequence[str] = DEFAULT_POLICY,
) -> KeepChoice:
    """Keep one image per component by a deterministic policy.

    Args:
        components: (n,) component id per row (:func:`connected_components`).
        x: (n, d) float32, L2-normalized: to report each removed row's cosine to its kept one.
        width: (n,) pixels.
        height: (n,) pixels.
        ingested_at: (n,) datetime64 or int (earlier = smaller); missing counts as latest.
        image_id: (n,) str (or int) stable ids; smaller wins under ``smallest_id``.
        policy: Criteria in order, from ``resolution`` (largest ``width·height`` wins),
            ``earliest`` (smallest ``ingested_at`` wins) and ``smallest_id``. Remaining ties go
            to the lowest row, so the choice is always deterministic.

    Returns:
        :class:`KeepChoice` (kept, duplicate_of, similarity), (n,) each.
    """
    comp = np.asarray(components, dtype=np.int64)
    n = comp.shape[0]
    meta = ImageMeta(_as_int(width, 0), _as_int(height, 0), _as_time(ingested_at))
    if len(meta) != n or meta.height.shape != (n,) or meta.ingested_at.shape != (n,):
        msg = f"width/height/ingested_at must be ({n},) like components"
        raise ValueError(msg)
    src = _Rows([x])
    if src.n != n:
        msg = f"x has {src.n} rows but components has {n}; pass the embeddings of these rows"
        raise ValueError(msg)
    return _choose(src, np.arange(n), comp, meta, _as_ids(image_id, n), policy)


# --------------------------------------------------------------------------------------------
# Full and incremental deduplication
# --------------------------------------------------------------------------------------------


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


def _component_sizes(comp: np.ndarray) -> np.ndarray:
    return np.bincount(comp, minlength=comp.shape[0])[comp].astype(np.int64)


def _summary(
    res_kept: np.ndarray,
    similarity: np.ndarray,
    comp: np.ndarray,
    size: np.ndarray,
    tau: float,
) -> dict[str, Any]:
    removed = ~res_kept
    sims = similarity[removed]
    roots = comp == np.arange(comp.shape[0])
    return {
        "images": int(comp.shape[0]),
        "kept": int(res_kept.sum()),
        "removed": int(removed.sum()),
        "components": int(roots.sum()),
        "components_with_duplicates": int((roots & (size > 1)).sum()),
        "largest_component": int(size.max()) if size.size else 0,
        "removed_below_tau": int((sims < np.float32(tau)).sum()),
        "min_similarity_to_kept": float(sims.min()) if sims.size else None,
    }


def dedup(
    x: np.ndarray,
    ids: Any,
    meta: "ImageMeta | Mapping[str, Any] | pl.DataFrame",
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
    _check_tau(tau)
    policy = _check_policy(policy)
    t0 = time.perf_counter()
    src = _Rows([x])
    n = src.n
    ids_arr = _as_ids(ids, n)
    meta_ = ImageMeta.of(meta)
    if len(meta_) != n:
        msg = f"meta has {len(meta_)} rows but x has {n}; pass one meta row per embedding"
        raise ValueError(msg)
    per = [
        _within_clusters(src, _as_assignments(a, n), tau, block=block, is_query=None)
        for a in assignments_list
    ]
    union = union_pairs(per)
    t_pairs = time.perf_counter()
    comp = connected_components(n, union)
    t_comp = time.perf_counter()
    choice = _choose(src, np.arange(n), comp, meta_, ids_arr, policy)
    size = _component_sizes(comp)
    t_end = time.perf_counter()
    stats: dict[str, Any] = {
        "n": n,
        "tau": tau,
        "policy": list(policy),
        "clusterings": len(per),
        "pairs_per_clustering": [len(p) for p in per],
        "pairs_union": len(union),
        "found_by_count": union.stats["found_by_count"],
        **_summary(choice.kept, choice.similarity, comp, size, tau),
        "comparisons": int(sum(p.stats["comparisons"] for p in per)),
        "seconds_pairs": round(t_pairs - t0, 3),
        "seconds_components": round(t_comp - t_pairs, 3),
        "seconds_keep": round(t_end - t_comp, 3),
        "seconds": round(t_end - t0, 3),
    }
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
        ids_arr, choice.kept, choice.duplicate_of, choice.similarity, comp, size, union, stats
    )


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
        meta: "ImageMeta | Mapping[str, Any] | pl.DataFrame",
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
            [_as_assignments(a, n) for a in assignments_list],
            tau,
            _check_policy(policy),
            result,
        )


def dedup_incremental(
    old_state: DedupState,
    new_x: np.ndarray,
    new_ids: Any,
    new_meta: "ImageMeta | Mapping[str, Any] | pl.DataFrame",
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
    _check_tau(tau)
    policy = _check_policy(policy)
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
    t0 = time.perf_counter()
    src = _Rows([*old_state.x_parts, new_x])
    n_old, n = old_state.image_id.shape[0], src.n
    n_new = n - n_old
    new_ids_arr = _as_ids(new_ids, n_new)
    new_meta_ = ImageMeta.of(new_meta)
    if len(new_meta_) != n_new:
        msg = f"new_meta has {len(new_meta_)} rows but new_x has {n_new}; one meta row per row"
        raise ValueError(msg)
    assignments = []
    for c, (old_a, a) in enumerate(zip(old_state.assignments, new_assignments, strict=True)):
        a2 = _as_assignments(a, n_new)
        if a2.shape[1] != old_a.shape[1]:
            msg = (
                f"clustering {c}: new assignments have top={a2.shape[1]} but old ones "
                f"top={old_a.shape[1]}; assign new rows with the same top"
            )
            raise ValueError(msg)
        assignments.append(np.concatenate([old_a, a2.astype(old_a.dtype)]))
    is_new = np.zeros(n, dtype=bool)
    is_new[n_old:] = True
    per_new = [_within_clusters(src, a, tau, block=block, is_query=is_new) for a in assignments]
    new_union = union_pairs(per_new)
    old = old_state.result
    pairs = _merge_disjoint(old.pairs, new_union)
    t_pairs = time.perf_counter()

    comp = connected_components(n, pairs)
    affected_roots = np.unique(comp[n_old:])
    affected = np.flatnonzero(np.isin(comp, affected_roots))
    ids_all = np.concatenate([old_state.image_id, new_ids_arr])
    meta_all = ImageMeta.concat([old_state.meta, new_meta_])
    t_comp = time.perf_counter()
    choice = _choose(
        src, affected, comp[affected], meta_all.take(affected), ids_all[affected], policy
    )
    kept = np.concatenate([old.kept, np.ones(n_new, dtype=bool)])
    dup_of = np.concatenate([old.duplicate_of, np.full(n_new, -1, dtype=np.int64)])
    sim = np.concatenate([old.similarity, np.full(n_new, np.nan, dtype=np.float32)])
    previously_kept = affected[(affected < n_old)]
    was_kept = old.kept[previously_kept]
    kept[affected], dup_of[affected], sim[affected] = choice
    size = _component_sizes(comp)
    t_end = time.perf_counter()

    pairs.stats = {"pairs": len(pairs)}
    old_per = old.stats.get("pairs_per_clustering", [0] * len(per_new))
    per_all = [o + len(p) for o, p in zip(old_per, per_new, strict=True)]
    found_by = pairs.found_by if pairs.found_by is not None else np.zeros(0, np.int32)
    found_by_count = np.bincount(_popcount(found_by), minlength=len(per_new) + 1)[1:]
    stats: dict[str, Any] = {
        "n": n,
        "tau": tau,
        "policy": list(policy),
        "clusterings": len(per_new),
        "pairs_per_clustering": per_all,
        "pairs_union": len(pairs),
        "found_by_count": [int(v) for v in found_by_count],
        **_summary(kept, sim, comp, size, tau),
        "comparisons": int(sum(p.stats["comparisons"] for p in per_new)),
        "new_rows": n_new,
        "new_pairs": len(new_union),
        "affected_components": int(affected_roots.size),
        "affected_rows": int(affected.size),
        "previously_kept_now_removed": int((was_kept & ~kept[previously_kept]).sum()),
        "seconds_pairs": round(t_pairs - t0, 3),
        "seconds_components": round(t_comp - t_pairs, 3),
        "seconds_keep": round(t_end - t_comp, 3),
        "seconds": round(t_end - t0, 3),
    }
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


# --------------------------------------------------------------------------------------------
# Ground truth and recall
# --------------------------------------------------------------------------------------------


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
        x: (n, d) float32, L2-normalized.
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

    Memory: one database chunk (``4 · db_chunk · d`` bytes) + the query rows
    (``4 · queries · d``) + faiss's range-search result buffers.
    """
    _check_tau(tau)
    t0 = time.perf_counter()
    src = _Rows([x])
    n = src.n
    q_idx = np.arange(n) if query_idx is None else np.unique(np.asarray(query_idx, np.int64))
    is_query = np.zeros(n, dtype=bool)
    is_query[q_idx] = True
    lo = float(tau - SIM_MARGIN)
    ci: list[np.ndarray] = []
    cj: list[np.ndarray] = []
    chunk_seconds: list[float] = []
    for d0 in range(0, n, db_chunk):
        t_chunk = time.perf_counter()
        d1 = min(n, d0 + db_chunk)
        index = faiss.IndexFlatIP(src.d)
        index.add(src.block(d0, d1))
        for q0 in range(0, q_idx.size, query_batch):
            qi = q_idx[q0 : q0 + query_batch]
            lims, _, found = index.range_search(src.take(qi), lo)
            qrow = np.repeat(qi, np.diff(lims).astype(np.int64))
            prow = found.astype(np.int64) + d0
            # Each unordered pair once: drop self-matches; when both ends are queries keep
            # the occurrence whose query is the smaller row.
            keep = (qrow != prow) & (~is_query[prow] | (qrow < prow))
            a, b = qrow[keep], prow[keep]
            ci.append(np.minimum(a, b))
            cj.append(np.maximum(a, b))
        del index
        chunk_seconds.append(time.perf_counter() - t_chunk)
    pairs = _finish_pairs(src, ci, cj, tau)
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
        out.append(pair_recall(Pairs(*_split_keys(keys), np.empty(0, np.float32)), truth))
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
    src = _Rows([x])
    n = src.n
    size = min(sample_size, n)
    sample = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
    is_query = np.zeros(n, dtype=bool)
    is_query[sample] = True
    truth = exhaustive_pairs(x, tau, query_idx=sample)
    t0 = time.perf_counter()
    found = [
        _within_clusters(src, _as_assignments(a, n), tau, block=block, is_query=is_query)
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
