"""Full, incremental or current: what a dedup run has to do, and why — decided from the Delta log.

Incremental rule (:func:`plan_dedup`): a run extends the last commit when it used the same τ,
keep policy, embedding model, centroid versions and layout. The shards to redo are those whose
inputs (filtered_images, image_embeddings, raw_images, any cluster_assignments) changed since
the versions that commit recorded — found from the Delta log alone
(:meth:`~curation_assets.lib.storage.DeltaStore.changed_shards`), so planning costs the number
of files, not of images. A redone shard's old rows and pairs are dropped and it is searched
again: new shards, re-filtered shards and shards that lost their assignments are all handled
without a full recompute. Anything else (a retrain of the centroids, a new τ, policy or model, a
full run that did not finish) makes it a full run, and the reason is recorded. When nothing
changed the run is ``current``: nothing is written.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

from curation_assets.lib.commits import Commit, last_commit, torn_outputs
from curation_assets.lib.dedup.io import DEDUP_STAGE, input_tables
from curation_assets.lib.dedup.layout import Layout
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import DEDUP_MEMBERS, DEDUPLICATED_IMAGES, FILTERED_IMAGES


@dataclass
class DedupPlan:
    """Full, incremental or current (nothing to do), and why.

    Attributes:
        mode: ``full``, ``incremental`` or ``current``.
        reason: One sentence.
        commit: The last committed dedup run (None before the first).
        redo: Shards to lay out and search again (every shard with filtered images when full).
        covered: Shards the committed state covers (empty when full).
        layout: The committed layout (incremental or current); a full run chooses its own.
        torn: Outputs written after the last commit by a run that did not finish.
    """

    mode: str
    reason: str
    commit: Commit | None = None
    redo: set[str] = field(default_factory=set)
    covered: set[str] = field(default_factory=set)
    layout: Layout | None = None
    torn: list[str] = field(default_factory=list)


def plan_dedup(
    store: DeltaStore,
    *,
    tau: float,
    policy: Sequence[str],
    model_id: str,
    versions: Sequence[str],
    force_full: bool = False,
) -> DedupPlan:
    """Decide whether the committed run can be extended (see the module doc).

    Reads only the Delta logs and the last ``stage_commits`` row.
    """
    commit = last_commit(store, DEDUP_STAGE)
    torn = torn_outputs(store, commit)
    every_shard = set(store.shard_files(FILTERED_IMAGES.name))
    note = (
        f" (recovering: {', '.join(torn)} were written after the last commit by a run that "
        "did not finish)"
        if torn
        else ""
    )

    def full(why: str) -> DedupPlan:
        return DedupPlan("full", why, commit, every_shard, torn=torn)

    if force_full:
        return full("full recompute asked for (config mode=full)" + note)
    if commit is None:
        return full("first run")
    last = commit.config
    checks = [
        (last.get("tau") == tau, f"tau changed {last.get('tau')} → {tau}"),
        (last.get("policy") == ",".join(policy), f"policy changed {last.get('policy')} → {policy}"),
        (last.get("model_id") == model_id, "embedding model changed"),
        (
            last.get("centroids_versions") == ",".join(versions),
            "centroids were retrained since the last run",
        ),
        ("layout" in last, "the last run predates the bucketed layout"),
    ]
    for ok, why in checks:
        if not ok:
            return full(why + note)
    if DEDUP_MEMBERS.name in torn and _reset_since(store, commit.outputs[DEDUP_MEMBERS.name]):
        return full(
            "a full run that did not finish was laying out dedup_members anew: it is redone"
        )
    redo: set[str] = set()
    for name in input_tables(len(versions)):
        if name.startswith("cluster_centroids_"):
            continue
        redo |= store.changed_shards(name, commit.inputs.get(name))
    covered = set(
        store.shard_files(DEDUPLICATED_IMAGES.name, commit.outputs[DEDUPLICATED_IMAGES.name])
    )
    layout = Layout.from_key(last["layout"])
    if not redo and not torn:
        return DedupPlan(
            "current",
            f"no input changed since the last run ({len(covered)} shards): nothing to do",
            commit,
            set(),
            covered,
            layout,
        )
    new = len(redo - covered)
    changed = len(redo & covered)
    return DedupPlan(
        "incremental",
        f"extends the last run ({len(covered)} shards): {new} new shards, {changed} changed" + note,
        commit,
        redo,
        covered,
        layout,
        torn,
    )


def _reset_since(store: DeltaStore, version: int) -> bool:
    """Whether ``dedup_members`` was overwritten whole (a full run's reset) after ``version``."""
    for entry in store.history(DEDUP_MEMBERS.name, since_version=version):
        params = entry.get("operationParameters") or {}
        if str(params.get("mode", "")).lower() == "overwrite" and not params.get("predicate"):
            return True
    return False
