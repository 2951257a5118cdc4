"""Clustering and near-duplicate removal over the Delta tables (stages 5–6), without Dagster.

The pure algorithms live in :mod:`curation_assets.lib.cluster` and
:mod:`curation_assets.lib.dedup`; this module reads their inputs from Delta, decides between a
full and an incremental run, and writes the results back:

* ``cluster_centroids_<c>`` (one table per clustering ``c``): the k-means centroids, with a
  ``version`` (hash of the centroids) that every assignment row carries.
* ``cluster_assignments_<c>`` (per shard): each filtered image's nearest centroid.
* ``deduplicated_images``: one row per filtered image with ``kept``, ``duplicate_of``, ...
* ``duplicate_pairs``: every pair at cosine ≥ τ found inside a cluster, and by which
  clusterings.
* ``dedup_runs``: one row per run (full or incremental, why, τ, policy, centroid versions,
  counts, recall), the state an incremental run checks itself against.

Incremental rule (:func:`plan_dedup`): a run is incremental when the previous run used the same
τ, keep policy, embedding model and centroid versions, and every image it covered is still in
the filtered set. Only images not covered yet are searched, against all rows of their clusters;
old pairs are reused. Anything else (a retrain of the centroids, a new τ or policy, an image
that left the filtered set because a classifier was retrained) makes it a full recompute, and
the reason is recorded. An incremental run gives the same decisions, similarities and pairs as
a full run on the same images (tested).
"""

import base64
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl

from curation_assets.lib.cluster import KMeansModel
from curation_assets.lib.commits import (
    Commit,
    input_versions,
    last_commit,
    record_commit,
    torn_outputs,
)
from curation_assets.lib.dedup import (
    DedupResult,
    DedupState,
    ImageMeta,
    Pairs,
    dedup_incremental,
    recall_by_num_clusterings,
)
from curation_assets.lib.embed import IMAGE_EMBEDDINGS, embedding_matrix
from curation_assets.lib.filter import FILTERED_IMAGES
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import RAW_IMAGES, Column, TableSpec

logger = logging.getLogger(__name__)

_TS = pl.Datetime("us", "UTC")

#: Number of independent clusterings (DALL·E 2 used five).
N_CLUSTERINGS = 5

_CENTROIDS = TableSpec(
    name="cluster_centroids",
    description="k-means centroids of one clustering (spherical, cosine).",
    partition_by=(),
    columns=(
        Column("centroid_id", pl.Int32, "Cluster id 0..K-1."),
        Column("centroid", pl.List(pl.Float32), "L2-normalized centroid (d floats)."),
        Column("train_size", pl.Int64, "Training rows assigned to this centroid."),
        Column("version", pl.String, "Hash of all centroids; assignments record it."),
        Column("seed", pl.Int32, "Seed of the training sample and initialisation."),
        Column("model_id", pl.String, "Embedding model the centroids live in."),
        Column("trained_at", _TS, "When the centroids were trained (UTC)."),
    ),
)

_ASSIGNMENTS = TableSpec(
    name="cluster_assignments",
    description="Nearest centroid of each filtered image, for one clustering.",
    columns=(
        Column("image_id", pl.String, "sha256 of the image bytes."),
        Column("shard", pl.String, "Shard (dynamic partition key)."),
        Column("cluster", pl.Int32, "Nearest centroid's id."),
        Column("cosine", pl.Float32, "Cosine similarity to that centroid."),
        Column("distance", pl.Float32, "Cosine distance to that centroid (1 − cosine)."),
        Column("centroids_version", pl.String, "Version of the centroids used."),
    ),
)


def centroids_spec(c: int) -> TableSpec:
    """The ``cluster_centroids_<c>`` table."""
    return replace(_CENTROIDS, name=f"cluster_centroids_{c}")


def assignments_spec(c: int) -> TableSpec:
    """The ``cluster_assignments_<c>`` table."""
    return replace(_ASSIGNMENTS, name=f"cluster_assignments_{c}")


