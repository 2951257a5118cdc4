"""Pair search inside clusters: every pair of rows sharing a cluster with cosine ≥ τ.

For each clustering, each cluster's rows are compared block by block (never an N×N matrix);
the pairs of several clusterings are merged with a ``found_by`` bitmask
(:func:`union_pairs`).

Similarities are canonical: candidate pairs come from float32 matrix products with a margin of
``SIM_MARGIN`` below τ, and every reported similarity is then recomputed as a per-pair dot
product, so the same pair has bit-identical similarity (and the same in/out decision at τ)
whether it came from a full run, an incremental run or
:func:`~curation_assets.lib.dedup.recall.exhaustive_pairs`.

Row indices: all functions work on row positions ``0..n-1`` of ``x``; rows of an incremental
batch are appended after the old rows (``n_old + k``). Every array is (n,) in row order.
Names without a leading underscore and not exported by the package (:class:`Rows`,
:func:`within_clusters`, ...) are shared by the package's modules only.
"""

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

#: Candidate pairs are taken at ``tau - SIM_MARGIN`` from the (blocked) float32 GEMM, then
#: re-checked against ``tau`` with a per-pair dot product (float32 GEMM error on unit vectors
#: of dim ≤ 4096 is < 1e-5).
SIM_MARGIN = 1e-4

_MAX_ROWS = 2**31 - 1  # pair keys pack (i, j) as i << 32 | j


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


def split_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``(i, j)`` of pair keys ``i << 32 | j``."""
    return keys >> 32, keys & 0xFFFFFFFF


class Rows:
    """Rows of one or more (n_p, d) matrices, read as one stacked matrix, no copy.

    Lets an incremental run read old rows (possibly a memmap) and new rows without
    concatenating them; only the rows asked for are gathered, as float32. The parts may be
    float16 (a dedup unit's vectors as read): a gather converts only its rows, exactly.
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
        idx = np.asarray(idx, dtype=np.int64)
        if len(self.parts) == 1:
            if idx.size and idx[-1] - idx[0] + 1 == idx.size and _ascending(idx):
                # consecutive rows (a cluster of rows sorted by cluster): one slice, one pass
                return np.ascontiguousarray(self.parts[0][idx[0] : idx[-1] + 1], np.float32)
            return np.ascontiguousarray(self.parts[0][idx], dtype=np.float32)
        # gathered at the parts' own dtype (float16: half the bytes moved), converted once
        dtype = np.result_type(*[arr.dtype for arr in self.parts])
        out = np.empty((len(idx), self.d), dtype=dtype)
        part = np.searchsorted(self.offsets, idx, side="right") - 1
        for p, arr in enumerate(self.parts):
            sel = part == p
            if sel.any():
                out[sel] = arr[idx[sel] - self.offsets[p]]
        return np.ascontiguousarray(out, dtype=np.float32)

    def block(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as float32 C-contiguous (a view when possible)."""
        p = int(np.searchsorted(self.offsets, start, side="right") - 1)
        if stop <= self.offsets[p + 1]:
            o = self.offsets[p]
            return np.ascontiguousarray(self.parts[p][start - o : stop - o], dtype=np.float32)
        return self.take(np.arange(start, stop))


def _ascending(a: np.ndarray) -> bool:
    """Whether ``a`` increases by one at every step."""
    return a.size < 2 or bool((np.diff(a) == 1).all())


def exact_sims(rows: Rows, i: np.ndarray, j: np.ndarray, batch: int = 4096) -> np.ndarray:
    """Canonical cosine of pairs (per-pair float32 dot products, batch-independent).

    A pair listed more than once (found in several clusterings) is computed once, and the rows
    are gathered in ascending order.

    Memory: two ``batch × d`` float32 blocks (16 MiB at d = 512: small enough that the
    allocator reuses them from block to block instead of mapping fresh pages each time).
    """
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    if i.size == 0:
        return np.empty(0, dtype=np.float32)
    keys = _keys(i, j)
    if keys.size > 1 and bool((keys[1:] > keys[:-1]).all()):  # already unique and sorted
        inverse = None
    else:
        keys, inverse = np.unique(keys, return_inverse=True)
        i, j = split_keys(keys)
    out = np.empty(keys.size, dtype=np.float32)
    for s in range(0, keys.size, batch):
        a = rows.take(i[s : s + batch])
        b = rows.take(j[s : s + batch])
        out[s : s + batch] = np.einsum("ij,ij->i", a, b)
    return out if inverse is None else out[inverse.reshape(-1)]


def finish_pairs(rows: Rows, ci: list[np.ndarray], cj: list[np.ndarray], tau: float) -> Pairs:
    """Deduplicate candidate pairs, recompute similarities exactly, keep those ≥ tau."""
    if not ci:
        return Pairs.empty()
    keys = np.unique(_keys(np.concatenate(ci), np.concatenate(cj)))
    i, j = split_keys(keys)
    sim = exact_sims(rows, i, j)
    keep = sim >= np.float32(tau)
    return Pairs(i[keep], j[keep], sim[keep])


def as_assignments(assignments: np.ndarray, n: int) -> np.ndarray:
    """(n, top) cluster ids from an (n,) or (n, top) array; raises on another shape."""
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


def check_tau(tau: float) -> None:
    """Raise unless ``tau`` is a cosine threshold in (0, 1]."""
    if not 0.0 < tau <= 1.0:
        msg = f"tau={tau}: expected a cosine threshold in (0, 1], e.g. calibrated_tau(model_id)"
        raise ValueError(msg)


def within_clusters(
    rows: Rows,
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
    pairs = finish_pairs(rows, ci, cj, tau)
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
    check_tau(tau)
    src = Rows([x])
    a = as_assignments(assignments, src.n)
    return within_clusters(src, a, tau, block=block, is_query=_query_mask(src.n, rows))


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
    i, j = split_keys(keys[starts])
    count = np.bincount(popcount(found_by), minlength=len(pairs_list) + 1)[1:]
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


def popcount(v: np.ndarray) -> np.ndarray:
    """Set bits of each value (clusterings that found each pair, from ``found_by``)."""
    v = v.astype(np.int64)
    out = np.zeros(v.shape, dtype=np.int64)
    while v.any():
        out += v & 1
        v >>= 1
    return out


def merge_disjoint(a: Pairs, b: Pairs) -> Pairs:
    """Union of two pair sets known to share no pair (keeps found_by), sorted by (i, j)."""
    keys = np.concatenate([a.keys(), b.keys()])
    order = np.argsort(keys, kind="stable")
    fa = a.found_by if a.found_by is not None else np.zeros(len(a), np.int32)
    fb = b.found_by if b.found_by is not None else np.zeros(len(b), np.int32)
    i, j = split_keys(keys[order])
    return Pairs(
        i,
        j,
        np.concatenate([a.sim, b.sim])[order],
        np.concatenate([fa, fb])[order].astype(np.int32),
    )
