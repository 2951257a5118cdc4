"""Full, incremental or current: what a dedup run has to do, and why — decided from the Delta log.

Incremental rule (:func:`plan_dedup`): a run extends the last commit when it used the same
keep policy, embedding model, centroid versions and layout, and the stored pair graph reaches
low enough: the commit stored every pair down to its floor τ_min, so any τ and τ_min at or
above that floor are served from it. A new τ with nothing else to do is a ``retune``: groups
and decisions are re-derived from the stored pairs, no vector is read. The shards to redo are
those whose inputs (filtered_images, image_embeddings, raw_images, any cluster_assignments)
changed since the versions that commit recorded — found from the Delta log alone
(:meth:`~curation_assets.lib.storage.DeltaStore.changed_shards`), so planning costs the number
of files, not of images. A redone shard's old rows and pairs are dropped and it is searched
again: new shards, re-filtered shards and shards that lost their assignments are all handled
without a full recompute. Anything else (a retrain of the centroids, a new policy or model, a
full run that did not finish, τ or τ_min below the stored floor) makes it a full run, and the
reason is recorded. When nothing changed the run is ``current``: nothing is written.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

from curation_assets.lib.commits import Commit, last_commit, torn_outputs
from curation_assets.lib.dedup.io import DEDUP_STAGE, input_tables
from curation_assets.lib.dedup.layout import LAYOUT_FORMAT, Layout
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import (
    DEDUP_MEMBERS,
    DEDUPLICATED_IMAGES,
    DUPLICATE_VECTORS,
    FILTERED_IMAGES,
    TableSpec,
)


@dataclass
class DedupPlan:
    """Full, incremental or current (nothing to do), and why.

    Attributes:
        mode: ``full``, ``incremental``, ``retune`` (only τ, τ_min or the band verification
            changed: re-decide from the stored pairs) or ``current``.
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
    tau_min: float | None = None,
    verify: str = "off",
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
    floor = float(last.get("tau_min", last.get("tau", 1.0)))  # before τ_min: the floor was τ
    tau_min = tau if tau_min is None else tau_min
    checks = [
        (
            tau >= floor,
            f"τ = {tau} is below the stored floor τ_min = {floor}: pairs under it were never "
            "stored, so every unit is searched again",
        ),
        (
            tau_min >= floor,
            f"τ_min lowered {floor} → {tau_min}: pairs under the stored floor are searched again",
        ),
        (last.get("policy") == ",".join(policy), f"policy changed {last.get('policy')} → {policy}"),
        (last.get("model_id") == model_id, "embedding model changed"),
        (
            last.get("centroids_versions") == ",".join(versions),
            "centroids were retrained since the last run",
        ),
        ("layout" in last, "the last run predates the bucketed layout"),
        (
            "layout" not in last or Layout.from_key(last["layout"]).format == LAYOUT_FORMAT,
            "the last run's layout predates each row carrying its cluster in every clustering "
            "(what the one-pass incremental search reads): the corpus is laid out anew",
        ),
        (
            DUPLICATE_VECTORS.name in commit.outputs,
            "the last run kept the pair graph's vectors in duplicate_members (now in "
            "duplicate_vectors, read by id): the graph is built anew",
        ),
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
    before = (last.get("tau"), last.get("tau_min", last.get("tau")), last.get("verify", "off"))
    retuned = before != (tau, tau_min, verify)
    tuning = f"τ {last.get('tau')} → {tau}, τ_min {floor} → {tau_min}"
    if before[2] != verify:
        tuning += ", band verification " + ("on" if verify != "off" else "off")
        if "off" not in (before[2], verify):
            tuning += " with new parameters"
    if not redo and not torn and retuned:
        return DedupPlan(
            "retune",
            f"{tuning}: groups and decisions re-derived from the stored pairs (no search)",
            commit,
            set(),
            covered,
            layout,
        )
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
        f"extends the last run ({len(covered)} shards): {new} new shards, {changed} changed"
        + (f"; {tuning} from the stored pairs" if retuned else "")
        + note,
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


def committed_version(plan: DedupPlan, spec: TableSpec) -> int | None:
    """The version of ``spec`` the plan's commit recorded (None when there is none)."""
    return None if plan.commit is None else plan.commit.outputs.get(spec.name)