DEDUPLICATED_IMAGES = TableSpec(
    name="deduplicated_images",
    description="Every filtered image: kept, or which kept image it duplicates.",
    partition_by=(),
    columns=(
        Column("image_id", pl.String, "sha256 of the image bytes."),
        Column("shard", pl.String, "Shard it came from."),
        Column("kept", pl.Boolean, "True for the one image kept per near-duplicate group."),
        Column("duplicate_of", pl.String, "image_id of the kept image (null when kept)."),
        Column("similarity", pl.Float32, "Cosine to the kept image (null when kept)."),
        Column("component_id", pl.String, "The group: image_id of its kept image."),
        Column("component_size", pl.Int64, "Images in the group (1 = no near duplicate)."),
        Column("row", pl.Int64, "Position in the incremental state (old rows first)."),
    ),
)

DUPLICATE_PAIRS = TableSpec(
    name="duplicate_pairs",
    description="Pairs of filtered images in one cluster with cosine ≥ τ.",
    partition_by=(),
    columns=(
        Column("image_id_a", pl.String, "The smaller image_id of the pair."),
        Column("image_id_b", pl.String, "The larger image_id of the pair."),
        Column("similarity", pl.Float32, "Cosine similarity (exact per-pair dot product)."),
        Column("found_by", pl.Int32, "Bitmask: bit c set when clustering c found the pair."),
        Column("clusterings", pl.String, "The clusterings that found it, e.g. '0,2,3'."),
    ),
)

DEDUP_RUNS = TableSpec(
    name="dedup_runs",
    description="One row per deduplication run: mode, why, parameters and outcome.",
    partition_by=(),
    columns=(
        Column("run_at", _TS, "When the run finished (UTC)."),
        Column("mode", pl.String, "full or incremental."),
        Column("reason", pl.String, "Why this mode."),
        Column("tau", pl.Float64, "Cosine threshold."),
        Column("policy", pl.String, "Keep policy, criteria in order."),
        Column("centroids_versions", pl.String, "Centroid version of each clustering."),
        Column("model_id", pl.String, "Embedding model."),
        Column("images", pl.Int64, "Images covered."),
        Column("new_images", pl.Int64, "Images searched in this run."),
        Column("pairs", pl.Int64, "Pairs at cosine ≥ τ."),
        Column("removed", pl.Int64, "Images removed as near duplicates."),
        Column("previously_kept_now_removed", pl.Int64, "Kept before, now a duplicate."),
        Column("recall", pl.String, "JSON list: pair recall of 1..C clusterings (sampled)."),
        Column("seconds", pl.Float64, "Wall time of the dedup itself."),
    ),
)


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
    image_ids: Sequence[str], shard: str, cluster: np.ndarray, cosine: np.ndarray, version: str
) -> pl.DataFrame:
    """Rows of ``cluster_assignments_<c>`` for one shard (nearest centroid only)."""
    return pl.DataFrame(
        {
            "image_id": list(image_ids),
            "shard": shard,
            "cluster": np.asarray(cluster, dtype=np.int32),
            "cosine": np.asarray(cosine, dtype=np.float32),
            "distance": (1.0 - np.asarray(cosine, dtype=np.float32)).astype(np.float32),
            "centroids_version": version,
        },
        schema=_ASSIGNMENTS.schema,
    )


def filtered_embeddings(store: DeltaStore, shards: Sequence[str] | None = None) -> pl.DataFrame:
    """``image_id, shard, model_id, embedding`` of filtered images, sorted by shard, image_id."""
    kept = store.scan(FILTERED_IMAGES).select("image_id", "shard")
    if shards is not None:
        kept = kept.filter(pl.col("shard").is_in(list(shards)))
    emb = store.scan(IMAGE_EMBEDDINGS).select("image_id", "shard", "model_id", "embedding")
    return kept.join(emb, on=["image_id", "shard"], how="inner").sort("shard", "image_id").collect()


