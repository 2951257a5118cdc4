"""One shard's similarity work: index its vectors, score its uniqueness; and their thumbnails.

The assets of ``defs/similar.py`` hand :class:`IndexShardWork` and :class:`UniquenessShardWork`
to the engine (``lib/engine.py``: the step's process, or one Ray task per shard). Each reads
only its shard's embeddings (Delta partition pruning); indexing writes only its shard's file
and manifest row; scoring searches the shard's vectors against every shard file (mmapped, the
probed lists only) in batches sized from the memory budget.

**The quantizer travels as a Delta version.** It is ``nlist × d`` float32 (2 MB at 1M images
of 512-d, ~170 MB at 1G images of 1280-d): too large to ship in every task's arguments. The
step reads it at the current Delta version of ``similarity_quantizer`` and hands the work that
version and the quantizer's content hash; each process reads that version once (Delta time
travel, :func:`quantizer_at`, kept per process; the step's own process reuses what the step
read), so every shard of a run uses the quantizer the step read even if it is retrained
meanwhile, as when the step held it in memory.
"""

import base64
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curation_assets.lib.checks import Check
from curation_assets.lib.images import make_thumbnail
from curation_assets.lib.memory import MemoryBudget
from curation_assets.lib.similar.index import (
    Neighbours,
    Quantizer,
    ShardIndexRow,
    SimilarityIndexError,
    load_quantizer,
    publish_shard,
    published_shard,
    search,
)
from curation_assets.lib.similar.uniqueness import (
    extremes,
    histogram,
    uniqueness_check,
    uniqueness_figures,
    uniqueness_frame,
)
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import IMAGE_EMBEDDINGS, RAW_IMAGES
from curation_assets.lib.tables.similar import (
    IMAGE_UNIQUENESS,
    SIMILARITY_INDEX,
    SIMILARITY_QUANTIZER,
)
from curation_assets.lib.vectors import embedding_matrix, single_model

logger = logging.getLogger(__name__)


def shard_vectors(store: DeltaStore, shard: str) -> tuple[list[str], np.ndarray, str | None]:
    """The shard's image ids (sorted), their (n, d) float32 vectors, and their one model."""
    emb = store.read(
        IMAGE_EMBEDDINGS, shards=[shard], columns=["image_id", "model_id", "dim", "embedding"]
    ).sort("image_id")
    if emb.is_empty():
        return [], np.zeros((0, 0), np.float32), None
    model_id = single_model(emb, before="indexing", source=f"shard {shard}'s embeddings")
    return emb["image_id"].to_list(), embedding_matrix(emb["embedding"]), model_id


def index_shard(
    store: DeltaStore, files_root: Path | str, shard: str, quantizer: Quantizer, built_at: datetime
) -> ShardIndexRow:
    """Build and publish one shard's index file (see :func:`publish_shard`).

    Memory: the shard's vectors twice (the frame and the index), ``8 · n · d`` bytes.
    """
    ids, x, model_id = shard_vectors(store, shard)
    if model_id is None:
        x = np.zeros((0, quantizer.matrix.shape[1]), np.float32)
        model_id = quantizer.model_id
    return publish_shard(
        store, files_root, shard, ids, x, model_id=model_id, quantizer=quantizer, built_at=built_at
    )


@dataclass(frozen=True)
class ScoredShard:
    """A shard's uniqueness rows and what the search covered."""

    frame: pl.DataFrame
    searched_shards: int
    skipped_shards: dict[str, str]


def score_shard(
    store: DeltaStore,
    shard: str,
    quantizer: Quantizer,
    *,
    k: int,
    nprobe: int,
    budget: MemoryBudget,
    scored_at: datetime,
) -> ScoredShard:
    """The ``image_uniqueness`` rows of one shard, searched against every shard file.

    Queries go in batches of at most a quarter of the budget's worth of ``(d + 3(k+1))``
    floats per row (the batch, faiss's heaps and the running top-k).

    Raises:
        SimilarityIndexError: If the shard has no index row (materialize similarity_index).
    """
    ids, x, model_id = shard_vectors(store, shard)
    if model_id is None:
        nothing = Neighbours(np.zeros((0, k + 1), np.float32), [], [], 0)
        empty = uniqueness_frame([], shard, nothing, k=k, model_id="", scored_at=scored_at)
        return ScoredShard(empty, 0, {})
    if store.read(SIMILARITY_INDEX, shards=[shard], columns=["shard"]).is_empty():
        msg = f"shard {shard} has no similarity_index row; materialize similarity_index for it"
        raise SimilarityIndexError(msg)
    batch = budget.rows(4 * (x.shape[1] + 3 * (k + 1)), share=0.25, minimum=256)
    frames, searched, skipped = [], 0, {}
    for start in range(0, len(ids), batch):
        hits = search(store, x[start : start + batch], k + 1, nprobe=nprobe, quantizer=quantizer)
        if shard in hits.skipped_shards:
            msg = (
                f"shard {shard} is indexed with an older similarity_quantizer; "
                "materialize similarity_index for it first"
            )
            raise SimilarityIndexError(msg)
        frames.append(
            uniqueness_frame(
                ids[start : start + batch], shard, hits, k=k, model_id=model_id, scored_at=scored_at
            )
        )
        searched, skipped = hits.searched_shards, hits.skipped_shards
    return ScoredShard(pl.concat(frames), searched, skipped)


