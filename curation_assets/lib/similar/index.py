"""A persisted faiss index per shard, searchable together through one shared coarse quantizer.

Why this shape (the corpus is 10⁸–10⁹ images, and a new shard must cost what it costs):

* **One file per shard.** A new shard writes its own ``IndexIVFFlat`` file and nothing else;
  no other shard's file is read or rewritten (tested). Re-materializing a shard replaces its
  file.
* **A shared coarse quantizer** (``similarity_quantizer``: spherical k-means centroids trained
  on a seeded sample of *all* embeddings, ``nlist`` = √N rounded to a power of two). Every
  shard files its vectors under the same inverted lists, so a query's coarse assignment is
  computed once and reused for every shard file (``search_preassigned``). The quantizer is its
  own asset, not clustering 0 of the dedup stage: those centroids are trained on the
  *filtered* images, and uniqueness is meant to become a filter signal, which would make the
  graph cyclic (filter → centroids → index → uniqueness → filter).
* **Files hold only the inverted lists.** The quantizer is swapped for an empty one before
  writing (a 32k × 512 quantizer would otherwise add 64 MB to every shard file); searches
  compute the coarse assignment with the shared quantizer and pass it in.
* **Memory-mapped reads.** Files are opened with ``IO_FLAG_MMAP`` (faiss ``OnDiskInvertedLists``),
  so a search pages in only the ``nprobe`` lists it scans, not the whole file: memory per
  open shard is the pages touched, and shards are searched one at a time with a running
  top-k merge (``(nq, 2k)`` floats), so search memory does not grow with the corpus.
* **Atomic publication.** A file is written under a temporary name, fsynced and renamed to a
  fresh unique name (on an object store: uploaded in one PUT under a fresh unique name); then
  the shard's manifest row (``similarity_index``, one Delta transaction) is switched to it;
  then the shard's older files are deleted. A process killed at any point leaves the manifest
  pointing at a complete file (the old one until the commit, the new one after); leftovers are
  removed by the shard's next build.
* **Portable rows.** The manifest's ``file`` is relative to the index root
  ``<Delta root>/_similarity`` (``<model>/shard=<key>/<uuid>.faiss``), so a home moved as a
  whole, or copied to an object store, still finds its files. Files under a configured
  ``files_root`` outside the Delta root keep their absolute path or URI. Rows of earlier
  versions (absolute local paths) are still read: as written, or, when that file is gone, at
  the same ``<model>/shard=<key>/<file>`` under the current index root.
* **Object stores.** With an ``s3://`` Delta root the files live in the bucket
  (:mod:`curation_assets.lib.objectstore`); a search then reads one shard's file into memory
  at a time (no memory map: it is downloaded), so its memory is one shard file, not the pages
  probed.

What a query costs at N images in S shards, with ``nlist`` lists and ``nprobe`` probed: the
coarse assignment ``nlist · d`` flops, the scan ``nprobe · N / nlist · d`` flops
(≈ ``nprobe · √N · d``: 32 · 31,600 · 512 ≈ 0.5 Gflop at N = 10⁹), and S file opens (mmap, a
few hundred µs each): at S = 10⁵ the opens dominate a single query, which is why batched
queries (a shard's uniqueness) pay them once per batch. Exact (brute-force) results when
``nprobe = nlist``.
"""

import hashlib
import logging
import os
import re
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

from curation_assets.lib import objectstore as ost
from curation_assets.lib.cluster import KMeansModel, faiss
from curation_assets.lib.cluster.io import seeded_pool
from curation_assets.lib.errors import ConfigError
from curation_assets.lib.objectstore import is_remote
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import IMAGE_EMBEDDINGS
from curation_assets.lib.tables.similar import SIMILARITY_INDEX, SIMILARITY_QUANTIZER
from curation_assets.lib.vectors import embedding_matrix

logger = logging.getLogger(__name__)


class SimilarityIndexError(ConfigError):
    """The similarity index cannot serve the request (missing, other model, stale quantizer)."""


# --------------------------------------------------------------------------- the quantizer