def single_model(df: pl.DataFrame) -> str:
    """The one ``model_id`` of ``df`` (raises when vectors of several models are mixed)."""
    models = df["model_id"].unique().to_list()
    if len(models) != 1:
        msg = (
            f"the filtered embeddings come from {len(models)} models {models}; re-embed every "
            "shard with one model before clustering"
        )
        raise ValueError(msg)
    return str(models[0])


# --------------------------------------------------------------------------------------------
# Deduplication over the tables
# --------------------------------------------------------------------------------------------


@dataclass
class DedupInputs:
    """Everything a dedup run reads, in row order (shard, image_id).

    Attributes:
        frame: image_id, shard, source_uri, width, height, ingested_at, one cluster column per
            clustering (``c0``..), of every filtered image with all assignments.
        x: (n, d) float32 embeddings aligned with ``frame``.
        model_id: The embedding model.
        versions: Centroid version per clustering.
        pending: Filtered images not deduplicated in this run (assignments missing or made
            with other centroids): image_id, shard, why.
    """

    frame: pl.DataFrame
    x: np.ndarray
    model_id: str
    versions: list[str]
    pending: pl.DataFrame


def load_inputs(store: DeltaStore, n_clusterings: int = N_CLUSTERINGS) -> DedupInputs:
    """Join filtered images, embeddings, ingest metadata and every clustering's assignments.

    Raises:
        ValueError: If a clustering has no centroids, or the embeddings mix models.
    """
    versions = []
    for c in range(n_clusterings):
        cent = load_centroids(store, c)
        if cent is None:
            msg = f"cluster_centroids_{c} was never materialized; train the centroids first"
            raise ValueError(msg)
        versions.append(cent.version)
    emb = filtered_embeddings(store)
    raw = store.scan(RAW_IMAGES).select(
        "image_id", "shard", "source_uri", "width", "height", "ingested_at"
    )
    frame = emb.lazy().join(raw, on=["image_id", "shard"], how="left")
    missing_exprs = []
    for c in range(n_clusterings):
        a = (
            store.scan(assignments_spec(c))
            .select("image_id", "shard", pl.col("cluster").alias(f"c{c}"), "centroids_version")
            .rename({"centroids_version": f"v{c}"})
        )
        frame = frame.join(a, on=["image_id", "shard"], how="left")
        missing_exprs.append(
            pl.when(pl.col(f"c{c}").is_null())
            .then(pl.lit(f"no cluster_assignments_{c}"))
            .when(pl.col(f"v{c}") != versions[c])
            .then(pl.lit(f"cluster_assignments_{c} made with older centroids"))
        )
    # joins do not keep row order (polars' maintain_order defaults to none): make it canonical,
    # the keep policy's last tie-break and the incremental state's `row` depend on it
    frame = frame.with_columns(why=pl.coalesce(missing_exprs)).sort("shard", "image_id").collect()
    pending = frame.filter(pl.col("why").is_not_null()).select("image_id", "shard", "why")
    ready = frame.filter(pl.col("why").is_null()).drop(
        "why", *[f"v{c}" for c in range(n_clusterings)]
    )
    model_id = single_model(ready) if ready.height else (single_model(emb) if emb.height else "")
    x = embedding_matrix(ready["embedding"]) if ready.height else np.zeros((0, 0), np.float32)
    return DedupInputs(ready.drop("embedding", "model_id"), x, model_id, versions, pending)


@dataclass
class DedupPlan:
    """Full, incremental or current (nothing to do), and why.

    Attributes:
        mode: ``full``, ``incremental`` or ``current`` (the committed tables already cover
            every ready image with these parameters: nothing is written).
        reason: One sentence.
        old: The committed rows (deduplicated_images) when incremental or current.
        old_pairs: The committed duplicate_pairs when incremental or current.
        commit: The last committed dedup run (None before the first).
        torn: Outputs written after the last commit by a run that did not finish; they are
            rewritten from the committed state.
    """

    mode: str
    reason: str
    old: pl.DataFrame | None = None
    old_pairs: pl.DataFrame | None = None
    commit: Commit | None = None
    torn: list[str] = field(default_factory=list)


