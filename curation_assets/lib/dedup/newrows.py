"""The incremental pair search in one pass: every row read once, against the new rows it meets.

An incremental run searches only pairs that touch a new row (a row of a redone shard). The
per-unit search (:mod:`.units`) reads every (clustering, bucket) unit a new row falls in: when
the new rows are a few percent of the corpus they fall in every unit, so it reads C copies of
every vector. The units of clustering 0 hold every row exactly once, with its cluster in every
clustering (``clusters``), so this search reads only those: one pass, 1/C of the bytes.

Work unit ``b`` (:class:`NewRowsWork`, engine key ``"b"``) streams bucket ``b`` of clustering 0
(:func:`~.layout.iter_parts`), converts its rows to float32 one block at a time and, per
clustering, compares each row with the new rows of its own cluster in that clustering: the new
rows sit in a faiss inverted-file index keyed by cluster, and each row is range-searched in the
one list of its cluster (``range_search_preassigned``), so the loop over clusters runs in
faiss' C++, not in Python. Candidates are taken at τ − ``SIM_MARGIN`` and re-checked with the
canonical per-pair dot product (:func:`~.pairs.exact_sims`), so the pairs and similarities are
those of the per-unit search (tested). A pair of two new rows is reported once, by the unit
of the row whose (image_id, shard) sorts first; a pair found by several clusterings is one row
per clustering, as the units report it.

Memory: one block of a bucket's rows (:data:`BLOCK`, as read and as float32: ~40 MiB at
d = 512, whatever the bucket's size), the pairs found, the new rows' float16 vectors (a quarter
of the budget at most: :func:`new_rows_cap`, else the run searches units) and the indexes of
one chunk of them, one float16 copy per clustering (a quarter: :func:`chunk_rows`; each chunk
is a pass over the buckets, and a pair of two new rows is reported in one chunk only, by
rank). Nothing in it grows with the corpus but the new rows: at 1M a bucket of clustering 0
holds ~150k rows, and reading it whole cost more than the rest of the search.
"""

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import polars as pl
from faiss.contrib.ivf_tools import range_search_preassigned

from curation_assets.lib.dedup.layout import iter_parts
from curation_assets.lib.dedup.pairs import SIM_MARGIN, Rows, exact_sims
from curation_assets.lib.dedup.units import (
    ENDPOINT_SCHEMA,
    UNIT_PAIR_SCHEMA,
    UnitResult,
    oriented_pairs,
)
from curation_assets.lib.memory import MemoryBudget
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.vectors import half_bytes, half_parts

#: Rows converted to float32 and searched at a time (2 · BLOCK · d bytes of float32 at d=512:
#: 32 MiB); larger blocks gain nothing (measured at 1M × 512).
BLOCK = 16_384


def new_rows_cap(budget: MemoryBudget) -> int:
    """Bytes of kept new rows (:attr:`.layout.LaidOut.new_rows`) past which units are searched.

    The one-pass search holds every new row as float16 (~2·d + 100 bytes a row as polars
    measures them): they may take a quarter of the budget. Their indexes are built one chunk
    at a time (:func:`chunk_rows`), in another quarter.
    """
    return budget.bytes // 4