@dataclass(frozen=True)
class Quantizer:
    """The shared coarse quantizer as stored.

    Attributes:
        matrix: (nlist, d) float32, L2-normalized centroids.
        version: Content hash (every shard index records it).
        model_id: Embedding model.
    """

    matrix: np.ndarray
    version: str
    model_id: str

    @property
    def nlist(self) -> int:
        """Inverted lists."""
        return int(self.matrix.shape[0])

    def flat(self) -> "faiss.IndexFlatIP":
        """The centroids as a faiss inner-product index (what the IVF files are attached to)."""
        index = faiss.IndexFlatIP(self.matrix.shape[1])
        index.add(np.ascontiguousarray(self.matrix, dtype=np.float32))
        return index


def quantizer_version(centroids: np.ndarray) -> str:
    """A short content hash of the centroids."""
    data = np.ascontiguousarray(centroids, dtype=np.float32).tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def quantizer_frame(model: KMeansModel, model_id: str, trained_at: datetime) -> pl.DataFrame:
    """One row per centroid of ``model`` (see ``SIMILARITY_QUANTIZER``)."""
    return pl.DataFrame(
        {
            "centroid_id": np.arange(model.k, dtype=np.int32),
            "centroid": pl.Series("centroid", list(model.centroids), dtype=pl.List(pl.Float32)),
            "train_size": model.sizes.astype(np.int64),
            "version": quantizer_version(model.centroids),
            "seed": model.seed,
            "model_id": model_id,
            "trained_at": trained_at,
        }
    )


def load_quantizer(store: DeltaStore, *, version: int | None = None) -> Quantizer | None:
    """The stored quantizer (None when never trained), as of Delta ``version`` when given."""
    if not store.exists(SIMILARITY_QUANTIZER.name):
        return None
    df = store.read(SIMILARITY_QUANTIZER, version=version).sort("centroid_id")
    if df.is_empty():
        return None
    content, model_id = str(df["version"][0]), str(df["model_id"][0])
    return Quantizer(embedding_matrix(df["centroid"]), content, model_id)


def embedding_pool(store: DeltaStore, rows: int, *, seed: int = 0) -> pl.DataFrame:
    """A seeded sample of about ``rows`` embeddings (any image, filtered or not), by shards.

    Shards are taken in a seeded random order until they hold twice ``rows`` images, then
    each image is kept when a seeded hash of its id falls under the needed share (the same
    rule as the dedup centroids' pool, over ``image_embeddings``). The read is ∝ the sample.

    Returns:
        ``image_id, shard, model_id, embedding`` sorted by shard, image_id.

    Memory: the pool (≈ ``rows · 4d`` bytes) plus one shard being read.
    """
    cols = ["image_id", "shard", "model_id", "embedding"]
    return seeded_pool(
        store.shard_row_counts(IMAGE_EMBEDDINGS.name),
        rows,
        seed=seed,
        read=lambda shards: store.read(IMAGE_EMBEDDINGS, shards=shards, columns=cols),
        read_all=lambda: store.read(IMAGE_EMBEDDINGS, columns=cols).sort("shard", "image_id"),
    )


def model_slug(model_id: str) -> str:
    """A folder name for a model id (``open_clip:ViT-B-32@x`` → ``open_clip_ViT-B-32_x``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model_id).strip("_") or "model"


INDEX_ROOT = "_similarity"
"""The index root's name under the Delta root; manifest rows are relative to it."""


def files_root_for(store: DeltaStore, configured: str = "") -> str:
    """Where the index files live: ``configured`` (a folder or URI), else ``<root>/_similarity``.

    Both local and ``s3://`` roots are supported (:mod:`curation_assets.lib.objectstore`).
    """
    if configured:
        return configured if is_remote(configured) else str(Path(configured).expanduser().resolve())
    return store.uri(INDEX_ROOT)


def stored_path(store: DeltaStore, location: str) -> str:
    """What the manifest records for ``location``: relative to the index root when under it."""
    relative = ost.relative_to(location, store.uri(INDEX_ROOT))
    return location if relative is None else relative


def file_location(store: DeltaStore, stored: str) -> str:
    """The file a manifest row names: relative rows under the index root, absolute ones as they are.

    An absolute local path of an earlier version that no longer exists (a moved home) is looked
    for at the same ``<model>/shard=<key>/<file>`` under the current index root.
    """
    if is_remote(stored) or stored.startswith("file://"):
        return stored
    if not Path(stored).is_absolute():
        return ost.join(store.uri(INDEX_ROOT), stored)
    if Path(stored).exists():
        return stored
    return ost.join(store.uri(INDEX_ROOT), *Path(stored).parts[-3:])


