"""A dedup run over the Delta tables: plan, deduplicate, measure recall, write and commit.

:func:`run_dedup` reads the inputs (:mod:`~curation_assets.lib.dedup.io`), asks
:func:`~curation_assets.lib.dedup.plan.plan_dedup` whether the run is full, incremental or
current, runs :func:`~curation_assets.lib.dedup.full.dedup` or
:func:`~curation_assets.lib.dedup.incremental.dedup_incremental` and measures pair recall;
:func:`write_dedup` writes the three tables and commits them. An incremental run gives the
same decisions, similarities and pairs as a full run on the same images (tested).
"""

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl

from curation_assets.lib.commits import input_versions, record_commit
from curation_assets.lib.dedup.full import DedupResult
from curation_assets.lib.dedup.incremental import DedupState, dedup_incremental
from curation_assets.lib.dedup.io import (
    DEDUP_STAGE,
    assignment_arrays,
    frame_meta,
    images_frame,
    input_tables,
    load_inputs,
    pairs_frame,
    pairs_from_table,
)
from curation_assets.lib.dedup.pairs import Pairs
from curation_assets.lib.dedup.plan import DedupPlan, plan_dedup
from curation_assets.lib.dedup.recall import recall_by_num_clusterings
from curation_assets.lib.dedup.tau import calibrated_tau
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import (
    DEDUP_RUNS,
    DEDUPLICATED_IMAGES,
    DUPLICATE_PAIRS,
    N_CLUSTERINGS,
)

logger = logging.getLogger(__name__)


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
    read_versions = input_versions(store, input_tables(n_clusterings))
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
            frame_meta(frame),
            assignment_arrays(frame, n_clusterings),
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
            assignment_arrays(frame, n_clusterings),
            tau,
            sample_size=min(recall_sample, frame.height),
            seed=seed,
            block=block,
        )
    else:
        recall = {"recall": [], "true_pairs": 0, "sample_size": frame.height}
    if not recall["true_pairs"]:  # no pair to find: recall is undefined, not NaN
        recall["recall"] = []
    images = images_frame(result, frame)
    pairs = pairs_frame(result)
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
    pairs = pairs_from_table(old_pairs, row_of)
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
        frame_meta(old_frame),
        [a[:, None] for a in assignment_arrays(old_frame, n_clusterings)],
        tau,
        policy,
        result,
    )
    new_frame = new_rows.drop("_pos")
    new_state = dedup_incremental(
        state,
        x[new_idx],
        new_frame["image_id"].to_numpy(),
        frame_meta(new_frame),
        assignment_arrays(new_frame, n_clusterings),
        tau,
        policy,
        block=block,
    )
    logger.info("incremental dedup: state rebuilt and extended in %.1fs", time.perf_counter() - t0)
    order = np.concatenate([old_idx, new_idx])
    return new_state.result, pl.concat([old_frame, new_frame]), x[order]
