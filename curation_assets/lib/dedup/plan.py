"""Full, incremental or current: what a dedup run has to do, and why.

Incremental rule (:func:`plan_dedup`): a run is incremental when the previous run used the same
τ, keep policy, embedding model and centroid versions, and every image it covered is still in
the filtered set. Only images not covered yet are searched, against all rows of their clusters;
old pairs are reused. Anything else (a retrain of the centroids, a new τ or policy, an image
that left the filtered set because a classifier was retrained) makes it a full recompute, and
the reason is recorded. When the committed tables already cover every ready image with these
parameters the run is ``current``: nothing is written.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

import polars as pl

from curation_assets.lib.commits import Commit, last_commit, torn_outputs
from curation_assets.lib.dedup.io import DEDUP_STAGE, DedupInputs
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import DEDUPLICATED_IMAGES, DUPLICATE_PAIRS


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
