"""Dedup stage: near-duplicate removal within k-means clusters (DALL·E 2 pre-training mitigations).

The method, as in the DALL·E 2 paper: for each of several independent clusterings
(:mod:`curation_assets.lib.cluster`), find all pairs of images in the same cluster whose cosine
similarity is ≥ τ (blocked matrix products inside each cluster, never an N×N matrix); take the
union of the pairs of all clusterings; the connected components of that pair graph are groups
of near-duplicates; keep one image per component by a deterministic policy. A pair cut apart by
one clustering's boundary is usually found by another: pair recall against exhaustive search
is measured on a sample of rows.

Modules, in the order data flows through them:

* :mod:`~curation_assets.lib.dedup.tau`: the calibrated threshold τ per embedding model.
* :mod:`~curation_assets.lib.dedup.pairs`: pair search inside clusters, union of clusterings.
* :mod:`~curation_assets.lib.dedup.keep`: connected components and the keep policy.
* :mod:`~curation_assets.lib.dedup.full` / :mod:`~curation_assets.lib.dedup.incremental`:
  a whole deduplication, or new rows added to a previous one (same result).
  (the in-memory library: one matrix in, decisions out; ``curation bench dedup`` measures it).
* :mod:`~curation_assets.lib.dedup.recall`: exhaustive ground truth and pair recall.
* :mod:`~curation_assets.lib.dedup.io`: the stage's inputs and outputs.
* :mod:`~curation_assets.lib.dedup.plan`: full, incremental or current, and why (Delta log only).
* :mod:`~curation_assets.lib.dedup.layout`: the cluster-bucketed layout ``dedup_members``.
* :mod:`~curation_assets.lib.dedup.units`: one work unit (clustering, bucket) of the search.
* :mod:`~curation_assets.lib.dedup.newrows`: an incremental run's search in one pass: each row
  read once, against the new rows of its clusters.
* :mod:`~curation_assets.lib.dedup.merge`: union of pairs, components, keep policy (∝ pairs).
* :mod:`~curation_assets.lib.dedup.run`: a run over the tables, written and committed.
* :mod:`~curation_assets.lib.dedup.sampling`: pair recall on a budget, pooled over runs.
* :mod:`~curation_assets.lib.dedup.report`: the figures, checks and thumbnails the assets show.
* :mod:`~curation_assets.lib.dedup.sweep`: what each τ would remove, from the stored pairs.
* :mod:`~curation_assets.lib.dedup.verify`: is a candidate pair the same photo? ORB keypoints +
  RANSAC + aligned agreement (imports OpenCV: not re-exported here);
  :mod:`~curation_assets.lib.dedup.verified`: the optional band verification of a run.
"""

from curation_assets.lib.dedup.full import DedupResult, dedup
from curation_assets.lib.dedup.incremental import DedupState, dedup_incremental
from curation_assets.lib.dedup.io import DEDUP_OUTPUTS, DEDUP_STAGE
from curation_assets.lib.dedup.keep import (
    DEFAULT_POLICY,
    POLICY_CRITERIA,
    ImageMeta,
    KeepChoice,
    choose_kept,
    connected_components,
)
from curation_assets.lib.dedup.layout import Layout, choose_layout
from curation_assets.lib.dedup.pairs import Pairs, pairs_within_clusters, union_pairs
from curation_assets.lib.dedup.plan import DedupPlan, plan_dedup
from curation_assets.lib.dedup.recall import (
    exhaustive_pairs,
    pair_recall,
    recall_by_num_clusterings,
    recall_curve,
)
from curation_assets.lib.dedup.report import (
    dedup_checks,
    dedup_figures,
    duplicate_groups_markdown,
    found_by_counts,
    group_thumbnails,
    pair_thumbnails,
    pick_groups,
    recall_chart,
    sweep_markdown,
)
from curation_assets.lib.dedup.run import DedupOutcome, run_dedup
from curation_assets.lib.dedup.stage import run_dedup_stage
from curation_assets.lib.dedup.sweep import (
    committed_stored_pairs,
    committed_sweep,
    pairs_at,
    read_truth,
    sweep_grid,
    tau_sweep,
)
from curation_assets.lib.dedup.tau import (
    DEFAULT_TAU,
    TAU_EFFICIENTNET_LITE0,
    TAU_OPEN_CLIP_VIT_B_32,
    calibrated_tau,
)
from curation_assets.lib.dedup.write import write_dedup

__all__ = [
    "DEDUP_OUTPUTS",
    "DEDUP_STAGE",
    "DEFAULT_POLICY",
    "DEFAULT_TAU",
    "POLICY_CRITERIA",
    "TAU_EFFICIENTNET_LITE0",
    "TAU_OPEN_CLIP_VIT_B_32",
    "DedupOutcome",
    "DedupPlan",
    "DedupResult",
    "DedupState",
    "ImageMeta",
    "KeepChoice",
    "Layout",
    "Pairs",
    "calibrated_tau",
    "choose_kept",
    "choose_layout",
    "connected_components",
    "dedup",
    "dedup_checks",
    "dedup_figures",
    "dedup_incremental",
    "duplicate_groups_markdown",
    "exhaustive_pairs",
    "found_by_counts",
    "group_thumbnails",
    "pair_recall",
    "pairs_within_clusters",
    "pick_groups",
    "plan_dedup",
    "recall_by_num_clusterings",
    "recall_chart",
    "recall_curve",
    "run_dedup",
    "run_dedup_stage",
    "union_pairs",
    "write_dedup",
    "pair_thumbnails",
    "sweep_markdown",
    "pairs_at",
    "committed_stored_pairs",
    "committed_sweep",
    "read_truth",
    "sweep_grid",
    "tau_sweep",
]