#: Stage name of dedup's commit records (:mod:`curation_assets.lib.commits`).
DEDUP_STAGE = "dedup"
DEDUP_OUTPUTS = (DUPLICATE_PAIRS, DEDUPLICATED_IMAGES, DEDUP_RUNS)


def plan_dedup(
    store: DeltaStore,
    inputs: DedupInputs,
    *,
    tau: float,
    policy: Sequence[str],
    force_full: bool = False,
) -> DedupPlan:
    """Decide whether the committed run can be extended incrementally (see the module doc).

    The previous state is read as of the versions the last commit recorded, so rows written
    by a run killed before its commit are ignored (and overwritten by this run).
    """
    commit = last_commit(store, DEDUP_STAGE)
    torn = torn_outputs(store, commit)
    note = (
        f" (recovering: {', '.join(torn)} were written after the last commit by a run that "
        "did not finish)"
        if torn
        else ""
    )
    if force_full:
        return DedupPlan("full", "full recompute asked for (config mode=full)" + note, torn=torn)
    if commit is None:
        return DedupPlan("full", "first run", torn=torn)
    last = commit.config
    if not commit.summary.get("images"):
        return DedupPlan("full", "the previous run covered no image" + note, commit=commit)
    checks = [
        (last["tau"] == tau, f"tau changed {last['tau']} → {tau}"),
        (last["policy"] == ",".join(policy), f"policy changed {last['policy']} → {policy}"),
        (last["model_id"] == inputs.model_id, "embedding model changed"),
        (
            last["centroids_versions"] == ",".join(inputs.versions),
            "centroids were retrained since the last run",
        ),
    ]
    for ok, why in checks:
        if not ok:
            return DedupPlan("full", why + note, commit=commit, torn=torn)
    old = store.read(DEDUPLICATED_IMAGES, version=commit.outputs[DEDUPLICATED_IMAGES.name]).sort(
        "row"
    )
    keys = ["image_id", "shard"]
    gone = old.join(inputs.frame.select(keys), on=keys, how="anti")
    if gone.height:
        return DedupPlan(
            "full",
            f"{gone.height} previously deduplicated images left the filtered set "
            f"(e.g. shard {gone['shard'][0]} was re-filtered); pairs cannot be removed "
            "incrementally" + note,
            commit=commit,
            torn=torn,
        )
    old_pairs = store.read(DUPLICATE_PAIRS, version=commit.outputs[DUPLICATE_PAIRS.name])
    new = inputs.frame.height - old.height
    if new == 0 and not torn:
        return DedupPlan(
            "current",
            f"no new image since the last run ({old.height} images): nothing to do",
            old,
            old_pairs,
            commit,
        )
    return DedupPlan(
        "incremental",
        f"extends the last run ({old.height} images) by {new}" + note,
        old,
        old_pairs,
        commit,
        torn,
    )


def _pairs_from_table(df: pl.DataFrame, row_of: dict[str, int]) -> Pairs:
    if df.is_empty():
        p = Pairs.empty()
        p.found_by = np.empty(0, np.int32)
        return p
    a = np.fromiter((row_of[s] for s in df["image_id_a"]), np.int64, df.height)
    b = np.fromiter((row_of[s] for s in df["image_id_b"]), np.int64, df.height)
    i, j = np.minimum(a, b), np.maximum(a, b)
    order = np.lexsort((j, i))
    return Pairs(
        i[order],
        j[order],
        df["similarity"].to_numpy().astype(np.float32)[order],
        df["found_by"].to_numpy().astype(np.int32)[order],
    )


def _meta(frame: pl.DataFrame) -> ImageMeta:
    return ImageMeta.of(frame.select("width", "height", "ingested_at"))


