"""Spherical k-means (faiss) for the five ``cluster_centroids`` / ``cluster_assignments`` assets.

Deduplication compares images only within clusters (see :mod:`curation_assets.lib.dedup`), so
clustering is what turns an O(N²) all-pairs search into O(N²/K). Five clusterings with
different seeds are trained on a sample of the filtered embeddings; a near-duplicate pair cut
apart by one clustering's boundary is usually kept together by another.

BLAS note: the OpenBLAS bundled with faiss-cpu 1.15 (0.3.15) does not know some newer CPUs
(on an AVX-512 AMD EPYC it picks its "Zen" AVX2 kernels). :func:`configure_blas` runs when
this module is imported, *before* ``import faiss``, and sets ``OPENBLAS_CORETYPE=SKYLAKEX``
when the CPU has AVX-512F and the variable is unset. OpenBLAS reads the variable once, when the
library is loaded, so it only takes effect for libraries loaded after that point: faiss's
OpenBLAS when this module is the first to import faiss, and numpy's only when this module is
imported before numpy (in practice numpy is already loaded, so numpy keeps its own detection).
Set the variable in the environment of the process for a guaranteed effect. Measured in this
repository's 2-core AVX-512 test machine, IndexFlatIP search and k-means ran at about the same
speed (160-190 GFLOP/s) with and without the variable, so the large slowdown reported for
some machines was not reproduced here; the setting is harmless where ``avx512f`` exists.

Determinism: :func:`train_kmeans` is seeded (row sample and faiss initialisation) and, given
``order_key`` (the image ids), takes its rows in ascending key order, so the same images give
the same centroids, in the same order, whatever order they were read in; without a key the
caller's row order is the canonical one (the ``cluster_centroids`` asset sorts by shard,
image_id). faiss k-means is otherwise deterministic on one machine: its assignment step is a
BLAS product and its centroid update sums each centroid's points in row order, both fixed for
a given input order and thread count. What stays non-bitwise is only what differs between
machines (BLAS kernels, SIMD width, OpenMP thread count): float32 rounding of the centroids at
~1e-7, which could move an image only if it were equidistant to two centroids to 1e-7 — and a
pair cut apart that way is still found by the other clusterings.
"""

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def configure_blas() -> dict[str, str]:
    """Pick OpenBLAS's SkylakeX kernels on AVX-512 CPUs, unless the user chose already.

    Sets ``OPENBLAS_CORETYPE=SKYLAKEX`` with ``os.environ.setdefault`` only when the variable
    is unset and ``/proc/cpuinfo`` lists ``avx512f`` (elsewhere the SkylakeX kernels would crash
    with illegal instructions). Only OpenBLAS copies loaded *after* this call see it (see the
    module docstring).

    Returns:
        ``{"OPENBLAS_CORETYPE": value or "", "action": ...}`` where action is ``"set"``,
        ``"kept"`` (already set by the user), ``"skipped: no avx512f"`` or
        ``"skipped: no /proc/cpuinfo"``.
    """
    key = "OPENBLAS_CORETYPE"
    if key in os.environ:
        return {key: os.environ[key], "action": "kept"}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "")
    except OSError:
        return {key: "", "action": "skipped: no /proc/cpuinfo"}
    if "avx512f" not in flags.split():
        return {key: "", "action": "skipped: no avx512f"}
    os.environ.setdefault(key, "SKYLAKEX")
    return {key: os.environ[key], "action": "set"}


BLAS_CONFIG = configure_blas()

import faiss  # noqa: E402  (after configure_blas, on purpose)
import numpy as np  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

from curation_assets.lib.tables import N_CLUSTERINGS  # noqa: E402

logger = logging.getLogger(__name__)

#: Seeds of the clusterings, one per clustering.
DEFAULT_SEEDS: tuple[int, ...] = tuple(range(N_CLUSTERINGS))


def default_k(n: int) -> int:
    """Number of clusters for ``n`` rows: ``sqrt(n)`` rounded to a power of two, in [1, n].

    Why ``sqrt(n)``: within-cluster pair search costs ≈ ``n²/K · d`` flops and assigning rows
    to centroids ≈ ``n·K·d``; their sum is smallest near ``K ≈ sqrt(n)``, where both are
    ``n^1.5·d`` and a cluster holds ≈ ``sqrt(n)`` rows (a 1000 × 1000 Gram block is 4 MB).
    Rounding to a power of two gives K = 1024 at 1M rows, the value of the DALL·E 2 seed
    (64 at 5k, 256 at 100k, 4096 at 10M).
    """
    if n < 1:
        msg = f"n={n}: expected at least one row to cluster"
        raise ValueError(msg)
    k = 2 ** round(np.log2(np.sqrt(n)))
    return int(min(max(k, 1), n))


