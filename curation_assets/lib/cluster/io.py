"""The cluster tables: centroids and per-shard assignments, read and written over Delta.

* ``cluster_centroids_<c>`` (one table per clustering ``c``): the k-means centroids, with a
  ``version`` (hash of the centroids) that every assignment row carries.
* ``cluster_assignments_<c>`` (per shard): each filtered image's nearest centroid.

The ``cluster_centroids`` / ``cluster_assignments`` assets call :func:`clustering_figures`,
:func:`assign_streamed`, :func:`assignment_figures` and :func:`assignment_check`; deduplication
(:mod:`curation_assets.lib.dedup`) reads the same tables through :func:`load_centroids` and
:func:`assignments_spec`.
"""

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import polars as pl

from curation_assets.lib.checks import Check
from curation_assets.lib.cluster.kmeans import (
    KMeansModel,
    assign,
    cluster_size_histogram,
)
from curation_assets.lib.errors import ConfigError
from curation_assets.lib.memory import shard_batches
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import (
    FILTERED_IMAGES,
    IMAGE_EMBEDDINGS,
    N_CLUSTERINGS,
    assignments_spec,
    centroids_spec,
)
from curation_assets.lib.vectors import embedding_matrix, single_model, vector_batches


class CentroidsError(ConfigError):
    """The centroids an assignment needs are missing or live in another embedding model.

    A configuration mistake (train or retrain the centroids), never fixed by a retry.
    """


def centroids_version(centroids: np.ndarray) -> str:
    """A short content hash of the centroids (changes iff they change)."""
    return hashlib.sha256(np.ascontiguousarray(centroids, dtype=np.float32).tobytes()).hexdigest()[
        :16
    ]


def centroids_frame(model: KMeansModel, model_id: str, trained_at: datetime) -> pl.DataFrame:
    """One row per centroid of ``model`` (see :func:`centroids_spec`)."""
    k = model.k
    return pl.DataFrame(
        {
            "centroid_id": np.arange(k, dtype=np.int32),
            "centroid": pl.Series("centroid", list(model.centroids), dtype=pl.List(pl.Float32)),
            "train_size": model.sizes.astype(np.int64),
            "version": centroids_version(model.centroids),
            "seed": model.seed,
            "model_id": model_id,
            "trained_at": trained_at,
        }
    )


@dataclass(frozen=True)
class Centroids:
    """The centroids of one clustering as stored.

    Attributes:
        matrix: (k, d) float32, L2-normalized.
        version: Content hash.
        model_id: Embedding model.
    """

    matrix: np.ndarray
    version: str
    model_id: str


def load_centroids(store: DeltaStore, c: int) -> Centroids | None:
    """The centroids of clustering ``c`` (None when never trained)."""
    spec = centroids_spec(c)
    if not store.exists(spec.name):
        return None
    df = store.read(spec).sort("centroid_id")
    if df.is_empty():
        return None
    matrix = embedding_matrix(df["centroid"])
    return Centroids(matrix, str(df["version"][0]), str(df["model_id"][0]))


def assignments_frame(
    image_ids: Sequence[str] | pl.Series,
    shard: str,
    cluster: np.ndarray,
    cosine: np.ndarray,
    version: str,
) -> pl.DataFrame:
    """Rows of ``cluster_assignments_<c>`` for one shard (nearest centroid only)."""
    return pl.DataFrame(
        {
            "image_id": pl.Series("image_id", image_ids, pl.String),
            "shard": shard,
            "cluster": np.asarray(cluster, dtype=np.int32),
            "cosine": np.asarray(cosine, dtype=np.float32),
            "distance": (1.0 - np.asarray(cosine, dtype=np.float32)).astype(np.float32),
            "centroids_version": version,
        },
        schema=assignments_spec(0).schema,  # the same columns for every clustering
    )


def filtered_embeddings(
    store: DeltaStore, shards: Sequence[str] | None = None, *, half: bool = False
) -> pl.DataFrame:
    """``image_id, shard, model_id, embedding`` of filtered images, sorted by shard, image_id.

    With ``shards``, both tables are read for those shards only (Delta partition pruning): one
    shard's assignment costs that shard's rows, not the corpus's. With ``half``, ``embedding``
    is cast to ``List(Float16)`` as it is read (round to nearest even, as numpy's ``astype``:
    checked bit for bit), for a reader that keeps float16 (the dedup layout): half the bytes
    held, and no float32 matrix.
    """
    kept = store.scan(FILTERED_IMAGES)
    emb = store.scan(IMAGE_EMBEDDINGS)
    if half:
        emb = emb.with_columns(pl.col("embedding").cast(pl.List(pl.Float16)))
    return _filtered_join(kept, emb, shards, "model_id", "embedding").collect()