def _assignment_arrays(frame: pl.DataFrame, n_clusterings: int) -> list[np.ndarray]:
    return [frame[f"c{c}"].to_numpy().astype(np.int64) for c in range(n_clusterings)]


@dataclass
class DedupOutcome:
    """A finished run: the tables to write and what to report.

    Attributes:
        images: deduplicated_images rows.
        pairs: duplicate_pairs rows.
        run: The dedup_runs row.
        stats: :func:`~curation_assets.lib.dedup.dedup` statistics.
        recall: :func:`~curation_assets.lib.dedup.recall_by_num_clusterings` report.
        plan: Full, incremental or current, and why.
        pending: Filtered images left for a later run, with why.
        frame: The inputs frame in row order (for thumbnails and evaluation).
        input_versions: Delta version of every input table when the run started.
        tau: The cosine threshold used.
    """

    images: pl.DataFrame
    pairs: pl.DataFrame
    run: pl.DataFrame | None
    stats: dict[str, Any]
    recall: dict[str, Any]
    plan: DedupPlan
    pending: pl.DataFrame
    frame: pl.DataFrame = field(repr=False)
    input_versions: dict[str, int | None] = field(default_factory=dict)
    tau: float = float("nan")


def run_dedup(
    store: DeltaStore,
    *,
    tau: float | None,
    policy: Sequence[str],
    force_full: bool = False,
    n_clusterings: int = N_CLUSTERINGS,
    recall_sample: int = 10_000,
    seed: int = 0,
    block: int = 2048,
) -> DedupOutcome:
    """Deduplicate every filtered image that has all assignments; write nothing.

    Args:
        store: Where the inputs live.
        tau: Cosine threshold; None = :func:`~curation_assets.lib.dedup.calibrated_tau` of the
            embedding model.
        policy: Keep policy criteria in order.
        force_full: Recompute everything even when an incremental run is possible.
        n_clusterings: Clusterings to read.
        recall_sample: Query rows of the exhaustive recall measurement (≤ 10 000).
        seed: Seeds the recall sample.
        block: Tile edge of the within-cluster search.

    Returns:
        A :class:`DedupOutcome`; :func:`write_dedup` stores it. When the plan is ``current``
        (nothing new since the last commit) it holds the committed tables and figures and
        ``run`` is None.

    Memory: the embeddings of all covered images (n · d · 4 bytes, twice during the
    incremental concatenation) + the pairs; the within-cluster search itself is blockwise.
    """
    from curation_assets.lib.dedup import calibrated_tau

    read_versions = input_versions(store, _input_tables(n_clusterings))
    inputs = load_inputs(store, n_clusterings)
    if tau is None:
        tau = calibrated_tau(inputs.model_id) if inputs.model_id else float("nan")
    policy = tuple(policy)
    plan = plan_dedup(store, inputs, tau=tau, policy=policy, force_full=force_full)
    frame, x = inputs.frame, inputs.x
    if plan.mode == "current" and plan.old is not None and plan.old_pairs is not None:
        assert plan.commit is not None
        summary = plan.commit.summary
        stats = {**summary["stats"], "new_rows": 0, "previously_kept_now_removed": 0}
        return DedupOutcome(
            plan.old,
            plan.old_pairs,
            None,
            stats,
            summary["recall"],
            plan,
            inputs.pending,
            frame,
            read_versions,
            float(plan.commit.config["tau"]),
        )
    if frame.height == 0:
        result = DedupResult(
            np.empty(0, dtype=str),
            np.empty(0, bool),
            np.empty(0, np.int64),
            np.empty(0, np.float32),
            np.empty(0, np.int64),
            np.empty(0, np.int64),
            Pairs.empty(),
            {"n": 0, "new_rows": 0, "seconds": 0.0},
        )
    elif plan.mode == "incremental" and plan.old is not None and plan.old_pairs is not None:
        result, frame, x = _incremental(
            plan.old, plan.old_pairs, frame, x, tau, policy, n_clusterings, block
        )
    else:
        state = DedupState.initial(
            x,
            frame["image_id"].to_numpy(),
            _meta(frame),
            _assignment_arrays(frame, n_clusterings),
            tau,
            policy,
            block=block,
        )
        result = state.result
    stats = dict(result.stats)
    stats.setdefault("new_rows", frame.height if plan.mode == "full" else 0)
    if frame.height >= 2:
        recall = recall_by_num_clusterings(
            x,
            _assignment_arrays(frame, n_clusterings),
            tau,
            sample_size=min(recall_sample, frame.height),
            seed=seed,
            block=block,
        )
    else:
        recall = {"recall": [], "true_pairs": 0, "sample_size": frame.height}
    if not recall["true_pairs"]:  # no pair to find: recall is undefined, not NaN
        recall["recall"] = []
    images = _images_frame(result, frame)
    pairs = _pairs_frame(result)
    run = pl.DataFrame(
        {
            "run_at": [datetime.now(UTC)],
            "mode": plan.mode,
            "reason": plan.reason,
            "tau": float(tau),
            "policy": ",".join(policy),
            "centroids_versions": ",".join(inputs.versions),
            "model_id": inputs.model_id,
            "images": frame.height,
            "new_images": int(stats["new_rows"]),
            "pairs": pairs.height,
            "removed": int((~images["kept"]).sum()),
            "previously_kept_now_removed": int(stats.get("previously_kept_now_removed", 0)),
            "recall": json.dumps([round(r, 4) for r in recall["recall"]]),
            "seconds": float(stats.get("seconds", 0.0)),
        },
        schema=DEDUP_RUNS.schema,
    )
    return DedupOutcome(
        images, pairs, run, stats, recall, plan, inputs.pending, frame, read_versions, float(tau)
    )


