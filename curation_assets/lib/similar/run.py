"""One shard's similarity work: index its vectors, score its uniqueness; and their thumbnails.

The assets of ``defs/similar.py`` call these once per shard partition. Each reads only its
shard's embeddings (Delta partition pruning); indexing writes only its shard's file and
manifest row; scoring searches the shard's vectors against every shard file (mmapped, the
probed lists only) in batches sized from the memory budget.
"""

import base64
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

from curation_assets.lib.images import make_thumbnail
from curation_assets.lib.memory import MemoryBudget
from curation_assets.lib.similar.index import (
    Neighbours,
    Quantizer,
    ShardIndexRow,
    SimilarityIndexError,
    publish_shard,
    search,
)
from curation_assets.lib.similar.uniqueness import uniqueness_frame
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import IMAGE_EMBEDDINGS, RAW_IMAGES
from curation_assets.lib.tables.similar import SIMILARITY_INDEX
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
