"""Dedup's tables: keep decisions, the pair graph, the run log and the bucketed layout.

Written by :mod:`curation_assets.lib.dedup`:

* ``deduplicated_images`` (per shard): one row per deduplicated image.
* ``duplicate_pairs``, ``duplicate_members`` (global, ∝ pairs): the pair graph and the images
  on it, all the merge (components, keep policy) ever reads, but for the vectors of the groups
  it re-decides: ``duplicate_vectors`` (appended, read by image_id).
* ``dedup_members`` (partitioned by clustering and bucket): every deduplicated image once, with
  its embedding, in clustering 0's buckets (a bucket, a range of clusters, is one Delta
  partition: a work unit (0, bucket) reads only its rows).
* ``dedup_runs``: one row per run.
"""

import polars as pl

from curation_assets.lib.tables.spec import UTC_TIMESTAMP, Column, TableSpec

_VEC = Column(
    "vector",
    pl.Binary,
    "The embedding as little-endian float16 (2·d bytes): the vectors dedup compares.",
)
_META = (
    Column("width", pl.Int32, "Width in pixels (keep policy: resolution)."),
    Column("height", pl.Int32, "Height in pixels (keep policy: resolution)."),
    Column("ingested_at", UTC_TIMESTAMP, "When its shard was ingested (keep policy: earliest)."),
)

DEDUPLICATED_IMAGES = TableSpec(
    name="deduplicated_images",
    description="Every filtered image: kept, or which kept image it duplicates. Decisions "
    "that change after their shard was written are appended to the partition shard=_changes "
    "(the image's shard in changed_shard, the Delta version that wrote the row in revision): "
    "read through curation_assets' DeltaStore, or keep per image_id the row with the highest "
    "revision (null counts as oldest) among its shard's rows and those changes.",
    revision_key="image_id",
    columns=(
        Column("image_id", pl.String, "sha256 of the image bytes."),
        Column("shard", pl.String, "Shard it came from."),
        Column("kept", pl.Boolean, "True for the one image kept per near-duplicate group."),
        Column("duplicate_of", pl.String, "image_id of the kept image (null when kept)."),
        Column("similarity", pl.Float32, "Cosine to the kept image (null when kept)."),
        Column("component_id", pl.String, "The group: image_id of its kept image."),
    ),
)

_GRAPH_CHANGES = (
    "An update appends the rows it changed, stamped with the Delta version that wrote them "
    "(revision) and deleted (true: a tombstone); rows with a null revision are the last whole "
    "write's. Read through curation_assets' DeltaStore, or keep the rows whose key has no "
    "row with a revision, plus each such key's highest-revision row unless deleted."
)

DUPLICATE_PAIRS = TableSpec(
    name="duplicate_pairs",
    description="Pairs of filtered images in one cluster with cosine ≥ τ. " + _GRAPH_CHANGES,
    partition_by=(),
    change_key=("image_id_a", "image_id_b"),
    columns=(
        Column("image_id_a", pl.String, "The smaller image_id of the pair."),
        Column("image_id_b", pl.String, "The larger image_id of the pair."),
        Column("similarity", pl.Float32, "Cosine similarity (exact per-pair dot product)."),
        Column("found_by", pl.Int32, "Bitmask: bit c set when clustering c found the pair."),
        Column("clusterings", pl.String, "The clusterings that found it, e.g. '0,2,3'."),
        Column("shard_a", pl.String, "Shard of image_id_a."),
        Column("shard_b", pl.String, "Shard of image_id_b."),
    ),
)

CANDIDATE_PAIRS = TableSpec(
    name="candidate_pairs",
    description="Pairs found in the band τ_min ≤ cosine < τ: kept so that τ can be raised, or "
    "lowered down to τ_min, by re-deciding the groups from stored pairs (no search). "
    + _GRAPH_CHANGES,
    partition_by=(),
    change_key=("image_id_a", "image_id_b"),
    columns=DUPLICATE_PAIRS.columns,
)

VERIFIED_PAIRS = TableSpec(
    name="verified_pairs",
    description="Local-feature verdicts (ORB + RANSAC + aligned agreement) on stored pairs, "
    "when band verification is on: a verified pair in [τ_min, τ) joins the groups.",
    partition_by=(),
    columns=(
        *DUPLICATE_PAIRS.columns[:2],  # the pair's key: image_id_a < image_id_b
        Column("verified", pl.Boolean, "Same photo by local features (never with an error)."),
        Column("inliers", pl.Int32, "RANSAC inliers of the better orientation."),
        Column("agreement", pl.Float32, "Share of aligned textured cells that correlate."),
        Column("flipped", pl.Boolean, "Verified against the mirrored second image."),
        Column("error", pl.String, "Why the pair could not be checked (null when checked)."),
        Column("params", pl.String, "The verification parameters the verdict was made with."),
    ),
)