def _input_tables(n_clusterings: int) -> list[str]:
    return [
        FILTERED_IMAGES.name,
        IMAGE_EMBEDDINGS.name,
        RAW_IMAGES.name,
        *(centroids_spec(c).name for c in range(n_clusterings)),
        *(assignments_spec(c).name for c in range(n_clusterings)),
    ]


#: Statistics a commit keeps so that a run with nothing to do reports the same figures.
_COMMITTED_STATS = (
    "components_with_duplicates",
    "largest_component",
    "removed_below_tau",
    "removed",
    "found_by_count",
    "seconds",
)


def write_dedup(store: DeltaStore, outcome: DedupOutcome) -> dict[str, int]:
    """Write a run's three tables, then commit them (nothing when the plan is ``current``).

    Order: ``duplicate_pairs``, ``deduplicated_images``, ``dedup_runs`` (the committed log plus
    this run's row, as one overwrite), then the ``stage_commits`` row. A kill before the
    commit leaves the committed versions authoritative: the next run reads its state as of
    them and rewrites all three tables (:func:`plan_dedup`).

    Returns:
        Table → Delta version of the committed outputs.
    """
    plan = outcome.plan
    if plan.mode == "current" or outcome.run is None:
        assert plan.commit is not None
        return plan.commit.outputs
    log = (
        store.read(DEDUP_RUNS, version=plan.commit.outputs[DEDUP_RUNS.name])
        if plan.commit is not None
        else DEDUP_RUNS.empty()
    )
    outputs = {
        DUPLICATE_PAIRS.name: store.replace_table(DUPLICATE_PAIRS, outcome.pairs),
        DEDUPLICATED_IMAGES.name: store.replace_table(DEDUPLICATED_IMAGES, outcome.images),
        DEDUP_RUNS.name: store.replace_table(
            DEDUP_RUNS, pl.concat([DEDUP_RUNS.conform(log), outcome.run])
        ),
    }
    run = outcome.run.row(0, named=True)
    stats = outcome.stats
    record_commit(
        store,
        DEDUP_STAGE,
        inputs=outcome.input_versions,
        outputs=outputs,
        config={k: run[k] for k in ("tau", "policy", "model_id", "centroids_versions")},
        summary={
            "images": int(run["images"]),
            "mode": run["mode"],
            "stats": {k: stats[k] for k in _COMMITTED_STATS if stats.get(k) is not None},
            "recall": outcome.recall,
        },
    )
    return outputs


