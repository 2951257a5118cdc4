"""What the label queue and classifier training read: bounded, shard-pruned embeddings.

Neither reads every embedding of the corpus:

* :func:`labelled_shards` finds the shards of the labelled images (a few hundred per
  category) with a scan of the ``image_id`` and ``shard`` columns only (no vector is read; at
  ~80 bytes a row it is the one per-row cost left, streamed, memory ∝ the labels), and
  :func:`read_labelled` reads those shards' embeddings only (``store.read(shards=...)``),
  keeping the labelled rows.
* :func:`candidate_pool` is active learning's pool of unlabelled candidates: whole shards in a
  seeded random order, chosen from the Delta log's row counts until ``max_rows`` is reached
  (the last one subsampled, seeded), plus the labelled rows. Rows read ≈ ``max_rows`` + one
  shard, whatever the corpus size. :func:`pool_rows_for` sizes ``max_rows`` from the memory
  budget. When the corpus fits, the pool is the whole corpus (the queue is the one an
  exhaustive read gives).
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from curation_assets.lib.errors import ConfigError
from curation_assets.lib.memory import MemoryBudget
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import IMAGE_EMBEDDINGS
from curation_assets.lib.vectors import embedding_matrix

logger = logging.getLogger(__name__)

POOL_SHARE = 0.5
"""Share of the memory budget the label queue gives its candidate pool."""
ROW_OVERHEAD_BYTES = 160
"""Per-row bytes of a pool row besides its vectors (id strings, offsets, masks, scores)."""


def pool_bytes_per_row(dim: int) -> int:
    """Working bytes of one candidate: its vector four times, plus ids and scores.

    The four copies: the Arrow list, the float32 matrix, the faiss flat index, the
    canonical-order copy in :func:`~curation_assets.lib.classify.active.build_label_queue`.
    """
    if dim < 1:
        msg = f"dim={dim}: expected the embedding dimension (>= 1)"
        raise ValueError(msg)
    return 4 * 4 * dim + ROW_OVERHEAD_BYTES


def pool_rows_for(budget: MemoryBudget, dim: int, max_pool: int = 0) -> int:
    """Candidates the pool may hold: :data:`POOL_SHARE` of ``budget`` (≤ ``max_pool`` if > 0)."""
    rows = budget.rows(pool_bytes_per_row(dim), share=POOL_SHARE, minimum=1)
    return min(rows, max_pool) if max_pool > 0 else rows


def check_labelled_fit(store: DeltaStore, budget: MemoryBudget, n_labelled: int) -> None:
    """Raise a ConfigError when ``n_labelled`` embeddings would not fit ``budget``.

    The dimension is read from one row of ``image_embeddings`` (nothing when it is empty).
    """
    dims = store.scan(IMAGE_EMBEDDINGS).select("dim").head(1).collect()
    if dims.is_empty() or n_labelled == 0:
        return
    limit = budget.rows(pool_bytes_per_row(int(dims["dim"][0])))
    if n_labelled > limit:
        msg = (
            f"{n_labelled} labelled images need their embeddings in memory, but {budget} "
            f"holds {limit}: raise compute.memory_budget_mb"
        )
        raise ConfigError(msg)


def labelled_shards(store: DeltaStore, image_ids: Sequence[str]) -> dict[str, list[str]]:
    """Shard → the given images embedded in it (an image embedded in two shards: both).

    Reads the ``image_id`` and ``shard`` columns of ``image_embeddings`` only (streamed);
    memory ∝ ``len(image_ids)``.
    """
    ids = sorted(set(image_ids))
    if not ids:
        return {}
    hits = (
        store.scan(IMAGE_EMBEDDINGS)
        .select("image_id", "shard")
        .filter(pl.col("image_id").is_in(ids))
        .collect(engine="streaming")
    )
    out: dict[str, list[str]] = {}
    for image_id, shard in hits.sort("shard", "image_id").iter_rows():
        out.setdefault(shard, []).append(image_id)
    return out


def read_labelled(
    store: DeltaStore, image_ids: Sequence[str], columns: Sequence[str]
) -> pl.DataFrame:
    """``columns`` (with ``image_id`` and ``shard``) of the given images' embeddings.

    Reads only the shards that hold them (:func:`labelled_shards`). Memory: the labelled rows.
    """
    where = labelled_shards(store, image_ids)
    cols = list(dict.fromkeys(["image_id", "shard", *columns]))
    if not where:
        return IMAGE_EMBEDDINGS.empty().select(cols)
    wanted = sorted({i for ids in where.values() for i in ids})
    return store.read(IMAGE_EMBEDDINGS, shards=sorted(where), columns=cols).filter(
        pl.col("image_id").is_in(wanted)
    )


@dataclass
class CandidatePool:
    """The embeddings active learning chooses from, and what they cover.

    Attributes:
        ids: (n,) image ids, sorted, unique.
        x: (n, d) float32, L2-normalized embeddings aligned with ``ids``.
        max_rows: The cap on sampled candidates it was built with.
        seed: Seed of the shard order and the subsample.
        corpus_rows: Embedded rows of the corpus (Delta log).
        corpus_shards: Shards of the corpus.
        shards_read: Shards sampled, in the order they were chosen.
        sampled_rows: Candidates from the sampled shards.
        labelled_rows: Labelled images in the pool (sampled, or read from their own shards).
        subsampled: The sampled shards held more than ``max_rows`` images.
    """

    ids: list[str]
    x: np.ndarray
    max_rows: int
    seed: int
    corpus_rows: int
    corpus_shards: int
    shards_read: list[str] = field(default_factory=list)
    sampled_rows: int = 0
    labelled_rows: int = 0
    subsampled: bool = False

    @property
    def covers_corpus(self) -> bool:
        """Whether every embedded image is in the pool."""
        return len(self.shards_read) == self.corpus_shards and not self.subsampled

    def summary(self) -> dict[str, object]:
        """Figures for metadata: pool size, sample, corpus, seed."""
        return {
            "pool_rows": len(self.ids),
            "sampled_rows": self.sampled_rows,
            "labelled_rows": self.labelled_rows,
            "max_pool_rows": self.max_rows,
            "shards_sampled": len(self.shards_read),
            "corpus_rows": self.corpus_rows,
            "corpus_shards": self.corpus_shards,
            "covers_corpus": self.covers_corpus,
            "seed": self.seed,
        }


def _one_per_image(
    frame: pl.DataFrame, max_rows: int | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, bool]:
    """One vector per image (first by shard: canonical), sorted by image_id, ≤ ``max_rows``.

    When more images than ``max_rows`` remain, ``max_rows`` of them are kept, uniformly with
    ``seed``. The vectors become one float32 matrix first and are gathered there (gathering
    rows of a list column is several times slower).

    Returns:
        (ids (n,) object, x (n, d) float32, whether it was subsampled).
    """
    order = frame.select(pl.arg_sort_by("image_id", "shard")).to_series().to_numpy()
    ids = frame["image_id"].to_numpy()[order]
    first = np.ones(order.size, dtype=bool)
    first[1:] = ids[1:] != ids[:-1]
    picks = order[first]
    subsampled = max_rows is not None and picks.size > max_rows
    if subsampled:
        chosen = np.random.default_rng(seed).choice(picks.size, size=max_rows, replace=False)
        picks = picks[np.sort(chosen)]  # positions in id order: stays sorted by image_id
    x = embedding_matrix(frame["embedding"])
    ids_all = frame["image_id"].to_numpy()
    return ids_all[picks], x[picks] if x.size else x, subsampled


def candidate_pool(
    store: DeltaStore, labelled_ids: Sequence[str], *, max_rows: int, seed: int = 0
) -> CandidatePool:
    """A seeded, bounded sample of the embedded images plus every labelled image.

    Shards are taken in a seeded random order (of their sorted keys) until their rows reach
    ``max_rows``; when the last one overshoots, ``max_rows`` images of the sampled shards are
    kept (seeded, uniform). The labelled images are then read from their own shards and added.

    Args:
        store: The Delta store holding ``image_embeddings``.
        labelled_ids: Images with a label in any category (always in the pool).
        max_rows: Cap on the sampled candidates (≥ 1), e.g. :func:`pool_rows_for`.
        seed: Seed of the shard order and of the subsample.

    Returns:
        The :class:`CandidatePool`.

    Memory: the rows of the shards chosen (≤ ``max_rows`` + one shard) as read, their
    float32 matrix and the kept rows' copy, plus the labelled rows.
    """
    if max_rows < 1:
        msg = f"max_rows={max_rows}: expected at least 1 candidate"
        raise ValueError(msg)
    counts = {k: v for k, v in store.shard_row_counts(IMAGE_EMBEDDINGS.name).items() if v}
    order = [str(k) for k in np.random.default_rng(seed).permutation(sorted(counts))]
    chosen, total = [], 0
    for key in order:
        if total >= max_rows:
            break
        chosen.append(key)
        total += counts[key]
    cols = ["image_id", "shard", "embedding"]
    frame = (
        store.read(IMAGE_EMBEDDINGS, shards=chosen, columns=cols)
        if chosen
        else IMAGE_EMBEDDINGS.empty().select(cols)
    )
    ids, x, subsampled = _one_per_image(frame, max_rows, seed)
    del frame
    in_sample = set(ids.tolist())
    missing = sorted({i for i in labelled_ids if i not in in_sample})
    lab_ids, lab_x, _ = _one_per_image(read_labelled(store, missing, ["embedding"]))
    sampled_rows = len(ids)
    if len(lab_ids):  # labelled images the sample missed, read from their own shards
        ids = np.concatenate([ids, lab_ids])
        x = np.concatenate([x.reshape(len(x), -1), lab_x]) if x.size else lab_x
        canon = np.argsort(ids.astype(str), kind="stable")
        ids, x = ids[canon], x[canon]
    pool = CandidatePool(
        ids=[str(i) for i in ids],
        x=np.ascontiguousarray(x, dtype=np.float32),
        max_rows=max_rows,
        seed=seed,
        corpus_rows=sum(counts.values()),
        corpus_shards=len(counts),
        shards_read=chosen,
        sampled_rows=sampled_rows,
        labelled_rows=len(set(labelled_ids) & in_sample) + len(lab_ids),
        subsampled=bool(subsampled),
    )
    logger.info(
        "candidate pool: %d sampled from %d of %d shards (%d rows), + %d labelled (seed %d)",
        pool.sampled_rows,
        len(chosen),
        pool.corpus_shards,
        pool.corpus_rows,
        pool.labelled_rows,
        seed,
    )
    return pool