def chunk_rows(budget: MemoryBudget, dim: int, n_clusterings: int) -> int:
    """New rows indexed at a time: their indexes fit a quarter of the budget.

    A row costs float16 codes and an id per clustering, and one more of each while a
    clustering's lists are filled (:func:`_fill_lists` sorts the chunk's codes by cluster).
    Each chunk is one pass over the buckets (at 2 GiB and d = 512: ~87k rows, so a 1 % shard
    of 10M is two passes).
    """
    return max(1, budget.bytes // 4 // ((n_clusterings + 1) * (2 * dim + 8)))


@dataclass(frozen=True)
class NewRows:
    """The new rows of an incremental run, as the one-pass search takes them.

    Attributes:
        frame: image_id, shard, width, height, ingested_at, sorted by (image_id, shard): a
            row's position is its rank, which decides which unit reports a pair of two new
            rows.
        x: (m, d) float16 vectors aligned with ``frame``.
        clusters: (m, C) int32 cluster of each row in each clustering.
        ks: Clusters of each clustering.
    """

    frame: pl.DataFrame
    x: np.ndarray
    clusters: np.ndarray
    ks: tuple[int, ...]

    @classmethod
    def of(cls, members: pl.DataFrame, ks: tuple[int, ...]) -> "NewRows":
        """From ``dedup_members`` rows of clustering 0 (:attr:`.layout.LaidOut.new_rows`)."""
        rows = members.sort("image_id", "shard")
        n_c = len(ks)
        if rows.is_empty():
            empty = np.zeros((0, n_c), np.int32)
            return cls(rows.drop("vector"), np.zeros((0, 0), np.float16), empty, ks)
        dim = int(rows["vector"].bin.size()[0]) // 2  # type: ignore[arg-type]
        frame, parts = half_parts(rows.lazy(), "vector", dim)
        x = np.concatenate(parts) if len(parts) > 1 else parts[0]
        clusters = frame["clusters"].list.to_array(n_c).to_numpy().astype(np.int32)
        keep = ["image_id", "shard", "width", "height", "ingested_at"]
        return cls(frame.select(keep), np.ascontiguousarray(x), clusters, ks)

    def __len__(self) -> int:
        """Number of new rows."""
        return self.frame.height

    @functools.cached_property
    def shards(self) -> list[str]:
        """The shards the new rows come from."""
        return self.frame["shard"].unique().to_list()


def _indexes(new: NewRows, chunk: tuple[int, int]) -> list[faiss.IndexIVF]:
    """Per clustering, an inner-product inverted-file index of the new rows keyed by cluster.

    Only the rows of ``chunk`` (a range of ranks); a row's id is its rank among all new rows.
    The lists hold the rows as float16 codes (``QT_fp16``, no residual): the values the layout
    stores, decoded exactly, at half the bytes of an ``IndexIVFFlat`` (measured with 10k × 512
    rows in five clusterings: 59 MB against 115 MB, and no slower to search). Candidates are
    re-checked by the canonical dot product anyway (:func:`~.pairs.exact_sims`).

    The rows' float16 bytes are those codes, so each list is filled once with its rows
    (:func:`_fill_lists`) instead of through faiss' ``add``, which encodes a float32 copy of
    the chunk and grows each list one row at a time (its vectors' capacity doubling): 9,000 ×
    512 rows in 1,000 lists per clustering held 55 MB instead of 90 MB and took 0.05 s
    instead of 0.10 s (2026-12-04, 2 cores, AVX-512), with the same lists, rows and order.
    """
    lo, hi = chunk
    codes = new.x[lo:hi].view(np.uint8)  # (m, 2·d): QT_fp16's codes, byte for byte
    d = new.x.shape[1]
    out = []
    for c, k in enumerate(new.ks):
        index = faiss.IndexIVFScalarQuantizer(
            faiss.IndexFlatIP(d),
            d,
            k,
            faiss.ScalarQuantizer.QT_fp16,
            faiss.METRIC_INNER_PRODUCT,
            False,  # by_residual: the codes are the rows themselves
        )
        index.is_trained = True  # lists are given (the clustering's own assignments)
        _fill_lists(index, new.clusters[lo:hi, c], codes, lo)
        out.append(index)
    return out


def _fill_lists(index: faiss.IndexIVF, lists: np.ndarray, codes: np.ndarray, first: int) -> None:
    """Put row ``i`` (id ``first + i``, code ``codes[i]``) in list ``lists[i]`` of ``index``.

    Each list gets its rows in one call, in row order (as ``add`` puts them), so its storage
    is sized once.
    """
    if not len(lists):
        return
    if codes.shape[1] != index.code_size:
        msg = f"codes of {codes.shape[1]} bytes for an index of {index.code_size}-byte codes"
        raise ValueError(msg)
    if lists.min() < 0 or lists.max() >= index.nlist:
        msg = f"clusters {lists.min()}..{lists.max()} outside the index's {index.nlist} lists"
        raise ValueError(msg)
    order = np.argsort(lists, kind="stable")
    sorted_codes = np.ascontiguousarray(codes[order])
    ids = order.astype(np.int64) + first
    bounds = np.searchsorted(lists[order], np.arange(index.nlist + 1))
    invlists = index.invlists
    assert invlists is not None  # an IndexIVF is built with its lists
    for lst in np.flatnonzero(np.diff(bounds)):
        a, b = int(bounds[lst]), int(bounds[lst + 1])
        invlists.add_entries(
            int(lst), b - a, faiss.swig_ptr(ids[a:b]), faiss.swig_ptr(sorted_codes[a:b])
        )
    index.ntotal = len(ids)


def search_new_rows(
    store: DeltaStore,
    b: int,
    tau: float,
    new: NewRows,
    *,
    version: int | None = None,
    chunk: tuple[int, int] | None = None,
    indexes: list[faiss.IndexIVF] | None = None,
) -> UnitResult:
    """Pairs (cosine ≥ ``tau``) of a row of clustering 0's bucket ``b`` and a new row.

    A pair is searched in each clustering where the two rows share a cluster. With ``chunk``
    only the new rows of that range of ranks are searched (:func:`chunk_rows`); a pair of two
    new rows is still reported once over all chunks (by the row ranked first).

    Args:
        store: Where ``dedup_members`` lives.
        b: Bucket of clustering 0.
        tau: Cosine threshold.
        new: The new rows: every row of the redone shards (those in bucket ``b`` are found in
            it by (image_id, shard)).
        version: Read ``dedup_members`` as of this Delta version (None = latest).
        chunk: The ranks ``[lo, hi)`` of the new rows searched (None: all).
        indexes: :func:`_indexes` of that chunk when the caller built them once.

    Returns:
        A :class:`~.units.UnitResult` with ``clustering`` = -1 (all of them).
    """
    t0 = time.perf_counter()
    lo, hi = chunk if chunk is not None else (0, len(new))
    stats: dict[str, Any] = {"rows": 0, "queries": hi - lo, "search": "new_rows", "chunk": lo}
    if hi <= lo:
        stats.update(comparisons=0, pairs=0, seconds=time.perf_counter() - t0)
        return _empty(b, stats)
    indexes = indexes if indexes is not None else _indexes(new, (lo, hi))
    counts = [np.bincount(new.clusters[lo:hi, c], minlength=k) for c, k in enumerate(new.ks)]
    floor = float(np.float32(tau - SIM_MARGIN))
    buf = np.empty((BLOCK, new.x.shape[1]), np.float32)
    n = comparisons = 0
    pairs: list[pl.DataFrame] = []
    endpoints: list[pl.DataFrame] = []
    # the bucket streamed a block at a time: memory is one block, not the bucket (a bucket is
    # sized by the full run and grows with the corpus until the layout is rebuilt)
    batches = iter_parts(store, b, dim=new.x.shape[1], rows=BLOCK, version=version)
    for frame, parts in batches:
        got = _search_block(frame, parts, new, indexes, counts, floor, tau, buf)
        n += frame.height
        comparisons += got[2]
        if got[0].height:
            pairs.append(got[0])
            endpoints.append(got[1])
    stats.update(rows=n, comparisons=comparisons)
    if not pairs:
        stats.update(pairs=0, seconds=time.perf_counter() - t0)
        return _empty(b, stats)
    found = pl.concat(pairs)
    ends = pl.concat(endpoints).unique(["image_id", "shard"], keep="first", maintain_order=True)
    stats.update(pairs=found.height, seconds=time.perf_counter() - t0)
    return UnitResult(-1, b, found, ends.sort("image_id", "shard"), stats)


def _search_block(
    frame: pl.DataFrame,
    parts: list[np.ndarray],
    new: NewRows,
    indexes: list[faiss.IndexIVF],
    counts: list[np.ndarray],
    floor: float,
    tau: float,
    buf: np.ndarray,
) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    """Pairs of one block of bucket rows (``frame``, float16 ``parts``) and a chunk of new rows.

    ``indexes`` hold the chunk (ids: ranks among all new rows), ``counts`` its rows per
    cluster of each clustering; ``buf`` is the float32 block (at least the block's rows).

    Returns:
        The pairs, their endpoint rows, and the comparisons made.
    """
    n, n_c = frame.height, len(new.ks)
    if n == 0:
        return *_no_pairs(), 0
    clusters = frame["clusters"].list.to_array(n_c).to_numpy().astype(np.int64)
    # a bucket row that is itself new: its rank among the new rows (-1: an old row); new rows
    # are the redone shards' rows, laid out in their own files: most blocks have none
    rank = np.full(n, -1, np.int64)
    if frame["shard"].is_in(new.shards).any():
        rank = (
            frame.select("image_id", "shard")
            .join(
                new.frame.select("image_id", "shard").with_row_index("_q"),
                on=["image_id", "shard"],
                how="left",
                maintain_order="left",
            )["_q"]
            .fill_null(-1)
            .to_numpy()
            .astype(np.int64)
        )
    comparisons = int(sum(counts[c][clusters[:, c]].sum() for c in range(n_c)))
    found_i: list[np.ndarray] = []
    found_q: list[np.ndarray] = []
    found_c: list[np.ndarray] = []
    for s0, xb in _blocks(parts, buf):
        for c in range(n_c):
            keys = np.ascontiguousarray(clusters[s0 : s0 + xb.shape[0], c : c + 1])
            lims, _, q = range_search_preassigned(indexes[c], xb, floor, keys)
            i = s0 + np.repeat(np.arange(xb.shape[0]), np.diff(lims.astype(np.int64)))
            # an old row: always; a new row: only against new rows ranked after it (this
            # drops the row itself, and reports a pair of new rows in one unit and chunk only)
            keep = (rank[i] < 0) | (rank[i] < q)
            found_i.append(i[keep])
            found_q.append(q[keep])
            found_c.append(np.full(int(keep.sum()), c, np.int32))
    i = np.concatenate(found_i)
    if i.size == 0:
        return *_no_pairs(), comparisons
    q = np.concatenate(found_q).astype(np.int64)
    c_of = np.concatenate(found_c)
    sim = exact_sims(Rows([*parts, new.x]), i, n + q)
    hit = sim >= np.float32(tau)
    i, q, c_of, sim = i[hit], q[hit], c_of[hit], sim[hit]
    pairs, endpoints = _frames(frame, Rows(parts), new, i, q, c_of, sim)
    return pairs, endpoints, comparisons


def _blocks(parts: list[np.ndarray], buf: np.ndarray):
    """``(first row, float32 rows)`` of the parts, at most ``len(buf)`` rows at a time in ``buf``.

    float16 → float32 is exact, so every block holds the values the pair check recomputes.
    """
    start = 0
    for part in parts:
        for s0 in range(0, part.shape[0], buf.shape[0]):
            xb = buf[: min(buf.shape[0], part.shape[0] - s0)]
            half_to_float(part[s0 : s0 + xb.shape[0]], xb)
            yield start + s0, xb
        start += part.shape[0]


def half_to_float(src: np.ndarray, out: np.ndarray) -> None:
    """Write the (n, d) float16 rows ``src`` into the float32 ``out``, exactly.

    faiss' fp16 decoder (its ``QT_fp16`` scalar quantizer: the stored bytes are its codes)
    runs on faiss' threads: at 1M × 512, 0.30 s on 2 cores against numpy's 0.64 s, bit for
    bit the same values (every finite float16 checked). Anything else (another dtype, a
    strided view) is converted by numpy.
    """
    if (
        src.dtype != np.float16
        or src.ndim != 2
        or not src.flags.c_contiguous
        or not out.flags.c_contiguous
        or out.dtype != np.float32
        or out.shape != src.shape
        or src.size == 0
    ):
        out[...] = src
        return
    decode = _decoder(src.shape[1]).sa_decode_c  # pyright: ignore[reportAttributeAccessIssue]
    decode(src.shape[0], faiss.swig_ptr(src.view(np.uint8)), faiss.swig_ptr(out))


@functools.cache
def _decoder(dim: int) -> faiss.IndexScalarQuantizer:
    """A float16 scalar quantizer of ``dim`` (stateless: decoding needs no training)."""
    return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16)