# ------------------------------------------------------------------ the engine's work


#: The quantizer this process read last, by (root, options, Delta version, content hash): one
#: at a time, as it may be ~170 MB.
_QUANTIZERS: dict[tuple[Any, ...], Quantizer] = {}


def _cache_key(store: DeltaStore, table_version: int, content: str) -> tuple[Any, ...]:
    options = tuple(sorted(store.storage_options.items()))
    return (store.root_uri, options, table_version, content)


def current_quantizer(store: DeltaStore) -> tuple[int, Quantizer] | None:
    """The quantizer's current Delta version and the quantizer (None when never trained).

    Read afresh; the process keeps it for :func:`quantizer_at` (a local engine's work then
    reads it no second time).
    """
    table_version = store.version(SIMILARITY_QUANTIZER.name)
    if table_version is None:
        return None
    quantizer = load_quantizer(store, version=table_version)
    if quantizer is None:
        return None
    _QUANTIZERS.clear()
    _QUANTIZERS[_cache_key(store, table_version, quantizer.version)] = quantizer
    return table_version, quantizer


def quantizer_at(store: DeltaStore, table_version: int, content: str) -> Quantizer:
    """The quantizer at Delta ``table_version`` of ``similarity_quantizer``, read once per process.

    ``content`` is the quantizer's content hash as the step read it: a table deleted and
    written again reuses version numbers, so a version alone could name other centroids.

    Raises:
        SimilarityIndexError: If that version holds no quantizer or another one.
    """
    key = _cache_key(store, table_version, content)
    if key not in _QUANTIZERS:
        quantizer = load_quantizer(store, version=table_version)
        if quantizer is None or quantizer.version != content:
            found = "no rows" if quantizer is None else f"version {quantizer.version}"
            msg = (
                f"similarity_quantizer at Delta version {table_version} holds {found}, not the "
                f"quantizer {content} this step read (the table was replaced meanwhile): re-run "
                "the step"
            )
            raise SimilarityIndexError(msg)
        _QUANTIZERS.clear()
        _QUANTIZERS[key] = quantizer
    return _QUANTIZERS[key]


@dataclass(frozen=True)
class IndexOutcome:
    """What :class:`IndexShardWork` did for one shard (small, picklable).

    Attributes:
        row: The published file and its manifest row's figures.
        seconds: Wall time of building and publishing it.
        checks: ``every_embedding_indexed``.
    """

    row: ShardIndexRow
    seconds: float
    checks: tuple[Check, ...]


@dataclass(frozen=True)
class IndexShardWork:
    """Build and publish one shard's index file, then check it (callable in any process).

    Attributes:
        root_uri: Delta root.
        storage_options: deltalake storage options of the root.
        files_root: Where the faiss files go (:func:`~curation_assets.lib.similar.files_root_for`).
        quantizer_table_version: Delta version of ``similarity_quantizer`` the step read.
        quantizer_version: The quantizer's content hash (``Quantizer.version``).
    """

    root_uri: str
    storage_options: dict[str, str]
    files_root: str
    quantizer_table_version: int
    quantizer_version: str

    def __call__(self, key: str, progress: Callable[[str], None]) -> IndexOutcome:
        """Index shard ``key``; memory: its vectors twice (see :func:`index_shard`)."""
        store = DeltaStore(self.root_uri, self.storage_options)
        quantizer = quantizer_at(store, self.quantizer_table_version, self.quantizer_version)
        t0 = time.perf_counter()
        row = index_shard(store, self.files_root, key, quantizer, datetime.now(UTC))
        seconds = time.perf_counter() - t0
        n_embedded = store.read(IMAGE_EMBEDDINGS, shards=[key], columns=["image_id"]).height
        progress(f"indexed {row.n_vectors} vectors in {seconds:.2f}s")
        current = published_shard(store, key)  # as published, by this run or a later writer
        check = Check(
            name="every_embedding_indexed",
            asset="similarity_index",
            passed=current.n_vectors == n_embedded and current.file_exists,
            metadata={
                "embedded": n_embedded,
                "indexed": current.n_vectors,
                "file_exists": current.file_exists,
                "published_by_this_run": current.file == row.file,
            },
        )
        return IndexOutcome(row, seconds, (check,))


