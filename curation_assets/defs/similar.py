"""Similarity stage: a shared quantizer → a faiss index per shard → per-image uniqueness.

``similarity_quantizer`` (global) is trained once (and weekly when data changed, like the
dedup centroids); ``similarity_index`` writes one faiss file per shard and its manifest row;
``image_uniqueness`` scores a shard's images against every shard file. A new shard costs its
own file and its own search. ``curation similar`` queries the same files.
"""

from datetime import UTC, datetime

import dagster as dg
from pydantic import Field

from curation_assets.defs.automation import CENTROIDS
from curation_assets.defs.metadata import check_result, markdown_bars, table_metadata, table_schema
from curation_assets.defs.partitions import (
    ShardLoop,
    ShardReport,
    shard_backfill_policy,
    shards_partitions,
)
from curation_assets.defs.resources import Compute, DeltaStorage, Engine
from curation_assets.defs.retries import fail_fast, transient_retry
from curation_assets.lib.cluster import default_k, train_kmeans
from curation_assets.lib.images import SourceReader
from curation_assets.lib.similar import (
    DEFAULT_K,
    SimilarityIndexError,
    embedding_pool,
    files_root_for,
    quantizer_frame,
)
from curation_assets.lib.similar.run import (
    IndexOutcome,
    IndexShardWork,
    UniquenessOutcome,
    UniquenessShardWork,
    current_quantizer,
    source_uris,
    thumbnail_row,
)
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import IMAGE_EMBEDDINGS
from curation_assets.lib.tables.similar import (
    IMAGE_UNIQUENESS,
    SIMILARITY_INDEX,
    SIMILARITY_QUANTIZER,
)
from curation_assets.lib.vectors import embedding_matrix, single_model

GROUP = "similar"
#: Bytes a training-pool row may take (a 1280-d float32 vector, the widest embedder here, + ids).
POOL_ROW_BYTES = 4 * 1280 + 200


class QuantizerConfig(dg.Config):
    """Training of the coarse quantizer shared by every shard's index."""

    nlist: int = Field(
        default=0,
        description="Inverted lists (k-means centroids); 0 = sqrt(N) rounded to a power of "
        "two, N = embedded images (1024 at 1M, 32k at 1G).",
    )
    seed: int = Field(default=0, description="Seed of the training sample and k-means.")
    niter: int = Field(default=10, description="Lloyd iterations.")
    max_points_per_centroid: int = Field(
        default=64, description="Training sample cap: nlist × this many rows."
    )


class IndexConfig(dg.Config):
    """Where the per-shard faiss files are written."""

    files_root: str = Field(
        default="",
        description="Folder or s3:// URI of the faiss files; empty = <Delta root>/_similarity "
        "(the table then records paths relative to it, portable between homes and stores).",
    )


class UniquenessConfig(dg.Config):
    """The uniqueness score and the search behind it."""

    k: int = Field(
        default=DEFAULT_K,
        description="Score = cosine distance to the k-th nearest other image (5: a few "
        "near-duplicates of an image do not make it look common).",
    )
    nprobe: int = Field(
        default=32,
        description="Inverted lists searched per image (more = closer to exact; nlist = exact).",
    )
    examples: int = Field(default=4, description="Most and least unique images shown.")