def _filtered_join(
    kept: pl.LazyFrame, emb: pl.LazyFrame, shards: Sequence[str] | None, *cols: str
) -> pl.LazyFrame:
    """``image_id, shard, *cols`` of filtered images with an embedding, sorted by shard, image_id.

    ``kept`` scans ``filtered_images``, ``emb`` ``image_embeddings``; with ``shards`` both are
    pruned to those shards.
    """
    kept = kept.select("image_id", "shard")
    emb = emb.select("image_id", "shard", *cols)
    if shards is not None:
        wanted = pl.col("shard").is_in(list(shards))
        kept, emb = kept.filter(wanted), emb.filter(wanted)
    return kept.join(emb, on=["image_id", "shard"], how="inner").sort("shard", "image_id")


def filtered_count(store: DeltaStore) -> int:
    """Filtered images over all shards, from the Delta log (no data file is read)."""
    return sum(store.shard_row_counts(FILTERED_IMAGES.name).values())


@dataclass(frozen=True)
class TrainingMatrix:
    """The k-means training pool as one float32 matrix, its rows in ascending image id."""

    image_ids: list[str]
    """One per row of ``x``, ascending (the order k-means is handed its rows in)."""
    x: np.ndarray
    """(n, d) float32: the filtered embeddings of ``image_ids``."""
    model_id: str
    """The one embedding model of the rows ("" when there are none)."""
    shards_read: int
    """Shards the rows came from."""


