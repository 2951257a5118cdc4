"""The embedding pass: batched, decode-overlapped, streamed into ``image_embeddings``."""

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import polars as pl
import torch

from curation_assets.lib.checks import Check
from curation_assets.lib.embed.models import (
    Embedder,
    EmbedderSpec,
    default_batch_size,
    load_embedder,
)
from curation_assets.lib.images import iter_prepared
from curation_assets.lib.ingest import DecodeLimits
from curation_assets.lib.memory import limit_malloc_arenas
from curation_assets.lib.shards import Item, ShardReader
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import IMAGE_EMBEDDINGS, QUARANTINE, RAW_IMAGES
from curation_assets.lib.vectors import embedding_matrix

logger = logging.getLogger(__name__)


@dataclass
class EmbedStats:
    """Counters of one embedding pass.

    Attributes:
        wanted: Images the pass is to embed (0 when every enumerated item is wanted).
        embedded: Images embedded.
        failed: ``(source_uri, image_id, reason, detail)`` of wanted images that failed.
        skipped: Enumerated items not wanted (quarantined at ingest, or exact duplicates).
        seconds: Wall time of the pass.
        forward_seconds: Time inside the model's forward pass.
    """

    wanted: int = 0
    embedded: int = 0
    failed: list[tuple[str, str | None, str, str]] = field(default_factory=list)
    skipped: int = 0
    seconds: float = 0.0
    forward_seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        """End-to-end throughput."""
        return self.embedded / self.seconds if self.seconds else 0.0


def embed_items(
    embedder: Embedder,
    items: Iterable[Item],
    *,
    wanted: set[str] | None,
    batch_size: int = 64,
    workers: int = 2,
    limits: DecodeLimits = DecodeLimits(),  # noqa: B008
    stats: EmbedStats | None = None,
    on_progress: Callable[[EmbedStats], None] | None = None,
    progress_every_s: float = 10.0,
) -> Iterator[tuple[list[str], np.ndarray]]:
    """Decode, preprocess and embed a stream of items, yielding ``(image_ids, vectors)``.

    Decoding and preprocessing run on ``workers`` threads ahead of the forward pass, so the
    model is not left waiting for images. Each sha256 is embedded once; items whose sha256
    is not in ``wanted`` (when given) are skipped without decoding.

    Memory: ``batch_size + 4 * workers`` preprocessed images plus one batch of vectors,
    independent of the stream's length.

    Yields:
        ``(image_ids, vectors)`` with vectors (n, dim) float32 L2-normalized.
    """
    stats = stats if stats is not None else EmbedStats()
    stats.wanted = len(wanted) if wanted is not None else 0
    limit_malloc_arenas()  # before the decode threads start
    ids: list[str] = []
    tensors: list[torch.Tensor] = []
    t0 = last = time.perf_counter()

    def flush() -> tuple[list[str], np.ndarray]:
        nonlocal ids, tensors
        tf = time.perf_counter()
        vectors = embedder.encode_images(torch.stack(tensors))
        stats.forward_seconds += time.perf_counter() - tf
        stats.embedded += len(ids)
        out = (ids, vectors)
        ids, tensors = [], []
        return out

    def skipped() -> None:
        stats.skipped += 1

    prepared = iter_prepared(
        items,
        embedder.preprocess,
        wanted=wanted,
        workers=workers,
        prefetch=max(batch_size, 4 * workers),
        limits=limits,
        on_skip=skipped,
    )
    for p in prepared:
        if p.value is None:
            reason, detail = p.error or ("embed_failed", "no pixels")
            stats.failed.append((p.source_uri, p.image_id, "embed_failed", f"{reason}: {detail}"))
            continue
        assert p.image_id is not None
        ids.append(p.image_id)
        tensors.append(p.value)
        if len(ids) >= batch_size:
            yield flush()
            now = time.perf_counter()
            if on_progress is not None and now - last >= progress_every_s:
                stats.seconds = now - t0
                on_progress(stats)
                last = now
    if ids:
        yield flush()
    stats.seconds = time.perf_counter() - t0