@dataclass
class KMeansModel:
    """A trained spherical k-means clustering.

    Attributes:
        centroids: (k, d) float32, L2-normalized rows.
        seed: Seed of the training sample and of faiss's initialisation.
        k: Number of centroids.
        niter: k-means iterations.
        objective: Final faiss objective: sum over training rows of the cosine to their
            centroid (higher is better; divide by ``n_train`` for the mean cosine).
        imbalance: faiss imbalance factor of the final assignment
            (``k · Σ size² / n²``; 1.0 = perfectly balanced).
        sizes: (k,) int64 cluster sizes on the training sample.
        train_seconds: Wall time of sampling + training.
        n_train: Rows the centroids were trained on.
        max_points_per_centroid: Sample cap used (``k · max_points_per_centroid`` rows).
    """

    centroids: np.ndarray
    seed: int
    k: int
    niter: int
    objective: float
    imbalance: float
    sizes: np.ndarray
    train_seconds: float
    n_train: int
    max_points_per_centroid: int
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        """Embedding dimension d."""
        return int(self.centroids.shape[1])

    def stats(self) -> dict[str, Any]:
        """JSON-ready statistics (for asset metadata)."""
        return {
            "k": self.k,
            "dim": self.dim,
            "seed": self.seed,
            "niter": self.niter,
            "n_train": self.n_train,
            "max_points_per_centroid": self.max_points_per_centroid,
            "objective": self.objective,
            "mean_cosine_to_centroid": self.objective / max(self.n_train, 1),
            "imbalance": self.imbalance,
            "empty_clusters": int((self.sizes == 0).sum()),
            "train_seconds": round(self.train_seconds, 3),
        }

    def to_safetensors(self, path: str | Path) -> None:
        """Write centroids, sizes and the scalar fields to a safetensors file (never pickle)."""
        meta = {
            "format": "curation_assets.KMeansModel/1",
            "seed": str(self.seed),
            "k": str(self.k),
            "niter": str(self.niter),
            "objective": repr(float(self.objective)),
            "imbalance": repr(float(self.imbalance)),
            "train_seconds": repr(float(self.train_seconds)),
            "n_train": str(self.n_train),
            "max_points_per_centroid": str(self.max_points_per_centroid),
            **{f"extra.{k}": v for k, v in self.extra.items()},
        }
        tensors = {
            "centroids": np.ascontiguousarray(self.centroids, dtype=np.float32),
            "sizes": np.ascontiguousarray(self.sizes, dtype=np.int64),
        }
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def from_safetensors(cls, path: str | Path) -> "KMeansModel":
        """Read a model written by :meth:`to_safetensors`.

        Raises:
            ValueError: If the file was not written by :meth:`to_safetensors`.
        """
        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata() or {}
            if meta.get("format") != "curation_assets.KMeansModel/1":
                msg = (
                    f"{path} has format={meta.get('format')!r}, expected "
                    "'curation_assets.KMeansModel/1'; write it with KMeansModel.to_safetensors"
                )
                raise ValueError(msg)
            centroids = fh.get_tensor("centroids")
            sizes = fh.get_tensor("sizes")
        return cls(
            centroids=centroids,
            seed=int(meta["seed"]),
            k=int(meta["k"]),
            niter=int(meta["niter"]),
            objective=float(meta["objective"]),
            imbalance=float(meta["imbalance"]),
            sizes=sizes,
            train_seconds=float(meta["train_seconds"]),
            n_train=int(meta["n_train"]),
            max_points_per_centroid=int(meta["max_points_per_centroid"]),
            extra={k[6:]: v for k, v in meta.items() if k.startswith("extra.")},
        )


def _as_f32(x: np.ndarray, name: str = "x") -> np.ndarray:
    """Check a 2-D embedding matrix; returns it as C-contiguous float32 (no copy if it is)."""
    if x.ndim != 2:
        msg = f"{name} has shape {x.shape}; expected (n, d) embeddings"
        raise ValueError(msg)
    return np.ascontiguousarray(x, dtype=np.float32)


def canonical_rows(order_key: Sequence[str] | np.ndarray | None, n: int) -> np.ndarray | None:
    """Rows of ``x`` in ascending key order (None without keys or when already in order).

    Raises:
        ValueError: If the number of keys is not n or a key repeats.
    """
    if order_key is None:
        return None
    keys = np.asarray([str(k) for k in order_key])
    if keys.shape != (n,):
        msg = f"order_key has {keys.size} keys for {n} rows; pass one key (image id) per row"
        raise ValueError(msg)
    order = np.argsort(keys, kind="stable").astype(np.int64)
    sorted_keys = keys[order]
    if n > 1 and (sorted_keys[1:] == sorted_keys[:-1]).any():
        msg = "order_key repeats a key; pass unique keys (image ids) so the order is canonical"
        raise ValueError(msg)
    return None if np.array_equal(order, np.arange(n)) else order