def training_matrix(store: DeltaStore, rows: int, *, seed: int = 0) -> TrainingMatrix:
    """A seeded sample of about ``rows`` filtered images' embeddings, read shard by shard.

    What k-means trains on: it samples at most ``K × max_points_per_centroid`` rows anyway, so
    reading every embedding (2 GB at 1M × 512, 20 GB at 10M) is never needed. Shards are
    taken in a seeded random order until they hold twice ``rows`` filtered images (the read
    is ∝ the sample, not the corpus; web shards such as LAION's tars are random draws, so a
    random subset of shards is a random sample), then each image is kept when a hash of its
    id (seeded) falls under the needed share: the pool depends on the ids, not on row order.
    Every filtered image when the corpus holds at most ``rows``.

    Two passes over one snapshot of each table, so that the matrix is the only copy of the
    pool: the chosen shards' image ids first (one column), which fixes every kept row's place
    in id order; then the embeddings, a group of shards at a time, written straight into
    their rows.

    Raises:
        ConfigError: When the rows come from more than one embedding model or dimension.

    Memory: the matrix (``4 · n · d`` bytes, n ≈ ``rows``) plus the group being read: shards
    of at most ``rows / 4`` filtered images together (a bigger shard alone).
    """
    chosen, share = _pool_plan(store.shard_row_counts(FILTERED_IMAGES.name), rows, seed)
    kept_lf, emb_lf = store.scan(FILTERED_IMAGES), store.scan(IMAGE_EMBEDDINGS)  # one snapshot
    ids = _filtered_join(kept_lf, emb_lf, chosen).collect()
    sizes = ids.group_by("shard").len()  # the rows a read of the shard holds, kept or not
    per_shard = dict(zip(sizes["shard"].to_list(), sizes["len"].to_list(), strict=True))
    ids = ids.filter(pl.Series(_id_hash(ids["image_id"], seed) < share))
    order = ids["image_id"].arg_sort().to_numpy()
    row_of = np.empty(ids.height, dtype=np.int64)
    row_of[order] = np.arange(ids.height)  # ids is in (shard, image_id) order, as each group
    x = np.zeros((0, 0), dtype=np.float32)
    models: set[str] = set()
    start = 0
    groups = shard_batches(per_shard, [s for s in chosen if s in per_shard], max(rows // 4, 1))
    for group in groups:
        frame = _filtered_join(kept_lf, emb_lf, group, "model_id", "embedding").collect()
        frame = frame.filter(pl.Series(_id_hash(frame["image_id"], seed) < share))
        if not frame["image_id"].equals(ids["image_id"].slice(start, frame.height)):
            msg = f"training pool: shards {group} read other ids than the first pass"
            raise RuntimeError(msg)  # one snapshot per table: never, unless that breaks
        part = embedding_matrix(frame["embedding"])
        if x.size == 0:
            x = np.empty((ids.height, part.shape[1]), dtype=np.float32)
        if part.shape[1] != x.shape[1]:
            msg = (
                f"shards {group} hold {part.shape[1]}-d embeddings, others {x.shape[1]}-d: "
                "clustering needs one embedding model; re-embed or filter to one model"
            )
            raise ConfigError(msg)
        x[row_of[start : start + frame.height]] = part
        start += frame.height
        models.update(frame["model_id"].unique().to_list())
        del frame, part
    model_id = ""
    if models:
        found = pl.DataFrame({"model_id": sorted(models)})
        model_id = single_model(found, before="clustering", source="the filtered embeddings")
    shards_read = ids["shard"].n_unique()
    return TrainingMatrix(ids["image_id"].gather(order).to_list(), x, model_id, shards_read)


def _pool_plan(counts: dict[str, int], rows: int, seed: int) -> tuple[list[str], float]:
    """The shards a seeded pool of about ``rows`` reads (sorted) and the share of ids it keeps.

    Every shard and share 1 when the corpus (``counts``: rows per shard) holds at most ``rows``;
    otherwise shards in a seeded random order until they hold twice ``rows``.
    """
    counts = {s: n for s, n in counts.items() if n}
    if sum(counts.values()) <= rows:
        return sorted(counts), 1.0
    order = np.random.default_rng(seed).permutation(sorted(counts))
    chosen, held = [], 0
    for shard in order:
        chosen.append(str(shard))
        held += counts[str(shard)]
        if held >= 2 * rows:
            break
    return sorted(chosen), min(1.0, rows / held)


def seeded_pool(
    counts: dict[str, int],
    rows: int,
    *,
    seed: int,
    read: Callable[[list[str]], pl.DataFrame],
    read_all: Callable[[], pl.DataFrame],
) -> pl.DataFrame:
    """About ``rows`` rows sampled shard by shard: seeded shards, then a seeded share of ids.

    Shards (``counts``: rows per shard, from the Delta log) are taken in a seeded random
    order until they hold twice ``rows``; each row of them is kept when a seeded hash of its
    ``image_id`` falls under the share needed. Everything (``read_all``) when the corpus holds
    at most ``rows``. ``read([shard])`` reads one shard (sorted by image_id is not needed).

    Memory: the pool plus one shard being read.
    """
    if sum(counts.values()) <= rows:
        return read_all()
    chosen, share = _pool_plan(counts, rows, seed)
    parts = []
    for shard in chosen:
        frame = read([shard]).sort("image_id")
        keep = _id_hash(frame["image_id"], seed) < share
        parts.append(frame.filter(pl.Series(keep)))
    return pl.concat(parts) if parts else read([])


def _id_hash(ids: pl.Series, seed: int) -> np.ndarray:
    """A uniform [0, 1) value per id, fixed by (id, seed)."""
    h = ids.hash(seed=seed).to_numpy()
    return (h >> np.uint64(11)).astype(np.float64) / float(2**53)


# --------------------------------------------------------------------------------------------
# What the cluster assets report
# --------------------------------------------------------------------------------------------


def clustering_figures(
    model: KMeansModel, *, version: str, model_id: str, n_images: int
) -> dict[str, Any]:
    """Plain figures of one trained clustering, in the order the asset shows them.

    Returns:
        k, seed, version, model_id, n_images, n_train, niter, objective,
        mean_cosine_to_centroid, imbalance, empty_clusters, largest_cluster, train_seconds.
    """
    stats = model.stats()
    return {
        "k": model.k,
        "seed": model.seed,
        "version": version,
        "model_id": model_id,
        "n_images": int(n_images),
        "n_train": model.n_train,
        "niter": model.niter,
        "objective": float(model.objective),
        "mean_cosine_to_centroid": float(stats["mean_cosine_to_centroid"]),
        "imbalance": float(model.imbalance),
        "empty_clusters": int(stats["empty_clusters"]),
        "largest_cluster": int(model.sizes.max()),
        "train_seconds": round(model.train_seconds, 3),
    }


def cluster_size_bars(sizes: np.ndarray, *, bins: int = 12) -> tuple[list[str], list[float]]:
    """Labels (``lo–hi``) and counts of :func:`cluster_size_histogram`, for a bar chart."""
    edges, counts = cluster_size_histogram(sizes, bins=bins)
    labels = [f"{edges[i]:.0f}–{edges[i + 1]:.0f}" for i in range(len(counts))]
    return labels, [float(v) for v in counts]


def stored_centroids(store: DeltaStore, c: int) -> Centroids:
    """:func:`load_centroids`, or a :class:`CentroidsError` saying to train them."""
    cent = load_centroids(store, c)
    if cent is None:
        msg = (
            f"{centroids_spec(c).name} has never been materialized; materialize the "
            "cluster_centroids first (it trains on the filtered images of every shard)"
        )
        raise CentroidsError(msg)
    return cent


def check_model(cent: Centroids, c: int, shard: str, model_id: str) -> None:
    """Raise a :class:`CentroidsError` unless clustering ``c`` was trained on ``model_id``."""
    if model_id != cent.model_id:
        msg = (
            f"shard {shard} is embedded with {model_id} but {centroids_spec(c).name} "
            f"was trained on {cent.model_id}; retrain the centroids"
        )
        raise CentroidsError(msg)


#: Embedding rows a streamed assignment reads and assigns at a time (:func:`assign_streamed`):
#: 8 MiB of float32 at d = 512. 2048 held ~25 MB less on a 90k-row shard but took 10–20 %
#: longer (faiss searches of few rows); 4096 took the time of the whole-shard read.
ASSIGN_BATCH_ROWS = 4096


@dataclass(frozen=True)
class ShardAssignments:
    """One shard's filtered images in every clustering (:func:`assign_streamed`).

    Attributes:
        image_ids: The assigned images, sorted.
        cluster: (n, C) int32, each image's nearest centroid per clustering.
        cosine: (n, C) float32, its cosine to that centroid.
        model_id: The shard's embedding model (None when nothing was assigned).
        filtered: Filtered images of the shard (with or without an embedding).
    """

    image_ids: pl.Series
    cluster: np.ndarray
    cosine: np.ndarray
    model_id: str | None
    filtered: int

    def frame(self, c: int, shard: str, version: str) -> pl.DataFrame:
        """The ``cluster_assignments_<c>`` rows."""
        if not len(self.image_ids):
            return assignments_spec(c).empty()
        return assignments_frame(
            self.image_ids, shard, self.cluster[:, c], self.cosine[:, c], version
        )


def assign_streamed(
    store: DeltaStore,
    shard: str,
    centroids: Sequence[Centroids],
    *,
    batch_rows: int = ASSIGN_BATCH_ROWS,
) -> ShardAssignments:
    """Assign a shard's filtered images in every clustering, reading its embeddings in batches.

    ``centroids``: those of clusterings 0, 1, … in order (:func:`stored_centroids`).

    The shard's ``image_embeddings`` files are read ``batch_rows`` rows at a time
    (:func:`~curation_assets.lib.vectors.vector_batches`); each batch's filtered rows are
    assigned in all the clusterings at once, so the vectors are read once, never held whole.

    Memory: one batch (:data:`ASSIGN_BATCH_ROWS`, as Arrow decoded it and as float32, and
    faiss' distance block, ``4 · batch_rows · k`` bytes), the shard's filtered ids, and ~50
    bytes a row of results, not the shard's vectors. Measured at 1M (k = 1024, d = 512,
    2026-12-03): a 90k-row shard's assignment peaked 318 MB above the interpreter, against
    661 MB when the shard was read whole (joined, then converted); 10⁵ rows is a shard size a
    user may pick, and a Ray node runs a shard per CPU at once.

    Raises:
        CentroidsError: If the shard's model is not the centroids'.
        ConfigError: If the shard mixes embedding models.
        ValueError: If a vector is null or of another length.
    """
    kept = store.read(FILTERED_IMAGES, shards=[shard], columns=["image_id"])["image_id"]
    uris = [uri for _, uri in store.shard_uris(IMAGE_EMBEDDINGS.name, [shard])]
    ids: list[pl.Series] = []
    clusters: list[np.ndarray] = []
    cosines: list[np.ndarray] = []
    model_id: str | None = None
    wanted = kept.implode()
    batches = vector_batches(
        uris, store.storage_options, "embedding", ("image_id", "model_id"), batch_rows=batch_rows
    )
    for frame, x in batches if kept.len() else ():
        mask = frame.select(pl.col("image_id").is_in(wanted))["image_id"].to_numpy()
        if not mask.any():
            continue
        rows = frame.filter(mask)
        seen = {*rows["model_id"].unique().to_list(), *([model_id] if model_id else [])}
        model_id = single_model(
            pl.DataFrame({"model_id": sorted(seen, key=str)}, schema={"model_id": pl.String}),
            before="assigning clusters",
            source="the filtered embeddings",
        )
        for c, cent in enumerate(centroids):
            check_model(cent, c, shard, model_id)
        vectors = np.ascontiguousarray(x[mask])
        cluster = np.empty((rows.height, len(centroids)), np.int32)
        cosine = np.empty((rows.height, len(centroids)), np.float32)
        for c, cent in enumerate(centroids):
            got, sims = assign(vectors, cent.matrix, top=1)
            cluster[:, c], cosine[:, c] = got[:, 0], sims[:, 0]
        ids.append(rows["image_id"])
        clusters.append(cluster)
        cosines.append(cosine)
    if not ids:
        none = np.zeros((0, len(centroids)))
        return ShardAssignments(
            pl.Series("image_id", [], pl.String),
            none.astype(np.int32),
            none.astype(np.float32),
            None,
            kept.len(),
        )
    image_ids = pl.concat(ids)
    order = image_ids.arg_sort().to_numpy()  # the canonical order: by image_id
    return ShardAssignments(
        image_ids.gather(order),
        np.concatenate(clusters)[order],
        np.concatenate(cosines)[order],
        model_id,
        kept.len(),
    )


def assignment_figures(frame: pl.DataFrame, version: str) -> dict[str, Any]:
    """centroids_version, clusters_used and mean_cosine of one shard's assignments."""
    return {
        "centroids_version": version,
        "clusters_used": frame.group_by("cluster").len().height,
        "mean_cosine": float(frame["cosine"].to_numpy().mean()) if frame.height else 0.0,
    }


def assignment_check(
    assigned: Sequence[int], n_filtered: int, n_embedded: int
) -> tuple[bool, dict[str, Any]]:
    """Every filtered image of the shard has one assignment per clustering.

    Args:
        assigned: Rows written per clustering.
        n_filtered: Filtered images of the shard.
        n_embedded: Of those, images with an embedding.

    Returns:
        ``(passed, metadata)`` with filtered_images, embedded and assigned.
    """
    passed = all(w == n_filtered for w in assigned) and n_embedded == n_filtered
    return passed, {
        "filtered_images": n_filtered,
        "embedded": n_embedded,
        "assigned": list(assigned),
    }


# --------------------------------------------------------------------------------------------
# One shard's work, for any engine (lib/engine): plain arguments in, a small outcome out
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AssignOutcome:
    """What assigning one shard did (picklable; the asset turns it into metadata and a check).

    Attributes:
        assigned: Filtered images with an embedding that were assigned.
        rows: Rows written per clustering.
        figures: :func:`assignment_figures` per clustering.
        check: ``every_filtered_image_assigned``.
    """

    assigned: int
    rows: tuple[int, ...]
    figures: tuple[dict[str, Any], ...]
    check: Check


@dataclass(frozen=True)
class AssignShardWork:
    """Assign one shard's filtered images in every clustering and write them (any process).

    Attributes:
        root_uri: Delta root.
        storage_options: deltalake storage options of the root.
    """

    root_uri: str
    storage_options: dict[str, str] = field(default_factory=dict)

    def __call__(self, key: str, progress: Callable[[str], None]) -> AssignOutcome:
        """Assign shard ``key`` with the stored centroids; one Delta write per clustering.

        Raises:
            CentroidsError: When a clustering has no centroids or another embedding model.
        """
        del progress  # one streamed pass over the shard's embeddings
        store = DeltaStore(self.root_uri, self.storage_options)
        centroids = [stored_centroids(store, c) for c in range(N_CLUSTERINGS)]
        got = assign_streamed(store, key, centroids)
        rows: list[int] = []
        figures: list[dict[str, Any]] = []
        for c, cent in enumerate(centroids):
            frame = got.frame(c, key, cent.version)
            store.replace_shard(assignments_spec(c), key, frame)
            rows.append(frame.height)
            figures.append(assignment_figures(frame, cent.version))
        assigned = len(got.image_ids)
        passed, check_metadata = assignment_check(rows, got.filtered, assigned)
        check = Check(
            "every_filtered_image_assigned",
            assignments_spec(0).name,
            passed,
            metadata=check_metadata,
        )
        return AssignOutcome(assigned, tuple(rows), tuple(figures), check)