def embeddings_frame(
    shard: str, image_ids: list[str], vectors: np.ndarray, embedder: Embedder
) -> pl.DataFrame:
    """Rows of ``image_embeddings`` for one batch.

    Args:
        shard: Partition key.
        image_ids: n ids.
        vectors: (n, dim) float32, L2-normalized.
        embedder: The model that produced them (its id and dim are recorded).
    """
    emb = pl.Series("embedding", vectors, dtype=pl.Array(pl.Float32, vectors.shape[1]))
    return pl.DataFrame(
        {
            "image_id": image_ids,
            "shard": shard,
            "embedding": emb.cast(pl.List(pl.Float32)),
            "model_id": embedder.model_id,
            "dim": embedder.dim,
        }
    )


# --------------------------------------------------------------------------------------------
# The embed stage over Delta: what the asset calls
# --------------------------------------------------------------------------------------------


def embed_shard(
    store: DeltaStore,
    shard: str,
    embedder: Embedder,
    items: Iterable[Item],
    *,
    batch_size: int,
    workers: int,
    stats: EmbedStats,
    on_progress: Callable[[EmbedStats], None] | None = None,
    progress_every_s: float = 10.0,
) -> tuple[int, pl.DataFrame]:
    """Embed the shard's ``raw_images`` rows and replace its ``image_embeddings``.

    Vectors stream into one Delta transaction (memory: one batch). Images that fail to embed,
    and rows of ``raw_images`` never met while re-reading the shard (its source changed or
    vanished), replace the shard's ``embed`` rows of ``quarantine``.

    ``on_progress(stats)`` is called every ``progress_every_s`` seconds (``stats.wanted`` is
    the number of images to embed).

    Returns:
        (rows written, the quarantine rows written).
    """
    wanted = set(store.read(RAW_IMAGES, shards=[shard], columns=["image_id"])["image_id"])
    done: set[str] = set()

    def frames() -> Iterator[pl.DataFrame]:
        batches = embed_items(
            embedder,
            items,
            wanted=wanted,
            batch_size=batch_size,
            workers=workers,
            limits=DecodeLimits(max_pixels=2**62),  # ingest already enforced the limits
            stats=stats,
            on_progress=on_progress,
            progress_every_s=progress_every_s,
        )
        for ids, vectors in batches:
            done.update(ids)
            yield embeddings_frame(shard, ids, vectors, embedder)

    rows = store.replace_shard(IMAGE_EMBEDDINGS, shard, frames())
    failed = list(stats.failed)
    met = done | {image_id for _, image_id, _, _ in failed}
    failed += [
        (None, image_id, "embed_failed", "image no longer found in the shard's source")
        for image_id in sorted(wanted - met)
    ]
    now = datetime.now(UTC)
    failures = pl.DataFrame(
        [
            {
                "shard": shard,
                "source_uri": uri,
                "stage": "embed",
                "reason": reason,
                "detail": detail,
                "image_id": image_id,
                "quarantined_at": now,
            }
            for uri, image_id, reason, detail in failed
        ],
        schema=QUARANTINE.schema,
    )
    store.replace_shard(QUARANTINE, shard, failures, where={"stage": "embed"})
    return rows, failures


def embedding_checks(
    store: DeltaStore, shard: str, dim: int, model_id: str, tol: float
) -> list[Check]:
    """The embed invariants, on the written tables.

    ``dims_and_norms``: every vector has the model's dimension and id, is finite and has norm
    1 ± ``tol``. ``every_image_embedded``: every ``raw_images`` row is embedded or quarantined
    at embed, and nothing else is embedded.
    """
    df = store.read(
        IMAGE_EMBEDDINGS, shards=[shard], columns=["image_id", "embedding", "model_id", "dim"]
    )
    bad_dim = int((df["embedding"].list.len() != dim).sum()) + int((df["dim"] != dim).sum())
    other_models = int((df["model_id"] != model_id).sum())
    finite, worst = True, 0.0
    if df.height and bad_dim == 0:
        x = embedding_matrix(df["embedding"])
        finite = bool(np.isfinite(x).all())
        worst = float(np.abs(np.linalg.norm(x, axis=1) - 1.0).max())
    raw = store.read(RAW_IMAGES, shards=[shard], columns=["image_id"])
    emb = df.select("image_id")
    quarantined = store.scan(QUARANTINE).filter(
        (pl.col("shard") == shard) & (pl.col("stage") == "embed")
    )
    n_failed = int(quarantined.select(pl.len()).collect().item())
    missing = raw.join(emb, on="image_id", how="anti").height - n_failed
    extra = emb.join(raw, on="image_id", how="anti").height
    return [
        Check(
            "dims_and_norms",
            "image_embeddings",
            bad_dim == 0 and other_models == 0 and finite and worst <= tol,
            metadata={
                "dim": dim,
                "rows_with_wrong_dim": bad_dim,
                "rows_from_other_models": other_models,
                "all_finite": finite,
                "max_norm_error": worst,
            },
        ),
        Check(
            "every_image_embedded",
            "image_embeddings",
            missing == 0 and extra == 0,
            metadata={
                "raw_images": raw.height,
                "embedded": emb.height,
                "quarantined_at_embed": n_failed,
                "unaccounted": missing,
                "not_in_raw_images": extra,
            },
        ),
    ]