def _frames(
    frame: pl.DataFrame,
    rows: Rows,
    new: NewRows,
    i: np.ndarray,
    q: np.ndarray,
    c_of: np.ndarray,
    sim: np.ndarray,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The pairs (canonical orientation, as the units write them) and the rows on them."""
    ids_r, shards_r = frame["image_id"].to_numpy(), frame["shard"].to_numpy()
    ids_q, shards_q = new.frame["image_id"].to_numpy(), new.frame["shard"].to_numpy()
    pairs = oriented_pairs((ids_r[i], shards_r[i]), (ids_q[q], shards_q[q]), sim, c_of)
    cols = ["image_id", "shard", "width", "height", "ingested_at"]
    on_r, on_q = np.unique(i), np.unique(q)
    endpoints = (
        pl.concat(
            [
                # float32 of float16 values: half_bytes gives the stored bytes back exactly
                frame[on_r].select(cols).with_columns(vector=half_bytes(rows.take(on_r))),
                new.frame[on_q].select(cols).with_columns(vector=half_bytes(new.x[on_q])),
            ]
        )
        .select(list(ENDPOINT_SCHEMA))
        .unique(["image_id", "shard"], keep="first")
        .sort("image_id", "shard")
    )
    return pairs, endpoints


def _no_pairs() -> tuple[pl.DataFrame, pl.DataFrame]:
    """No pairs, and no rows on them."""
    return pl.DataFrame(schema=UNIT_PAIR_SCHEMA), pl.DataFrame(schema=ENDPOINT_SCHEMA)


def _empty(b: int, stats: dict[str, Any]) -> UnitResult:
    return UnitResult(-1, b, *_no_pairs(), stats)


@dataclass(frozen=True)
class NewRowsWork:
    """Bucket ``b`` of the one-pass search as engine work: ``work("b", progress)``.

    Plain values (picklable): the new rows travel with it (bounded by the run's budget), the
    bucket is read where the work runs. With ``chunks``, key ``"b:k"`` searches bucket ``b``
    against chunk ``k``; the faiss indexes of a chunk are built once per process (the run lists
    its keys chunk by chunk).

    Attributes:
        root_uri: Delta root.
        storage_options: Its storage options.
        tau: Similarity floor of the search.
        new: The new rows.
        version: The ``dedup_members`` version every unit reads.
        chunks: Ranks ``[lo, hi)`` of each chunk of new rows (None: one, all of them).
    """

    root_uri: str
    storage_options: dict[str, str]
    tau: float
    new: NewRows
    version: int | None = None
    chunks: tuple[tuple[int, int], ...] | None = None

    def keys(self, buckets: int) -> list[str]:
        """The engine keys: every bucket, chunk after chunk."""
        if self.chunks is None:
            return [str(b) for b in range(buckets)]
        return [f"{b}:{k}" for k in range(len(self.chunks)) for b in range(buckets)]

    def __call__(self, key: str, progress: Callable[[str], None]) -> UnitResult:
        """Search bucket ``b`` of clustering 0 (key ``"b"`` or ``"b:k"``) against new rows."""
        b, _, k = key.partition(":")
        chunk = (0, len(self.new)) if self.chunks is None else self.chunks[int(k or 0)]
        result = search_new_rows(
            DeltaStore(self.root_uri, self.storage_options),
            int(b),
            self.tau,
            self.new,
            version=self.version,
            chunk=chunk,
            indexes=_cached_indexes(self.new, chunk),
        )
        progress(f"bucket {key}: {result.pairs.height} pairs with new rows")
        return result


_INDEXES: list[tuple[NewRows, tuple[int, int], list[faiss.IndexIVF]]] = []


def _cached_indexes(new: NewRows, chunk: tuple[int, int]) -> list[faiss.IndexIVF]:
    """:func:`_indexes` of a chunk of ``new``, built once per process for the run's buckets.

    One chunk at a time; :func:`forget_indexes` frees it when the run is done.
    """
    if not _INDEXES or _INDEXES[0][0] is not new or _INDEXES[0][1] != chunk:
        _INDEXES[:] = []  # the old chunk's indexes go before the next one's are built
        _INDEXES[:] = [(new, chunk, _indexes(new, chunk))]
    return _INDEXES[0][2]


def forget_indexes() -> None:
    """Free the cached indexes (and the new rows they hold) of this process."""
    _INDEXES.clear()