def _incremental(
    old: pl.DataFrame,
    old_pairs: pl.DataFrame,
    frame: pl.DataFrame,
    x: np.ndarray,
    tau: float,
    policy: tuple[str, ...],
    n_clusterings: int,
    block: int,
) -> tuple[DedupResult, pl.DataFrame, np.ndarray]:
    """Rebuild the previous state from the tables and add the images it did not cover."""
    t0 = time.perf_counter()
    pos = frame.with_row_index("_pos")
    old_rows = old.select("image_id", "shard", "row").join(
        pos, on=["image_id", "shard"], how="inner"
    )
    old_rows = old_rows.sort("row")
    new_rows = pos.join(old.select("image_id", "shard"), on=["image_id", "shard"], how="anti").sort(
        "_pos"
    )
    old_idx = old_rows["_pos"].to_numpy()
    new_idx = new_rows["_pos"].to_numpy()
    old_frame = old_rows.drop("_pos", "row")
    ids = old_frame["image_id"].to_numpy()
    row_of = {s: r for r, s in enumerate(ids.tolist())}
    prev = old  # plan_dedup reads it sorted by row
    kept = prev["kept"].to_numpy()
    dup_of = np.array(
        [-1 if d is None else row_of[d] for d in prev["duplicate_of"].to_list()], np.int64
    )
    sim = prev["similarity"].fill_null(np.nan).to_numpy().astype(np.float32)
    pairs = _pairs_from_table(old_pairs, row_of)
    pairs_bits = pairs.found_by if pairs.found_by is not None else np.empty(0, np.int32)
    per = [int(((pairs_bits >> c) & 1).sum()) for c in range(n_clusterings)]
    n_old = old_frame.height
    result = DedupResult(
        ids,
        kept,
        dup_of,
        sim,
        np.zeros(n_old, np.int64),
        np.ones(n_old, np.int64),
        pairs,
        {"pairs_per_clustering": per},
    )
    x_old = x[old_idx]
    state = DedupState(
        [x_old],
        ids,
        _meta(old_frame),
        [a[:, None] for a in _assignment_arrays(old_frame, n_clusterings)],
        tau,
        policy,
        result,
    )
    new_frame = new_rows.drop("_pos")
    new_state = dedup_incremental(
        state,
        x[new_idx],
        new_frame["image_id"].to_numpy(),
        _meta(new_frame),
        _assignment_arrays(new_frame, n_clusterings),
        tau,
        policy,
        block=block,
    )
    logger.info("incremental dedup: state rebuilt and extended in %.1fs", time.perf_counter() - t0)
    order = np.concatenate([old_idx, new_idx])
    return new_state.result, pl.concat([old_frame, new_frame]), x[order]


def _images_frame(result: DedupResult, frame: pl.DataFrame) -> pl.DataFrame:
    base = result.images_frame()
    n = base.height
    kept_id = result.image_id[np.where(result.kept, np.arange(n), result.duplicate_of)]
    return DEDUPLICATED_IMAGES.conform(
        base.with_columns(
            shard=frame["shard"],
            component_id=pl.Series(kept_id.astype(str)),
            row=pl.Series(np.arange(n, dtype=np.int64)),
        )
    )