@dg.asset(
    description=(
        "Coarse quantizer of the similarity index: spherical k-means centroids trained on a "
        "seeded sample of every shard's embeddings (filtered or not). Every shard's faiss index "
        "files its vectors under these lists, so the shard indexes are searched together. "
        "Trained when missing and weekly when data changed; a retrain rebuilds every shard's "
        "index."
    ),
    deps=["image_embeddings"],
    kinds={"deltalake", "faiss"},
    group_name=GROUP,
    pool="gpu",
    automation_condition=CENTROIDS,
    retry_policy=transient_retry,
    metadata={"dagster/column_schema": table_schema(SIMILARITY_QUANTIZER)},
)
@fail_fast
def similarity_quantizer(
    context: dg.AssetExecutionContext,
    config: QuantizerConfig,
    delta: DeltaStorage,
    compute: Compute,
) -> dg.MaterializeResult:
    """Train the quantizer on a bounded, seeded pool of embeddings.

    Memory: at most ``nlist · max_points_per_centroid`` rows and half the memory budget
    (:func:`~curation_assets.lib.similar.embedding_pool`).
    """
    store = delta.store()
    n_images = sum(store.shard_row_counts(IMAGE_EMBEDDINGS.name).values())
    if not n_images:
        msg = "no image is embedded yet; materialize image_embeddings first"
        raise dg.Failure(msg, allow_retries=False)
    nlist = config.nlist or default_k(n_images)
    rows = min(
        nlist * config.max_points_per_centroid,
        compute.budget().rows(POOL_ROW_BYTES, share=0.5, minimum=nlist),
    )
    pool = embedding_pool(store, rows, seed=config.seed)
    model_id = single_model(pool, before="training the similarity quantizer")
    nlist = min(nlist, pool.height)
    model = train_kmeans(
        embedding_matrix(pool["embedding"]),
        nlist,
        seed=config.seed,
        niter=config.niter,
        max_points_per_centroid=config.max_points_per_centroid,
        order_key=pool["image_id"].to_list(),
    )
    frame = quantizer_frame(model, model_id, datetime.now(UTC))
    store.replace_table(SIMILARITY_QUANTIZER, frame)
    context.log.info(f"similarity quantizer: nlist={nlist} on {model.n_train} rows")
    return dg.MaterializeResult(
        metadata=table_metadata(
            SIMILARITY_QUANTIZER,
            delta.uri(SIMILARITY_QUANTIZER),
            frame.height,
            nlist=nlist,
            version=str(frame["version"][0]),
            model_id=model_id,
            n_images=n_images,
            n_train=model.n_train,
            seed=config.seed,
            imbalance=float(model.imbalance),
            train_seconds=round(model.train_seconds, 3),
        )
    )


@dg.asset(
    description=(
        "Per shard: a faiss IndexIVFFlat file of the shard's embeddings under the shared "
        "quantizer, written atomically (temp + rename), and its manifest row (this table: "
        "file, ids, quantizer version). Other shards' files are never touched. `curation "
        "similar` and image_uniqueness search every shard's file together."
    ),
    partitions_def=shards_partitions,
    deps=["image_embeddings", "similarity_quantizer"],
    kinds={"deltalake", "faiss"},
    group_name=GROUP,
    retry_policy=transient_retry,
    backfill_policy=shard_backfill_policy,
    metadata={"dagster/column_schema": table_schema(SIMILARITY_INDEX)},
    check_specs=[
        dg.AssetCheckSpec(
            "every_embedding_indexed",
            asset="similarity_index",
            blocking=True,
            description="The shard's file holds one vector per embedded image and exists.",
        )
    ],
)
@fail_fast
def similarity_index(
    context: dg.AssetExecutionContext, config: IndexConfig, delta: DeltaStorage, engine: Engine
):
    """Build each shard's file; memory: one shard's vectors twice.

    Each shard is one task of the ``engine`` (this process, or a Ray cluster).
    """
    store = delta.store()
    stored = current_quantizer(store)
    if stored is None:
        msg = "similarity_quantizer was never materialized; materialize it first"
        raise SimilarityIndexError(msg)
    version, quantizer = stored
    work = IndexShardWork(
        root_uri=delta.root_uri,
        storage_options=delta.task_options(),
        files_root=str(files_root_for(store, config.files_root)),
        quantizer_table_version=version,
        quantizer_version=quantizer.version,
    )
    shards = ShardLoop(context, ["similarity_index"])

    def report(key: str, out: IndexOutcome) -> ShardReport:
        row = out.row
        metadata = table_metadata(
            SIMILARITY_INDEX,
            delta.uri(SIMILARITY_INDEX),
            1,
            file=dg.MetadataValue.path(str(row.file)),
            n_vectors=row.n_vectors,
            file_bytes=row.file_bytes,
            nlist=quantizer.nlist,
            quantizer_version=quantizer.version,
            model_id=quantizer.model_id,
            superseded_files_removed=row.removed_files,
            seconds=round(out.seconds, 3),
        )
        return {"similarity_index": metadata}, [check_result(c) for c in out.checks]

    yield from shards.run_on(engine.engine(), work, report)


