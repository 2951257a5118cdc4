"""One shard at a time: read its reference images, score them, sum what the stage reports.

:func:`read_shards` reads the reference ("unfiltered") images of some shards with their
embeddings and dedup decision (the Delta reads prune by shard: nothing else is opened);
:func:`score_shard` turns one shard into its :data:`SAMPLE_WEIGHTS` rows, its
:data:`WEIGHT_SHARD_STATS` row and its :data:`AUDIT_SHARD_COUNTS` rows, with a given probe and
normaliser (the probe gives the kept rows' raw ratios, :func:`weigh_shard` the rest; the patch
path, :mod:`~.patch`, calls it with the ratios a previous run stored); :func:`shard_sizes`
counts rows per shard (plans batches and the probe sample);
:func:`~curation_assets.lib.memory.shard_batches` groups shards into reads that fit the memory
budget.

Which rows are the reference follows :func:`~curation_assets.lib.weights.run.load_weight_inputs`
(``correct_for``; :func:`reference_rows` is the one definition): every embedded image, less the
near duplicates dedup removed unless ``correct_for="filter_and_dedup"``; kept = dedup kept it
(an image dedup has not seen yet counts as not kept, as before).
"""

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from curation_assets.lib.compaction import flag_counts
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import (
    AUDIT_SHARD_COUNTS,
    DEDUPLICATED_IMAGES,
    IMAGE_EMBEDDINGS,
    RAW_IMAGES,
    SAMPLE_WEIGHTS,
)
from curation_assets.lib.vectors import vector_batches
from curation_assets.lib.weights.audit import TextEncoder, audit_attributes
from curation_assets.lib.weights.fit import DensityRatioModel, sigmoid
from curation_assets.lib.weights.scale import _check_bounds
from curation_assets.lib.weights.totals import shard_audit_counts, shard_weight_stats
from curation_assets.lib.weights.uniqueness import UniquenessTerm

RAW_COLUMNS = ["image_id", "shard", "source_uri", "caption", "width", "height", "format"]
BYTES_PER_VALUE = 4
ROW_OVERHEAD = 400
"""Bytes per row beside the embedding: ids, caption, the polars list offsets, attributes."""


def row_bytes(dim: int) -> int:
    """Working bytes of one reference row while its shard is scored.

    Its d float32 values are held in the polars list column and the numpy matrix, and may be
    gathered as float64 for a scoring batch; plus :data:`ROW_OVERHEAD` for the rest.
    """
    return 4 * dim * BYTES_PER_VALUE + ROW_OVERHEAD


def embedding_dim(store: DeltaStore) -> int | None:
    """The embedding dimension (from one row of ``image_embeddings``), None without rows."""
    row = store.scan(IMAGE_EMBEDDINGS).select("dim").head(1).collect()
    return int(row["dim"][0]) if row.height else None


def shard_sizes(
    store: DeltaStore, correct_for: str, shards: Iterable[str] | None = None
) -> pl.DataFrame:
    """Reference and kept images per shard, counted without reading an embedding.

    Args:
        store: Delta store.
        correct_for: ``filter`` or ``filter_and_dedup`` (see the module docstring).
        shards: Only these shards (None: every shard with embeddings).

    Returns:
        ``shard, n_reference, n_kept`` sorted by shard. ``n_reference`` counts embedded rows
        (less dedup-removed ones for ``filter``); images without a ``raw_images`` row, which
        :func:`read_shards` drops, are not subtracted: this is a plan, the scores count exactly.
    """
    wanted = None if shards is None else sorted(set(shards))
    n_emb = embedded_counts(store, wanted)
    names = n_emb["shard"].to_list() if wanted is None else wanted
    decided = flag_counts(store, DEDUPLICATED_IMAGES, names, "kept").rename(
        {"n_true": "n_kept", "n_false": "n_dup"}
    )
    out = n_emb.join(decided, on="shard", how="left").with_columns(
        pl.col("n_kept").fill_null(0), pl.col("n_dup").fill_null(0)
    )
    removed = pl.col("n_dup") if correct_for == "filter" else pl.lit(0)
    return out.select(
        "shard",
        (pl.col("n_embedded").cast(pl.Int64) - removed).alias("n_reference"),
        pl.col("n_kept").cast(pl.Int64),
    ).sort("shard")