def _pairs_frame(result: DedupResult) -> pl.DataFrame:
    p = result.pairs
    if len(p) == 0:
        return DUPLICATE_PAIRS.empty()
    ids = result.image_id
    a, b = ids[p.i].astype(str), ids[p.j].astype(str)
    swap = a > b
    lo, hi = np.where(swap, b, a), np.where(swap, a, b)
    bits = p.found_by if p.found_by is not None else np.zeros(len(p), np.int32)
    width = int(bits.max()).bit_length() if len(bits) else 0
    names = [",".join(str(c) for c in range(width) if (v >> c) & 1) for v in bits.tolist()]
    return pl.DataFrame(
        {
            "image_id_a": lo,
            "image_id_b": hi,
            "similarity": p.sim.astype(np.float32),
            "found_by": bits.astype(np.int32),
            "clusterings": names,
        },
        schema=DUPLICATE_PAIRS.schema,
    ).sort("image_id_a", "image_id_b")


# --------------------------------------------------------------------------------------------
# Eyes on results
# --------------------------------------------------------------------------------------------


def pick_groups(images: pl.DataFrame, n_groups: int = 4) -> list[str]:
    """Components worth looking at: half the most borderline (lowest similarity), half largest.

    Args:
        images: deduplicated_images rows.
        n_groups: Groups to return at most.

    Returns:
        component_id values, most borderline first.
    """
    groups = (
        images.filter(pl.col("component_size") > 1)
        .group_by("component_id")
        .agg(pl.min("similarity").alias("low"), pl.first("component_size").alias("size"))
    )
    if groups.is_empty() or n_groups < 1:
        return []
    borderline = groups.sort("low", "component_id").head((n_groups + 1) // 2)["component_id"]
    largest = groups.filter(~pl.col("component_id").is_in(borderline.implode()))
    largest = largest.sort(["size", "component_id"], descending=[True, False])
    return [*borderline.to_list(), *largest.head(n_groups - borderline.len())["component_id"]]


def duplicate_groups_markdown(
    images: pl.DataFrame,
    uris: pl.DataFrame,
    read: Any,
    *,
    n_groups: int = 4,
    max_members: int = 5,
    px: int = 80,
) -> str:
    """Thumbnails of a few near-duplicate groups as markdown (inline base64 JPEG).

    Each group is a table: the kept image first, then up to ``max_members`` removed members
    (lowest similarity first), with the similarity to the kept image under each thumbnail.

    Args:
        images: deduplicated_images rows.
        uris: image_id, source_uri (e.g. raw_images).
        read: ``source_uri -> bytes``.
        n_groups: Groups shown (see :func:`pick_groups`).
        max_members: Removed members shown per group.
        px: Longest side of a thumbnail.

    Returns:
        Markdown; ``_no near-duplicate groups_`` when there are none. An unreadable image is
        shown as its error, not skipped.
    """
    from curation_assets.lib.images import make_thumbnail

    chosen = pick_groups(images, n_groups)
    if not chosen:
        return "_no near-duplicate groups_"
    rows = images.filter(pl.col("component_id").is_in(chosen)).join(
        uris.unique("image_id"), on="image_id", how="left"
    )
    out = []
    for comp in chosen:
        g = rows.filter(pl.col("component_id") == comp).sort(
            pl.col("kept").not_(), pl.col("similarity"), "image_id"
        )
        members = g.head(max_members + 1)
        cells, captions = [], []
        for rec in members.iter_rows(named=True):
            try:
                thumb = make_thumbnail(read(rec["source_uri"]), px, quality=70)
                cells.append(
                    f"![{rec['image_id'][:8]}](data:image/jpeg;base64,"
                    f"{base64.b64encode(thumb).decode('ascii')})"
                )
            except Exception as exc:  # a missing file must not hide the other thumbnails
                cells.append(f"unreadable: {type(exc).__name__}")
            captions.append("kept" if rec["kept"] else f"{rec['similarity']:.3f}")
        size = int(g["component_size"][0])
        more = size - members.height
        out.append(
            f"**{size} images** (kept `{comp[:12]}`{f', {more} more not shown' if more else ''})"
        )
        out.append("| " + " | ".join(cells) + " |")
        out.append("|" + "---|" * len(cells))
        out.append("| " + " | ".join(captions) + " |")
        out.append("")
    return "\n".join(out)