DUPLICATE_MEMBERS = TableSpec(
    name="duplicate_members",
    description="Every image on at least one stored pair (duplicate or candidate): its "
    "keep-policy fields and decision (with duplicate_pairs the merge's whole state: ∝ pairs, "
    "never ∝ images; the vectors are in duplicate_vectors). An image on candidate pairs only "
    "is kept, alone (component_size 1). " + _GRAPH_CHANGES,
    partition_by=(),
    change_key=("image_id", "shard"),
    columns=(
        Column("image_id", pl.String, "sha256 of the image bytes."),
        Column("shard", pl.String, "Shard it came from."),
        *_META,
        Column("kept", pl.Boolean, "Kept by the keep policy."),
        Column("duplicate_of", pl.String, "image_id of its group's kept image (null when kept)."),
        Column("similarity", pl.Float32, "Cosine to the kept image (null when kept)."),
        Column("component_id", pl.String, "The group: image_id of its kept image."),
        Column("component_size", pl.Int64, "Images in the group (1: on candidate pairs only)."),
    ),
)

DUPLICATE_VECTORS = TableSpec(
    name="duplicate_vectors",
    description="The float16 vector of every image put on a stored pair since the last full "
    "dedup run, read by image_id when the keep policy re-decides a group (a removed image's "
    "cosine to its kept one). Appended, never rewritten, between full runs: an image's vector "
    "never changes (its id is the hash of its bytes, and a new model means a full run), so an "
    "update writes only the images new to the pair graph. Rows of images that left the graph "
    "(or came back: listed twice, the same vector) stay until an update finds half the rows "
    "stale and rewrites the table with those of its graph and the committed one.",
    partition_by=(),
    columns=(
        Column("image_id", pl.String, "sha256 of the image bytes."),
        _VEC,
    ),
)

_LAYOUT_COLUMNS = (
    Column("clustering", pl.Int32, "Clustering 0..C-1."),
    Column("bucket", pl.Int32, "Bucket: a contiguous range of that clustering's clusters."),
    Column("cluster", pl.Int32, "Cluster id in that clustering."),
    Column(
        "clusters",
        pl.List(pl.Int32),
        "Its cluster in every clustering (0..C-1): an incremental run reads clustering 0's "
        "rows once and compares each with the new rows of all its clusters.",
    ),
    Column("image_id", pl.String, "sha256 of the image bytes."),
    Column("shard", pl.String, "Shard it came from."),
    _VEC,
    *_META,
)

DEDUP_MEMBERS = TableSpec(
    name="dedup_members",
    description="Each deduplicated image once with its vector, bucketed by clustering 0's "
    "cluster ranges: the pair search's input, one Delta partition per bucket (clustering is "
    "always 0 here; the other clusterings' buckets are staged as parquet files in "
    "_scratch/dedup while a run searches them).",
    partition_by=("clustering", "bucket"),
    columns=_LAYOUT_COLUMNS,
)

DEDUP_RUNS = TableSpec(
    name="dedup_runs",
    description="One row per deduplication run: mode, why, parameters and outcome.",
    partition_by=(),
    columns=(
        Column("run_at", UTC_TIMESTAMP, "When the run finished (UTC)."),
        Column("mode", pl.String, "full, incremental or retune (τ re-decided from stored pairs)."),
        Column("reason", pl.String, "Why this mode."),
        Column("tau", pl.Float64, "Cosine threshold."),
        Column("tau_min", pl.Float64, "Floor of the stored candidate pairs (≤ τ)."),
        Column("policy", pl.String, "Keep policy, criteria in order."),
        Column("centroids_versions", pl.String, "Centroid version of each clustering."),
        Column("model_id", pl.String, "Embedding model."),
        Column("images", pl.Int64, "Images covered."),
        Column("new_images", pl.Int64, "Images searched in this run."),
        Column("pairs", pl.Int64, "Pairs at cosine ≥ τ."),
        Column("removed", pl.Int64, "Images removed as near duplicates."),
        Column("previously_kept_now_removed", pl.Int64, "Kept before, now a duplicate."),
        Column("recall", pl.String, "JSON list: pair recall of 1..C clusterings (pooled)."),
        Column("seconds", pl.Float64, "Wall time of the dedup itself."),
        Column("units", pl.Int64, "Work units (clustering, bucket) searched."),
        Column(
            "recall_sample",
            pl.String,
            "JSON: this run's recall sample (queries, reference rows, true pairs, found per "
            "number of clusterings), pooled with earlier runs on the same centroids.",
        ),
    ),
)