# --------------------------------------------------------------------------------------------
# One shard's work, for any engine (lib/engine): plain arguments in, a small outcome out
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbedOutcome:
    """What embedding one shard did (picklable; the asset turns it into metadata and checks).

    Attributes:
        rows: Embeddings written.
        quarantined: Images quarantined at embed.
        model_id: The model's id.
        dim: Its dimension.
        device: Where it ran (``cpu``, ``cuda:0``).
        batch_size: Images per forward pass.
        seconds: Wall time of the pass.
        images_per_s: Its throughput.
        forward_seconds: Time in the forward pass.
        model_loaded: The model was loaded for this shard (False: reused in this process).
        checks: ``dims_and_norms`` and ``every_image_embedded`` on the written rows.
    """

    rows: int
    quarantined: int
    model_id: str
    dim: int
    device: str
    batch_size: int
    seconds: float
    images_per_s: float
    forward_seconds: float
    model_loaded: bool
    checks: tuple[Check, ...]


@dataclass(frozen=True)
class EmbedShardWork:
    """Embed one shard and write it: the ``image_embeddings`` work, callable in any process.

    The model is loaded once per process and spec (:func:`load_embedder` caches it), so a
    worker process that embeds many shards loads it once.

    Attributes:
        root_uri: Delta root.
        storage_options: deltalake storage options of the root.
        source: Where the shards' images are.
        spec: The embedder.
        batch_size: Images per forward pass; 0 = auto for the device the model lands on.
        workers: Decode threads.
        norm_tolerance: ``dims_and_norms`` tolerance on the vectors' norms.
        progress_every_s: Seconds between progress sentences.
    """

    root_uri: str
    storage_options: dict[str, str]
    source: ShardReader
    spec: EmbedderSpec
    batch_size: int
    workers: int
    norm_tolerance: float
    progress_every_s: float

    def __call__(self, key: str, progress: Callable[[str], None]) -> EmbedOutcome:
        """Embed shard ``key``, replace its rows and check them; ``progress`` gets sentences."""
        store = DeltaStore(self.root_uri, self.storage_options)
        misses = load_embedder.cache_info().misses
        model = load_embedder(self.spec)
        loaded = load_embedder.cache_info().misses > misses
        batch_size = self.batch_size or default_batch_size(model.device)
        stats = EmbedStats()

        def on_progress(s: EmbedStats) -> None:
            progress(f"embedded {s.embedded}/{s.wanted} ({s.images_per_s:.1f} images/s)")

        rows, failures = embed_shard(
            store,
            key,
            model,
            self.source.items(key),
            batch_size=batch_size,
            workers=self.workers,
            stats=stats,
            on_progress=on_progress,
            progress_every_s=self.progress_every_s,
        )
        checks = embedding_checks(store, key, model.dim, model.model_id, self.norm_tolerance)
        return EmbedOutcome(
            rows=rows,
            quarantined=failures.height,
            model_id=model.model_id,
            dim=model.dim,
            device=str(model.device),
            batch_size=batch_size,
            seconds=stats.seconds,
            images_per_s=stats.images_per_s,
            forward_seconds=stats.forward_seconds,
            model_loaded=loaded,
            checks=tuple(checks),
        )