@dg.asset(
    description=(
        "Per image: uniqueness = cosine distance to its k-th nearest other image (k = 5), "
        "searched in every shard's similarity index when the shard is scored (FiftyOne's "
        "uniqueness, fastdup's outliers). High = outlier, ~0 = has k near-copies. A score is "
        "as of scoring (index_images says against how many images): later shards can only "
        "lower it; re-materialize old shards to refresh. Usable as a filter signal or a "
        "weights input. Metadata: distribution and the most and least unique images."
    ),
    partitions_def=shards_partitions,
    deps=["similarity_index"],
    kinds={"deltalake", "faiss"},
    group_name=GROUP,
    retry_policy=transient_retry,
    backfill_policy=shard_backfill_policy,
    metadata={"dagster/column_schema": table_schema(IMAGE_UNIQUENESS)},
    check_specs=[
        dg.AssetCheckSpec(
            "every_image_scored",
            asset="image_uniqueness",
            blocking=True,
            description="Each embedded image of the shard has one finite score in [0, 2].",
        )
    ],
)
@fail_fast
def image_uniqueness(
    context: dg.AssetExecutionContext,
    config: UniquenessConfig,
    delta: DeltaStorage,
    compute: Compute,
    engine: Engine,
):
    """Score each shard; memory: a batch of queries sized from the budget + one mmapped file.

    Each shard is one task of the ``engine``; the task returns the shard's figures and its
    few extreme rows, and the thumbnails are made here.
    """
    store = delta.store()
    stored = current_quantizer(store)
    if stored is None:
        msg = "similarity_quantizer was never materialized; materialize it and similarity_index"
        raise SimilarityIndexError(msg)
    version, quantizer = stored
    work = UniquenessShardWork(
        root_uri=delta.root_uri,
        storage_options=delta.task_options(),
        quantizer_table_version=version,
        quantizer_version=quantizer.version,
        k=config.k,
        nprobe=config.nprobe,
        memory_budget_mb=compute.memory_budget_mb,
        examples=config.examples,
    )
    shards = ShardLoop(context, ["image_uniqueness"])

    def report(key: str, out: UniquenessOutcome) -> ShardReport:
        metadata = table_metadata(
            IMAGE_UNIQUENESS,
            delta.uri(IMAGE_UNIQUENESS),
            out.rows,
            k=config.k,
            nprobe=config.nprobe,
            nlist=quantizer.nlist,
            searched_shards=out.searched_shards,
            stale_shards_skipped=out.stale_shards_skipped,
            seconds=round(out.seconds, 3),
            **out.figures,
            **_pictures(store, out),
        )
        return {"image_uniqueness": metadata}, [check_result(c) for c in out.checks]

    yield from shards.run_on(engine.engine(), work, report)


def _pictures(store: DeltaStore, out: UniquenessOutcome) -> dict[str, dg.MetadataValue]:
    """The histogram and the most / least unique images of a shard, as markdown."""
    if not out.rows:
        return {}
    labels, counts = out.histogram
    most, least = source_uris(store, out.most), source_uris(store, out.least)
    with SourceReader() as reader:
        text = (
            "**Most unique** (outliers):\n\n"
            + thumbnail_row(most, reader.read, caption="uniqueness")
            + "\n\n**Least unique** (have near-copies):\n\n"
            + thumbnail_row(least, reader.read, caption="uniqueness")
        )
    return {
        "uniqueness_histogram": dg.MetadataValue.md(
            "Images by uniqueness:\n\n" + markdown_bars(labels, counts, header=("score", "images"))
        ),
        "most_and_least_unique": dg.MetadataValue.md(text),
    }


similarity_quantizer_job = dg.define_asset_job(
    name="similarity_quantizer_job",
    selection=["similarity_quantizer"],
    description="Train the similarity index's coarse quantizer; afterwards every shard's "
    "similarity_index is stale and is rebuilt.",
)
similarity_job = dg.define_asset_job(
    name="similarity_job",
    selection=["similarity_index", "image_uniqueness"],
    description="Index shards in the similarity index, then score their images' uniqueness.",
)

defs = dg.Definitions(
    assets=[similarity_quantizer, similarity_index, image_uniqueness],
    jobs=[similarity_quantizer_job, similarity_job],
)