def build_ivf(x: np.ndarray, quantizer: Quantizer) -> "faiss.IndexIVFFlat":
    """An inner-product ``IndexIVFFlat`` of ``x`` (ids 0..n-1) under the shared quantizer.

    Args:
        x: (n, d) float32, L2-normalized, in the model of ``quantizer``.
        quantizer: The shared coarse quantizer.

    Memory: the index (``4 · n · d`` bytes plus 8 bytes of id per vector).
    """
    d = quantizer.matrix.shape[1]
    if x.ndim != 2 or (x.shape[0] and x.shape[1] != d):
        msg = f"vectors of shape {x.shape} for a quantizer of dimension {d}"
        raise SimilarityIndexError(msg)
    flat = quantizer.flat()
    index = faiss.IndexIVFFlat(flat, d, quantizer.nlist, faiss.METRIC_INNER_PRODUCT)
    index.is_trained = True  # the lists are the shared quantizer's: nothing to train
    if x.shape[0]:
        index.add_with_ids(np.ascontiguousarray(x, dtype=np.float32), np.arange(x.shape[0]))
    # the file holds the lists only (see module doc); faiss keeps raw pointers, so the Python
    # objects that own both quantizers stay referenced by the index
    empty = faiss.IndexFlatIP(d)
    index.quantizer = empty
    index.referenced_objects = [flat, empty]  # pyright: ignore[reportAttributeAccessIssue]
    return index


def write_atomically(
    index: "faiss.IndexIVFFlat", folder: Path | str, options: Mapping[str, str] | None = None
) -> tuple[str, int]:
    """Write ``index`` to a new uniquely named file in ``folder``: temp, fsync, rename, fsync dir.

    On an object store (``folder`` a URI): written to a local temporary file, uploaded as one
    object under its final unique name (a PUT is atomic), the local file removed.

    Returns:
        The final location (``<uuid>.faiss``; a reader never sees a partial file under it) and
        its size in bytes.
    """
    if is_remote(folder):
        name = f"{uuid.uuid4().hex}.faiss"
        with tempfile.TemporaryDirectory(prefix="curation-faiss-") as tmp_dir:
            local = Path(tmp_dir) / name
            faiss.write_index(index, str(local))
            size = local.stat().st_size
            final_uri = ost.join(folder, name)
            ost.upload(local, final_uri, options or {})
        return final_uri, size
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{uuid.uuid4().hex}.faiss"
    tmp = folder / f".{name}.tmp"
    faiss.write_index(index, str(tmp))
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    final = folder / name
    os.replace(tmp, final)
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return str(final), final.stat().st_size


@dataclass(frozen=True)
class ShardIndexRow:
    """What :func:`publish_shard` wrote for one shard (``file``: its full path or URI)."""

    shard: str
    file: str
    n_vectors: int
    file_bytes: int
    removed_files: int


def publish_shard(
    store: DeltaStore,
    files_root: Path | str,
    shard: str,
    image_ids: Sequence[str],
    x: np.ndarray,
    *,
    model_id: str,
    quantizer: Quantizer,
    built_at: datetime,
) -> ShardIndexRow:
    """Build, write and publish one shard's index; delete the shard's superseded files.

    Order: file (atomic) → manifest row (one Delta transaction) → old files removed. See the
    module docstring for what a kill at each point leaves.

    Raises:
        SimilarityIndexError: If the shard's model is not the quantizer's.
    """
    if model_id != quantizer.model_id:
        msg = (
            f"shard {shard} is embedded with {model_id} but similarity_quantizer was trained "
            f"on {quantizer.model_id}; re-materialize similarity_quantizer"
        )
        raise SimilarityIndexError(msg)
    options = store.storage_options
    folder = ost.join(files_root, model_slug(model_id), f"shard={shard}")
    index = build_ivf(x, quantizer)
    # write → publish → delete the superseded files, under the shard's lock: the folder lives
    # under the Delta root, which several instances may share; without the lock one writer's
    # clean-up deletes the file another has just published (seen with two instances at once)
    with store.lock(index_lock(shard)):
        path, size = write_atomically(index, folder, options)
        row = pl.DataFrame(
            {
                "shard": [shard],
                "file": [stored_path(store, path)],
                "model_id": [model_id],
                "dim": [int(quantizer.matrix.shape[1])],
                "quantizer_version": [quantizer.version],
                "nlist": [quantizer.nlist],
                "n_vectors": [len(image_ids)],
                "file_bytes": [size],
                "image_ids": pl.Series("image_ids", [list(image_ids)], dtype=pl.List(pl.String)),
                "built_at": [built_at],
            }
        )
        store.replace_shard(SIMILARITY_INDEX, shard, row)
        removed = 0
        keep = Path(path).name
        for name in ost.list_names(folder, options):
            if name != keep:
                ost.delete_file(ost.join(folder, name), options)
                removed += 1
    return ShardIndexRow(shard, path, len(image_ids), size, removed)


