"""The dedup stage as one step: plan, search, merge, write and commit under the stage's lock.

:func:`~.run.run_dedup` and :func:`~.run.write_dedup` read and write tables that one run owns
while it runs: ``dedup_members`` (a full run empties it and lays the corpus out anew),
the scratch folders (staged buckets, deleted once searched; the laid-out shards' ids, deleted
once written: :mod:`.readyids`) and the pair graph. Two runs on one
Delta root at once (two Dagster instances, or a run and a backfill) would empty or delete what
the other is reading. :func:`run_dedup_stage` serializes them across processes and machines with
:meth:`~curation_assets.lib.storage.DeltaStore.lock` (``flock`` on a local root, a renewed Delta
lease on an object store): the second waits, then plans again from the first's commit, which
is ``current`` when nothing changed in between (no work done twice).
"""

from typing import Any

from curation_assets.lib.dedup.io import DEDUP_STAGE
from curation_assets.lib.dedup.readyids import clear_ids
from curation_assets.lib.dedup.run import DedupOutcome, run_dedup
from curation_assets.lib.dedup.write import write_dedup
from curation_assets.lib.storage import DeltaStore


def run_dedup_stage(store: DeltaStore, **kwargs: Any) -> DedupOutcome:
    """Run and write one dedup (:func:`~.run.run_dedup` ``kwargs``), one at a time per root.

    Returns:
        The run's :class:`~.run.DedupOutcome` (written and committed unless ``current``).
    """
    with store.lock(DEDUP_STAGE):
        try:
            outcome = run_dedup(store, **kwargs)
            write_dedup(store, outcome)
        finally:  # the ready ids it spilled (a failed run's too): read only by its write
            clear_ids(store)
    return outcome