@dataclass(frozen=True)
class UniquenessOutcome:
    """What :class:`UniquenessShardWork` wrote for one shard, kept small for the trip back.

    Not the shard's rows: their figures, the histogram, and the few extreme rows the step
    turns into thumbnails.

    Attributes:
        rows: Rows written.
        searched_shards: Shard files searched.
        stale_shards_skipped: Shards skipped (stale quantizer, other model).
        seconds: Wall time of scoring and writing.
        figures: :func:`~curation_assets.lib.similar.uniqueness_figures`.
        histogram: Labels and counts of the scores (empty for an empty shard).
        most: The most unique rows (``image_id``, ``shard``, ``uniqueness``).
        least: The least unique rows (same columns).
        checks: ``every_image_scored``.
    """

    rows: int
    searched_shards: int
    stale_shards_skipped: int
    seconds: float
    figures: dict[str, Any]
    histogram: tuple[list[str], list[int]]
    most: pl.DataFrame
    least: pl.DataFrame
    checks: tuple[Check, ...]


@dataclass(frozen=True)
class UniquenessShardWork:
    """Score one shard's uniqueness and replace its rows (callable in any process).

    Attributes:
        root_uri: Delta root.
        storage_options: deltalake storage options of the root.
        quantizer_table_version: Delta version of ``similarity_quantizer`` the step read.
        quantizer_version: The quantizer's content hash (``Quantizer.version``).
        k: Neighbour rank scored.
        nprobe: Inverted lists searched per query.
        memory_budget_mb: The step's memory budget (MiB); each task sizes its query batches
            from it, so a node running several tasks at once holds several budgets.
        examples: Most and least unique rows returned for thumbnails.
    """

    root_uri: str
    storage_options: dict[str, str]
    quantizer_table_version: int
    quantizer_version: str
    k: int
    nprobe: int
    memory_budget_mb: float
    examples: int

    def __call__(self, key: str, progress: Callable[[str], None]) -> UniquenessOutcome:
        """Score shard ``key`` against every shard file (see :func:`score_shard`)."""
        store = DeltaStore(self.root_uri, self.storage_options)
        quantizer = quantizer_at(store, self.quantizer_table_version, self.quantizer_version)
        t0 = time.perf_counter()
        scored = score_shard(
            store,
            key,
            quantizer,
            k=self.k,
            nprobe=self.nprobe,
            budget=MemoryBudget(self.memory_budget_mb),
            scored_at=datetime.now(UTC),
        )
        frame = scored.frame
        store.replace_shard(IMAGE_UNIQUENESS, key, frame)
        seconds = time.perf_counter() - t0
        n_embedded = store.read(IMAGE_EMBEDDINGS, shards=[key], columns=["image_id"]).height
        progress(
            f"scored {frame.height} images against {scored.searched_shards} shard indexes in "
            f"{seconds:.2f}s"
        )
        most, least = (
            f.select("image_id", "shard", "uniqueness") for f in extremes(frame, self.examples)
        )
        return UniquenessOutcome(
            rows=frame.height,
            searched_shards=scored.searched_shards,
            stale_shards_skipped=len(scored.skipped_shards),
            seconds=seconds,
            figures=uniqueness_figures(frame),
            histogram=histogram(frame),
            most=most,
            least=least,
            checks=(uniqueness_check(frame, n_embedded),),
        )


def source_uris(store: DeltaStore, rows: pl.DataFrame) -> pl.DataFrame:
    """``rows`` (``image_id``, ``shard``) with their ``source_uri``, read from their shards."""
    shards = sorted(set(rows["shard"].to_list()))
    uris = store.read(RAW_IMAGES, shards=shards, columns=["image_id", "source_uri"])
    return rows.join(uris.unique("image_id"), on="image_id", how="left")


def thumbnail_row(
    rows: pl.DataFrame, read: Callable[[str], bytes], *, caption: str, px: int = 96
) -> str:
    """A markdown table row of thumbnails (inline data URIs) with ``caption`` under each.

    ``rows`` needs ``image_id``, ``source_uri`` and the ``caption`` column (a float).
    """
    cells, captions = [], []
    for rec in rows.iter_rows(named=True):
        try:
            thumb = make_thumbnail(read(str(rec["source_uri"])), px, quality=70)
            cells.append(
                f"![{rec['image_id'][:8]}](data:image/jpeg;base64,"
                f"{base64.b64encode(thumb).decode('ascii')})"
            )
        except Exception as exc:  # a missing file must not hide the other thumbnails
            cells.append(f"unreadable: {type(exc).__name__}")
        captions.append(f"`{rec['image_id'][:8]}` {caption} {rec[caption]:.3f}")
    if not cells:
        return "_none_"
    lines = ["| " + " | ".join(cells) + " |", "|" + "---|" * len(cells)]
    return "\n".join([*lines, "| " + " | ".join(captions) + " |"])