def index_lock(shard: str) -> str:
    """The lock name under which a shard's index files and manifest row change."""
    return f"similarity-index-{shard}"


@dataclass(frozen=True)
class PublishedShard:
    """A shard's manifest row as it stands, and whether its file is there."""

    file: str | None
    n_vectors: int
    file_exists: bool


def published_shard(store: DeltaStore, shard: str) -> PublishedShard:
    """The shard's current manifest row and whether its file exists, read under its lock.

    For the ``every_embedding_indexed`` check: whoever published last (another instance on
    the same Delta root may have replaced this run's file since), the manifest must point at
    a file that exists and holds every embedding.
    """
    with store.lock(index_lock(shard)):
        rows = store.read(SIMILARITY_INDEX, shards=[shard], columns=["file", "n_vectors"])
        if rows.is_empty():
            return PublishedShard(None, 0, False)
        file = file_location(store, rows["file"][0])
        there = ost.exists(file, store.storage_options)
        return PublishedShard(file, int(rows["n_vectors"][0]), there)


# --------------------------------------------------------------------------------- search


@dataclass
class Neighbours:
    """Top-k neighbours of each query, most similar first.

    Attributes:
        similarity: (nq, k) float32 cosine; -inf where fewer than k were found.
        image_ids: nq lists of image ids (shorter where fewer were found).
        shards: nq lists of the shards of those images.
        searched_shards: Shard files searched.
        skipped_shards: Shards not searched, with why (stale quantizer, other model).
        index_images: Vectors in the searched files.
    """

    similarity: np.ndarray
    image_ids: list[list[str]]
    shards: list[list[str]]
    searched_shards: int
    skipped_shards: dict[str, str] = field(default_factory=dict)
    index_images: int = 0


def manifest(store: DeltaStore) -> pl.DataFrame:
    """The manifest without its id lists: one row per indexed shard (S rows, small)."""
    cols = [c for c in SIMILARITY_INDEX.column_names if c != "image_ids"]
    if not store.exists(SIMILARITY_INDEX.name):
        return SIMILARITY_INDEX.empty().select(cols)
    return store.scan(SIMILARITY_INDEX).select(cols).sort("shard").collect()


def open_shard_file(path: str, options: Mapping[str, str] | None = None) -> "faiss.IndexIVFFlat":
    """Memory-map one shard's file (lists only: search it with ``search_preassigned``).

    The file's quantizer is an empty placeholder; :func:`search` computes the coarse
    assignment once with the shared quantizer and hands it to every shard file, so the
    placeholder is never consulted (an IVFFlat scan with inner product needs no residuals).
    A file on an object store is read whole into memory (``options``: storage options).
    """
    if is_remote(path):
        data = np.frombuffer(ost.read_bytes(path, options or {}), dtype=np.uint8)
        index = faiss.deserialize_index(data)
    else:
        index = faiss.read_index(path, faiss.IO_FLAG_MMAP)
    if not isinstance(index, faiss.IndexIVFFlat):
        msg = f"{path} holds a {type(index).__name__}, not the IndexIVFFlat this index writes"
        raise SimilarityIndexError(msg)
    return index