def embedded_counts(store: DeltaStore, shards: Sequence[str] | None = None) -> pl.DataFrame:
    """``shard, n_embedded``: rows of ``image_embeddings`` per shard (those with any).

    From the Delta log's per-file row counts (:meth:`~.storage.DeltaStore.shard_row_counts`:
    no data file opened, but those of a shard some file of which has no statistics).
    """
    counts = store.shard_row_counts(IMAGE_EMBEDDINGS.name)
    wanted = counts if shards is None else [s for s in shards if counts.get(s)]
    return pl.DataFrame(
        {"shard": list(wanted), "n_embedded": [counts[s] for s in wanted]},
        schema={"shard": pl.String, "n_embedded": pl.Int64},
    )


def reference_rows(
    store: DeltaStore,
    shards: Sequence[str],
    correct_for: str,
    embedding_columns: Sequence[str],
    *,
    embeddings: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """The reference rows of ``shards``: raw images with an embedding row, and ``kept``.

    The one definition of the row set (the module docstring): ``raw_images`` (the
    :data:`RAW_COLUMNS`) inner-joined with ``image_embeddings`` on image_id and shard, less the
    rows dedup removed for ``correct_for="filter"``; kept = dedup kept it (null: not kept).

    Args:
        store: Delta store.
        shards: The shards (one pruned read per table).
        correct_for: ``filter`` or ``filter_and_dedup``.
        embedding_columns: The ``image_embeddings`` columns to read, with ``image_id`` and
            ``shard`` (``["image_id", "shard"]`` reads no embedding: a column projection).
        embeddings: Those columns of the shards' ``image_embeddings`` rows, already read
            (then nothing is read from that table).

    Returns:
        The :data:`RAW_COLUMNS`, the other ``embedding_columns`` and ``kept``, in no order.

    Memory: the rows of ``shards`` (with the embeddings only if asked for).
    """
    raw = store.read(RAW_IMAGES, shards=shards, columns=RAW_COLUMNS)
    emb = (
        embeddings
        if embeddings is not None
        else store.read(IMAGE_EMBEDDINGS, shards=shards, columns=list(embedding_columns))
    )
    dedup = store.read(DEDUPLICATED_IMAGES, shards=shards, columns=["image_id", "shard", "kept"])
    frame = raw.join(emb, on=["image_id", "shard"], how="inner").join(
        dedup.rename({"kept": "dedup_kept"}), on=["image_id", "shard"], how="left"
    )
    if correct_for == "filter":
        frame = frame.filter(pl.col("dedup_kept").is_null() | pl.col("dedup_kept"))
    return frame.with_columns(kept=pl.col("dedup_kept").fill_null(False)).drop("dedup_kept")


def read_shards(
    store: DeltaStore, shards: Sequence[str], correct_for: str
) -> dict[str, tuple[pl.DataFrame, np.ndarray, str]]:
    """The reference images of ``shards``, their embeddings and model, one entry per shard.

    One pruned read per input table for the whole group (the caller sizes the group from the
    memory budget: :func:`~curation_assets.lib.memory.shard_batches`). The embeddings' files
    are read twice, a batch at a time (:func:`~curation_assets.lib.vectors.vector_batches`):
    their ids first, which fix where each reference row goes (its shard, in image_id order),
    then their vectors, each written once into its shard's matrix. So what is held is the
    matrices and a batch, not the embeddings as polars read them, converted, then gathered.

    Returns:
        shard → ``(frame, x, model_id)``: frame has the :data:`RAW_COLUMNS` and ``kept``, sorted
        by image_id (the canonical order); x is (n, d) float32 aligned with it; model_id the
        shard's embedding model ("" for an empty shard). Shards without rows map to empty
        frames.

    Raises:
        ValueError: If a shard mixes embedding models, or a vector's length differs.
    """
    wanted = list(shards)
    files = store.shard_uris(IMAGE_EMBEDDINGS.name, wanted)
    uris = [uri for _, uri in files]
    shard_of = pl.Series("shard", [shard for shard, _ in files], dtype=pl.String)
    ids = [f for f, _ in vector_batches(uris, store.storage_options, None, _ID_COLUMNS)]
    read = pl.concat(ids) if ids else pl.DataFrame(schema={"_file": pl.Int32})
    emb = (
        read.select("image_id", shard_of.gather(read["_file"]), "model_id")
        if ids
        else IMAGE_EMBEDDINGS.empty().select("image_id", "shard", "model_id")
    ).with_row_index("_e")
    rows = sum(f.height for f in ids)
    frame = reference_rows(
        store, wanted, correct_for, ["image_id", "shard", "model_id"], embeddings=emb
    )
    del emb, ids, read
    parts = {k[0]: v for k, v in frame.partition_by("shard", as_dict=True).items()}
    out: dict[str, tuple[pl.DataFrame, np.ndarray, str]] = {}
    slot = np.full((rows, 2), -1, np.int64)  # embedding row → (shard index, row in its matrix)
    repeated: dict[str, np.ndarray] = {}
    for k, shard in enumerate(wanted):
        part = parts.get(shard)
        if part is None or part.is_empty():
            out[shard] = (frame.clear().drop("_e", "model_id"), np.zeros((0, 1), np.float32), "")
            continue
        part = part.sort("image_id")
        models = part["model_id"].unique().to_list()
        if len(models) != 1:
            msg = (
                f"shard {shard!r} has embeddings of {len(models)} models {models}; re-embed it "
                "so that every image of the shard has the same model"
            )
            raise ValueError(msg)
        e = part["_e"].to_numpy()
        slot[e, 0], slot[e, 1] = k, np.arange(part.height)
        if np.unique(e).size < e.size:  # an image listed twice in raw_images: one vector each
            repeated[shard] = e
        out[shard] = (part.drop("_e", "model_id"), np.zeros((0, 0), np.float32), str(models[0]))
    if frame.height:
        _fill(out, wanted, slot, vector_batches(uris, store.storage_options, "embedding"))
    for shard, e in repeated.items():  # each row gets the vector its embedding row was given
        frame_of, x, model = out[shard]
        out[shard] = (frame_of, x[slot[e, 1]], model)
    return out


#: The columns of ``image_embeddings`` read before the vectors (which rows go where).
_ID_COLUMNS = ("image_id", "model_id")


def _fill(
    out: dict[str, tuple[pl.DataFrame, np.ndarray, str]],
    wanted: list[str],
    slot: np.ndarray,
    batches: Iterator[tuple[pl.DataFrame, np.ndarray]],
) -> None:
    """Write each streamed vector into its shard's matrix (``slot``: row → shard index, row).

    Raises:
        RuntimeError: If the files held other rows than the first pass read (they are the
            same files: a bug, not data).
    """
    at = 0
    for _, xb in batches:
        n = xb.shape[0]
        where = slot[at : at + n]
        if where.shape[0] != n:
            msg = f"the embeddings' files yielded more rows than the {slot.shape[0]} first read"
            raise RuntimeError(msg)
        for k in np.unique(where[where[:, 0] >= 0, 0]):
            frame, x, model = out[wanted[int(k)]]
            if x.shape != (frame.height, xb.shape[1]):
                x = np.empty((frame.height, xb.shape[1]), np.float32)
                out[wanted[int(k)]] = (frame, x, model)
            mine = where[:, 0] == k
            x[where[mine, 1]] = xb[mine]
        at += n
    if at != slot.shape[0]:
        msg = f"the embeddings' files yielded {at} rows, not the {slot.shape[0]} first read"
        raise RuntimeError(msg)


@dataclass(frozen=True, eq=False)
class TrainFolds:
    """image_id → fold of a probe's training rows, as a frame sorted by id (not a dict).

    A probe trains on up to its budget's sample (65k ids at 1M images): held as a dict of
    Python strings that cost ~21 MB in every process that scores or patches a shard, as two
    Arrow columns a few MB.

    Attributes:
        frame: ``image_id`` (String, unique), ``fold`` (Int64), sorted by image_id.
    """

    frame: pl.DataFrame

    @classmethod
    def of(
        cls, ids: Sequence[str] | pl.Series, folds: Sequence[int] | np.ndarray | pl.Series
    ) -> "TrainFolds":
        """From aligned ids and folds (any order)."""
        frame = pl.DataFrame(
            {"image_id": ids, "fold": folds}, schema={"image_id": pl.String, "fold": pl.Int64}
        )
        return cls(frame.sort("image_id"))

    def __len__(self) -> int:
        """Training rows."""
        return self.frame.height

    def __eq__(self, other: object) -> bool:
        """The same ids with the same folds."""
        return isinstance(other, TrainFolds) and self.frame.equals(other.frame)

    def folds(self, ids: pl.Series) -> np.ndarray:
        """(n,) int64 fold of each of ``ids`` (-1: not a training row)."""
        return (
            ids.cast(pl.String)
            .to_frame("image_id")
            .join(self.frame, on="image_id", how="left", maintain_order="left")["fold"]
            .fill_null(-1)
            .to_numpy()
            .astype(np.int64)
        )


@dataclass(frozen=True)
class ShardScore:
    """What scoring one shard produced.

    Attributes:
        weights: Its :data:`SAMPLE_WEIGHTS` rows (kept images, by image_id).
        stats: Its :data:`WEIGHT_SHARD_STATS` row.
        counts: Its :data:`AUDIT_SHARD_COUNTS` rows.
    """

    weights: pl.DataFrame
    stats: dict[str, Any]
    counts: pl.DataFrame


def score_shard(
    shard: str,
    frame: pl.DataFrame,
    x: np.ndarray,
    model: DensityRatioModel,
    *,
    model_id: str,
    probe_id: str,
    train_folds: TrainFolds,
    scale: float,
    w_min: float,
    w_max: float,
    batch_size: int,
    keywords: Sequence[str] = (),
    concepts: Mapping[str, str] | None = None,
    text_encoder: TextEncoder | None = None,
    uniqueness: UniquenessTerm | None = None,
    uniqueness_scores: pl.DataFrame | None = None,
) -> ShardScore:
    """Weights, stats and audit counts of one shard with a fitted probe and a fixed scale.

    A row that was in the probe's training sample (``train_folds``) is scored by the fold
    probe that did not see it; every other row by the mean of the fold probes. ``weight =
    clip(scale · ratio · m, w_min, w_max)`` with ``m`` the uniqueness multiplier (1 when
    ``uniqueness`` is None; :mod:`~.uniqueness`) — the scale and the term are global (the
    stage's), so every shard scored with the same probe, scale and term gets the weights a
    single pass would give.

    Args:
        shard: The shard.
        frame: Its reference rows (:func:`read_shards`), sorted by image_id, with ``kept``.
        x: (n, d) float32 embeddings aligned with ``frame``.
        model: The probe.
        model_id: The shard's embedding model (recorded in its stats row).
        probe_id: The probe's id (recorded in its stats row).
        train_folds: Fold of each of the probe's training rows.
        scale: The normaliser.
        w_min: Lower weight bound, in (0, 1].
        w_max: Upper weight bound, ≥ 1.
        batch_size: Rows scored at once (memory ``batch_size · d · 8`` bytes).
        keywords: Extra caption keywords for the audit.
        concepts: Zero-shot concepts for the audit (with ``text_encoder``).
        text_encoder: The image model's text tower, or None.
        uniqueness: The uniqueness term, or None (off).
        uniqueness_scores: The shard's ``image_id, uniqueness`` rows (None: none yet; each
            kept row without one gets m = 1 and is counted as missing).

    Raises:
        ValueError: On non-finite embeddings, a dimension the probe does not expect, or bounds
            that do not bracket 1.

    Memory: the shard's rows (given) plus ``batch_size · d · 8`` bytes.
    """
    _check_bounds(w_min, w_max)
    if model.status == "fitted" and frame.height and x.shape[1] != model.dim:
        msg = (
            f"shard {shard!r} has embeddings of dim {x.shape[1]} but the probe expects "
            f"{model.dim}: the embedding model changed; re-run with config mode=full"
        )
        raise ValueError(msg)
    kept = frame["kept"].to_numpy().astype(bool) if frame.height else np.zeros(0, bool)
    rows = np.flatnonzero(kept)
    log_r = np.zeros(rows.size)
    fold = train_folds.folds(frame["image_id"])[rows] if rows.size else np.zeros(0, np.int64)
    for start in range(0, rows.size, max(1, batch_size)):
        idx = rows[start : start + batch_size]
        xb = np.asarray(x[idx], dtype=np.float64)
        if not np.isfinite(xb).all():
            msg = f"shard {shard!r} has non-finite embeddings; re-embed it"
            raise ValueError(msg)
        log_r[start : start + idx.size] = model.log_ratio(xb, fold[start : start + idx.size])
    raw = np.exp(log_r)
    return weigh_shard(
        shard,
        frame,
        x,
        raw,
        sigmoid(log_r),
        np.minimum(1.0, model.prior_kept / raw) if raw.size else raw,
        model_id=model_id,
        probe_id=probe_id,
        scale=scale,
        w_min=w_min,
        w_max=w_max,
        keywords=keywords,
        concepts=concepts,
        text_encoder=text_encoder,
        uniqueness=uniqueness,
        uniqueness_scores=uniqueness_scores,
    )


def weigh_shard(
    shard: str,
    frame: pl.DataFrame,
    x: np.ndarray,
    raw: np.ndarray,
    p_unfiltered: np.ndarray | pl.Series,
    p_kept: np.ndarray | pl.Series,
    *,
    model_id: str,
    probe_id: str,
    scale: float,
    w_min: float,
    w_max: float,
    keywords: Sequence[str] = (),
    concepts: Mapping[str, str] | None = None,
    text_encoder: TextEncoder | None = None,
    uniqueness: UniquenessTerm | None = None,
    uniqueness_scores: pl.DataFrame | None = None,
) -> ShardScore:
    """Weights, stats and audit counts of one shard from its kept rows' raw ratios.

    The part of :func:`score_shard` after the probe, shared with the patch path
    (:mod:`~.patch`, which takes the ratios a previous run stored): one code path, so the
    same ratios, scale and term give the same rows, stats and counts bit for bit.

    Args:
        shard: The shard.
        frame: Its reference rows (:func:`read_shards`), sorted by image_id, with ``kept``.
        x: (n, d) embeddings aligned with ``frame``: read only for the audit's concepts (with
            ``concepts`` and ``text_encoder``), any array otherwise.
        raw: (m,) float64 raw ratios of the kept rows, in frame order.
        p_unfiltered: (m,) ``sigmoid(log raw)`` of those rows (as the probe computed it).
        p_kept: (m,) ``min(1, prior_kept / raw)`` of those rows.
        model_id: The shard's embedding model (recorded in its stats row).
        probe_id: The probe's id (recorded in its stats row).
        scale: The normaliser.
        w_min: Lower weight bound.
        w_max: Upper weight bound.
        keywords: Extra caption keywords for the audit.
        concepts: Zero-shot concepts for the audit (with ``text_encoder``).
        text_encoder: The image model's text tower, or None.
        uniqueness: The uniqueness term, or None (off).
        uniqueness_scores: The shard's ``image_id, uniqueness`` rows (None: none yet).

    Raises:
        ValueError: On bounds that do not bracket 1.

    Memory: a few float64 arrays of the kept rows and the shard's audit attributes.
    """
    _check_bounds(w_min, w_max)
    kept = frame["kept"].to_numpy().astype(bool) if frame.height else np.zeros(0, bool)
    rows = np.flatnonzero(kept)
    kept_frame = frame.filter(pl.col("kept"))
    multiplier, missing = (
        uniqueness.multipliers(kept_frame["image_id"].to_list(), uniqueness_scores)
        if uniqueness is not None
        else (None, None)
    )
    scaled = scale * (raw if multiplier is None else raw * multiplier)
    low, high = scaled < w_min, scaled > w_max
    weight = np.clip(scaled, w_min, w_max)
    weights = SAMPLE_WEIGHTS.conform(
        pl.DataFrame(
            {
                "image_id": kept_frame["image_id"],
                "shard": [shard] * kept_frame.height,
                "weight": weight,
                "raw_ratio": raw,
                "p_unfiltered": p_unfiltered,
                "p_kept": p_kept,
                "clipped": low | high,
            },
            schema_overrides={"image_id": pl.String, "shard": pl.String},
        )
    )
    stats = shard_weight_stats(
        shard,
        weight=weight,
        raw_ratio=raw,
        clipped_low=low,
        clipped_high=high,
        n_reference=frame.height,
        scale=scale,
        w_min=w_min,
        w_max=w_max,
        probe_id=probe_id,
        model_id=model_id,
        multiplier=multiplier,
        uniqueness=None if uniqueness is None else uniqueness.record(),
        uniqueness_missing=missing,
    )
    if frame.height:
        attributes = audit_attributes(
            frame, x, keywords=keywords, concepts=concepts, text_encoder=text_encoder
        )
        full_w = np.zeros(frame.height)
        full_w[rows] = weight
        counts = shard_audit_counts(shard, attributes, kept, full_w)
    else:
        counts = AUDIT_SHARD_COUNTS.empty()
    return ShardScore(weights, stats, counts)