def _take(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``x[rows]`` as C-contiguous float32, read in ascending row order (memmap friendly)."""
    srt = np.argsort(rows, kind="stable")
    out = np.empty((rows.size, x.shape[1]), dtype=np.float32)
    out[srt] = np.asarray(x[rows[srt]], dtype=np.float32)
    return out


def _use_gpu(gpu: bool | None) -> bool:
    ngpu = faiss.get_num_gpus()
    if gpu is None:
        return ngpu > 0
    if gpu and ngpu == 0:
        msg = (
            "gpu=True but faiss sees no GPU (faiss-cpu build or no CUDA device); "
            "install the `gpu` extra (faiss-gpu-cu12) on a GPU machine or pass gpu=None/False"
        )
        raise ValueError(msg)
    return bool(gpu)


def train_kmeans(
    x: np.ndarray,
    k: int,
    *,
    seed: int,
    niter: int = 10,
    max_points_per_centroid: int = 256,
    sample_size: int | None = None,
    gpu: bool | None = None,
    order_key: Sequence[str] | np.ndarray | None = None,
) -> KMeansModel:
    """Train spherical (cosine) k-means with faiss on a seeded sample of ``x``.

    Args:
        x: (n, d) float32, L2-normalized rows. May be a read-only view or a memmap: only the
            sampled rows are gathered.
        k: Number of clusters, 1 ≤ k ≤ training rows.
        seed: Seeds the row sample and faiss's centroid initialisation.
        niter: Lloyd iterations (10 loses no pair recall against 20 on CLIP-like data).
        max_points_per_centroid: Sample cap: at most ``k · max_points_per_centroid`` rows are
            used (faiss's own subsampling rule, applied here so that it is seeded and counted).
        sample_size: Explicit number of training rows (overrides the cap when smaller than n).
        gpu: faiss GPU k-means; None → GPU when ``faiss.get_num_gpus() > 0``.
        order_key: Optional n unique keys of the rows (image ids). The rows are sampled from
            and handed to faiss in ascending key order, so the result does not depend on the
            order of ``x``. Without it the row order of ``x`` is used as it is.

    Returns:
        The model, with centroids (k, d) float32 L2-normalized and training statistics.

    Raises:
        ValueError: If ``x`` is not 2-D, ``k`` is out of range or a GPU is asked for but absent.

    Memory: the training sample (``4 · min(n, sample) · d`` bytes) + centroids + faiss's
    (sample,) assignment buffers.
    """
    n = x.shape[0]
    if x.ndim != 2:
        msg = f"x has shape {x.shape}; expected (n, d) embeddings"
        raise ValueError(msg)
    cap = k * max_points_per_centroid
    n_train = min(n, sample_size if sample_size is not None else cap)
    if not 1 <= k <= n_train:
        msg = (
            f"k={k} clusters but only {n_train} training rows (n={n}, sample_size={sample_size});"
            " expected 1 <= k <= training rows: lower k (see default_k) or sample more rows"
        )
        raise ValueError(msg)
    use_gpu = _use_gpu(gpu)
    t0 = time.perf_counter()
    canon = canonical_rows(order_key, n)
    if n_train < n:
        pos = np.sort(np.random.default_rng(seed).choice(n, size=n_train, replace=False))
        sample = _take(x, pos if canon is None else canon[pos])
    elif canon is not None:
        sample = _take(x, canon)
    else:
        sample = _as_f32(x)
    km = faiss.Kmeans(
        sample.shape[1],
        k,
        niter=niter,
        seed=seed,
        spherical=True,
        max_points_per_centroid=max(max_points_per_centroid, -(-n_train // k)),
        min_points_per_centroid=1,
        gpu=use_gpu,
        verbose=False,
    )
    km.train(sample)
    centroids = np.ascontiguousarray(km.centroids, dtype=np.float32)
    # faiss spherical k-means renormalises each iteration; make it exact for the record.
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    _, ids = km.index.search(sample, 1)
    sizes = np.bincount(ids.ravel(), minlength=k).astype(np.int64)
    del sample, ids
    seconds = time.perf_counter() - t0
    stats = km.iteration_stats or [{"obj": 0.0, "imbalance_factor": 1.0}]
    model = KMeansModel(
        centroids=centroids,
        seed=int(seed),
        k=int(k),
        niter=int(niter),
        objective=float(stats[-1]["obj"]),
        imbalance=float(stats[-1]["imbalance_factor"]),
        sizes=sizes,
        train_seconds=seconds,
        n_train=int(n_train),
        max_points_per_centroid=int(max_points_per_centroid),
        extra={"gpu": str(use_gpu), "faiss": faiss.__version__},
    )
    logger.info(
        "k-means k=%d seed=%d on %d rows: %.1fs, mean cos %.4f, imbalance %.3f",
        k,
        seed,
        n_train,
        seconds,
        model.objective / n_train,
        model.imbalance,
    )
    return model


def train_clusterings(
    x: np.ndarray,
    k: int,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    *,
    niter: int = 10,
    max_points_per_centroid: int = 256,
    sample_size: int | None = None,
    gpu: bool | None = None,
    order_key: Sequence[str] | np.ndarray | None = None,
) -> list[KMeansModel]:
    """Train one :func:`train_kmeans` model per seed (independent samples and inits).

    Args:
        x: (n, d) float32, L2-normalized.
        k: Clusters per clustering.
        seeds: One seed per clustering (five by default); must be distinct.
        niter: See :func:`train_kmeans`.
        max_points_per_centroid: See :func:`train_kmeans`.
        sample_size: See :func:`train_kmeans`.
        gpu: See :func:`train_kmeans`.
        order_key: See :func:`train_kmeans`.

    Returns:
        One model per seed, in ``seeds`` order. Memory: one training sample at a time.
    """
    if len(set(seeds)) != len(seeds):
        msg = f"seeds={tuple(seeds)} repeat a seed; identical seeds give identical clusterings"
        raise ValueError(msg)
    return [
        train_kmeans(
            x,
            k,
            seed=s,
            niter=niter,
            max_points_per_centroid=max_points_per_centroid,
            sample_size=sample_size,
            gpu=gpu,
            order_key=order_key,
        )
        for s in seeds
    ]


def assign(
    x: np.ndarray,
    centroids: np.ndarray,
    *,
    top: int = 1,
    batch_size: int = 65_536,
) -> tuple[np.ndarray, np.ndarray]:
    """Assign rows to their ``top`` most similar centroids (exact, faiss IndexFlatIP).

    Args:
        x: (n, d) float32, L2-normalized. Processed ``batch_size`` rows at a time, so a
            memmap or a read-only view works without loading it whole.
        centroids: (k, d) float32, L2-normalized (e.g. ``KMeansModel.centroids``).
        top: Centroids per row (``top=2`` puts each row in its 2 nearest clusters, which
            recovers most pairs a boundary would cut, at ~4x the pair-search cost).
        batch_size: Rows per faiss search call.

    Returns:
        ``(cluster_ids, cos_sims)``: (n, top) int32 and (n, top) float32, most similar first.

    Memory: the outputs (``8 · n · top`` bytes) + one batch (``4 · batch_size · (d + k)``
    bytes for faiss's distance block).
    """
    c = _as_f32(centroids, "centroids")
    if x.ndim != 2 or x.shape[1] != c.shape[1]:
        msg = (
            f"x has shape {x.shape} but centroids are {c.shape}; expected (n, {c.shape[1]}) "
            "embeddings from the model the centroids were trained on"
        )
        raise ValueError(msg)
    if not 1 <= top <= c.shape[0]:
        msg = f"top={top}: expected 1 <= top <= k={c.shape[0]}"
        raise ValueError(msg)
    n = x.shape[0]
    index = faiss.IndexFlatIP(c.shape[1])
    index.add(c)
    ids = np.empty((n, top), dtype=np.int32)
    sims = np.empty((n, top), dtype=np.float32)
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        d, i = index.search(np.ascontiguousarray(x[start:stop], dtype=np.float32), top)
        ids[start:stop] = i
        sims[start:stop] = d
    return ids, sims


def cluster_size_histogram(sizes: np.ndarray, *, bins: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of cluster sizes on log-spaced bins (for a plot of cluster balance).

    Args:
        sizes: (k,) cluster sizes (e.g. ``KMeansModel.sizes`` or
            ``np.bincount(ids[:, 0], minlength=k)``).
        bins: Number of bins between 1 and the largest size (empty clusters get their own
            ``[0, 1)`` bin in front).

    Returns:
        ``(edges, counts)``: (bins + 2,) float64 edges starting ``[0, 1, ...]`` and
        (bins + 1,) int64 counts.
    """
    s = np.asarray(sizes, dtype=np.int64)
    top = max(int(s.max()) if s.size else 1, 1)
    edges = np.concatenate([[0.0], np.geomspace(1.0, top + 1.0, bins + 1)])
    counts, _ = np.histogram(s, bins=edges)
    return edges, counts.astype(np.int64)