def search(
    store: DeltaStore,
    queries: np.ndarray,
    k: int,
    *,
    nprobe: int,
    quantizer: Quantizer | None = None,
    model_id: str | None = None,
) -> Neighbours:
    """The ``k`` most similar indexed images of each query, over every current shard file.

    Args:
        store: Where ``similarity_index`` and the quantizer live.
        queries: (nq, d) float32, L2-normalized, in the index's model. Memory grows with nq:
            callers batch (a shard's rows at a time).
        k: Neighbours per query.
        nprobe: Inverted lists scanned per query (``nlist`` = exact).
        quantizer: The stored quantizer (read when None).
        model_id: When given, shards of another model are an error.

    Returns:
        :class:`Neighbours`. Shards built with another quantizer version are skipped (stale:
        re-materialize ``similarity_index``) and named in ``skipped_shards``.

    Raises:
        SimilarityIndexError: No quantizer or no indexed shard, or a model mismatch.

    Memory: the running top-k (``12 · nq · 2k`` bytes), faiss's per-query heaps and the
    mmapped pages of the probed lists of one shard file at a time.
    """
    quantizer = quantizer or load_quantizer(store)
    if quantizer is None:
        msg = "similarity_quantizer was never materialized; materialize it, then similarity_index"
        raise SimilarityIndexError(msg)
    if model_id is not None and model_id != quantizer.model_id:
        msg = (
            f"the query is in {model_id} but the similarity index is built on "
            f"{quantizer.model_id}; use that embedder or rebuild the index"
        )
        raise SimilarityIndexError(msg)
    rows = manifest(store)
    if rows.is_empty():
        msg = "similarity_index holds no shard yet; materialize similarity_index for the shards"
        raise SimilarityIndexError(msg)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    nq = q.shape[0]
    flat = quantizer.flat()
    nprobe = max(1, min(nprobe, quantizer.nlist))
    coarse_d, coarse_i = flat.search(q, nprobe)  # once for every shard file
    best_s = np.full((nq, k), -np.inf, dtype=np.float32)
    best_shard = np.full((nq, k), -1, dtype=np.int64)
    best_pos = np.full((nq, k), -1, dtype=np.int64)
    shard_names: list[str] = []
    skipped: dict[str, str] = {}
    n_images = 0
    for rec in rows.iter_rows(named=True):
        if rec["quantizer_version"] != quantizer.version:
            skipped[rec["shard"]] = "built with an older quantizer (re-materialize it)"
            continue
        if not rec["n_vectors"]:
            continue
        index = open_shard_file(file_location(store, rec["file"]), store.storage_options)
        index.nprobe = nprobe
        sims, pos = index.search_preassigned(q, k, coarse_i, coarse_d)
        del index
        s_idx = len(shard_names)
        shard_names.append(rec["shard"])
        n_images += int(rec["n_vectors"])
        sims = np.where(pos >= 0, sims, -np.inf).astype(np.float32)
        all_s = np.concatenate([best_s, sims], axis=1)
        all_shard = np.concatenate([best_shard, np.where(pos >= 0, s_idx, -1)], axis=1)
        all_pos = np.concatenate([best_pos, pos], axis=1)
        order = np.argsort(-all_s, axis=1, kind="stable")[:, :k]
        best_s = np.take_along_axis(all_s, order, axis=1)
        best_shard = np.take_along_axis(all_shard, order, axis=1)
        best_pos = np.take_along_axis(all_pos, order, axis=1)
    ids, shards = _resolve_ids(store, shard_names, best_shard, best_pos)
    return Neighbours(best_s, ids, shards, len(shard_names), skipped, n_images)


def _resolve_ids(
    store: DeltaStore, shard_names: list[str], shard_idx: np.ndarray, pos: np.ndarray
) -> tuple[list[list[str]], list[list[str]]]:
    """Image ids and shards of (shard index, position) hits, reading only the shards hit."""
    hit = sorted({int(s) for s in np.unique(shard_idx) if s >= 0})
    lists: dict[int, list[str]] = {}
    if hit:
        df = store.read(
            SIMILARITY_INDEX, shards=[shard_names[s] for s in hit], columns=["shard", "image_ids"]
        )
        by_name = dict(zip(df["shard"].to_list(), df["image_ids"].to_list(), strict=True))
        lists = {s: by_name[shard_names[s]] for s in hit}
    ids: list[list[str]] = []
    shards: list[list[str]] = []
    for row_s, row_p in zip(shard_idx, pos, strict=True):
        ids.append([lists[int(s)][int(p)] for s, p in zip(row_s, row_p, strict=True) if s >= 0])
        shards.append([shard_names[int(s)] for s in row_s if s >= 0])
    return ids, shards


def brute_force(x: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner products of ``queries`` against ``x``: ``(sims, rows)`` (reference)."""
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(np.ascontiguousarray(x, dtype=np.float32))
    return flat.search(np.ascontiguousarray(queries, dtype=np.float32), k)
