"""Writing a dedup run: its tables, then its commit (:func:`write_dedup`).

Kept apart from :mod:`.run` (which plans, searches and merges, and writes only
``dedup_members``) so that what a run computes and how it lands are read separately.
"""

from typing import TYPE_CHECKING

from curation_assets.lib.commits import record_commit
from curation_assets.lib.compaction import drop_changes, fold
from curation_assets.lib.dedup import io
from curation_assets.lib.dedup.decisions import write_decisions
from curation_assets.lib.dedup.io import DEDUP_STAGE
from curation_assets.lib.dedup.localgraph import write_local_graph
from curation_assets.lib.dedup.plan import committed_version
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import (
    CANDIDATE_PAIRS,
    DEDUP_MEMBERS,
    DEDUP_RUNS,
    DEDUPLICATED_IMAGES,
    DUPLICATE_MEMBERS,
    DUPLICATE_PAIRS,
    DUPLICATE_VECTORS,
    VERIFIED_PAIRS,
)

if TYPE_CHECKING:
    from curation_assets.lib.dedup.run import DedupOutcome


#: Statistics a commit keeps so that a run with nothing to do reports the same figures.
_COMMITTED_STATS = (
    "images",
    "kept",
    "removed",
    "pairs",
    "candidate_pairs",
    "promoted_pairs",
    "verified_band_pairs",
    "components_with_duplicates",
    "largest_component",
    "removed_below_tau",
    "found_by_count",
    "pairs_per_clustering",
    "units_total",
    "buckets",
    "seconds",
)


def write_dedup(store: DeltaStore, outcome: "DedupOutcome") -> dict[str, int]:
    """Write a run's tables, then commit them (nothing when the plan is ``current``).

    Order: the ``deduplicated_images`` shards to rewrite (new, redone or torn: commits of
    whole shards), the changed decisions of other shards (one append: merge-on-read,
    :mod:`~curation_assets.lib.revisions`; folded into their shards once they reach a share of
    the table), ``duplicate_pairs``, ``candidate_pairs`` and ``duplicate_members`` (whole:
    ∝ pairs, no vector; an update's untouched rows streamed from the committed files:
    :mod:`.localgraph`),
    ``duplicate_vectors`` (appended: the images new to the graph, compacted once half its rows
    are stale: :func:`.io.write_vectors`; whole in a full run),
    ``dedup_runs``, then the ``stage_commits`` row. A kill before the commit leaves the
    committed versions authoritative: the next run reads the graph as of them and rewrites the
    shards written since (:func:`~curation_assets.lib.dedup.plan.plan_dedup`).

    Returns:
        Table → Delta version of the committed outputs.
    """
    plan = outcome.plan
    if plan.mode == "current" or outcome.run is None:
        assert plan.commit is not None
        if not outcome.recommit:
            return plan.commit.outputs
        outputs = {
            **plan.commit.outputs,
            DEDUP_MEMBERS.name: io.table_version(store, DEDUP_MEMBERS),
        }
        record_commit(
            store,
            DEDUP_STAGE,
            inputs=outcome.input_versions,
            outputs=outputs,
            config=plan.commit.config,
            summary=plan.commit.summary,
        )
        return outputs
    # covered shards whose decisions changed: their changed rows are appended (merge-on-read),
    # but a shard a killed run wrote since the commit is rewritten with its committed images
    again, patch = outcome.written()
    write_decisions(
        store,
        [s for s in outcome.write_shards if s not in patch],
        outcome.ready,
        outcome.members,
        old=again & outcome.torn,
        committed=committed_version(plan, DEDUPLICATED_IMAGES),
    )
    store.append_changes(DEDUPLICATED_IMAGES, outcome.patch_rows(patch))
    if plan.mode == "full":
        drop_changes(store, DEDUPLICATED_IMAGES)  # every shard was rewritten: all superseded
    else:
        fold(store, DEDUPLICATED_IMAGES)
    committed = plan.commit.outputs if plan.commit is not None else None
    merged = outcome.merged
    graph = (
        write_local_graph(
            store, merged.local, merged.pairs, merged.band, merged.members, outcome.budget
        )
        if merged.local is not None
        else {
            DUPLICATE_PAIRS.name: store.replace_table(DUPLICATE_PAIRS, merged.pairs),
            CANDIDATE_PAIRS.name: store.replace_table(CANDIDATE_PAIRS, merged.band),
            DUPLICATE_MEMBERS.name: store.replace_table(DUPLICATE_MEMBERS, merged.members),
        }
    )
    outputs = {
        **graph,
        **(
            {VERIFIED_PAIRS.name: store.replace_table(VERIFIED_PAIRS, outcome.verdicts)}
            if outcome.verdicts is not None
            else {}
        ),
        DUPLICATE_VECTORS.name: io.write_vectors(
            store,
            merged.vectors,
            full=plan.mode == "full",
            outputs=committed,
            live=merged.members["image_id"],  # with the committed members: the graph's
            live_count=int(outcome.stats.get("graph_members", merged.members.height)),
        ),
        DEDUPLICATED_IMAGES.name: io.table_version(store, DEDUPLICATED_IMAGES),
        DEDUP_MEMBERS.name: io.table_version(store, DEDUP_MEMBERS),
        DEDUP_RUNS.name: io.write_run_log(store, outcome.run, committed),
    }
    run = outcome.run.row(0, named=True)
    stats = outcome.stats
    assert outcome.layout is not None
    record_commit(
        store,
        DEDUP_STAGE,
        inputs=outcome.input_versions,
        outputs=outputs,
        config={
            **{k: run[k] for k in ("tau", "tau_min", "policy", "model_id", "centroids_versions")},
            "verify": outcome.verify_key,
            "layout": outcome.layout.key(),
        },
        summary={
            "images": int(run["images"]),
            "mode": run["mode"],
            "stats": {k: stats[k] for k in _COMMITTED_STATS if stats.get(k) is not None},
            "recall": {k: v for k, v in outcome.recall.items() if k != "sample"},
        },
    )
    return outputs
