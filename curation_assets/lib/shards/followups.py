"""Which per-shard assets an update makes due, and for which shards (pure rules, no Dagster).

``shard_automation`` (``defs/shard_automation.py``) reads the materializations recorded since
its cursor and passes them here as :class:`Update` rows; :func:`due_followups` says what each
one makes due:

=============================== ======================================================== =====
update                          due                                                      skip
=============================== ======================================================== =====
``safety_classifiers``          scores → filter (→ assignments) of every embedded shard  [1]
``classifier_scores[s]``        filter (→ assignments) of ``s``                          [2]
``filtered_images[s]``          assignments of ``s`` (once centroids exist)              [3]
``cluster_centroids_<c>``       assignments of every filtered shard                      [1]
``similarity_quantizer``        index → uniqueness of every embedded shard               [1]
``image_embeddings[s]``         index → uniqueness of ``s`` (once the quantizer exists)  [1]
``similarity_index[s]``         uniqueness of ``s``                                      [1]
=============================== ======================================================== =====

[1] the run that made the update also ran the first due asset (a person materialized both;
a chain requested here); [2] that, or a ``per_shard_job``-family run (``per_shard_tag``: it
filtered the shard itself); [3] that, or a ``per_shard_assign_job`` run (``assigned_tag``).
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

N_CLUSTERINGS = 5
ASSIGNMENTS = tuple(f"cluster_assignments_{c}" for c in range(N_CLUSTERINGS))
CENTROIDS = tuple(f"cluster_centroids_{c}" for c in range(N_CLUSTERINGS))
SCORE = ("classifier_scores",)
FILTER = ("filtered_images", "filter_rejections")
INDEX = ("similarity_index",)
UNIQUENESS = ("image_uniqueness",)

TRIGGERS = (
    "safety_classifiers",
    "classifier_scores",
    "filtered_images",
    *CENTROIDS,
    "similarity_quantizer",
    "image_embeddings",
    "similarity_index",
)
"""Every asset whose materializations :func:`due_followups` reads."""

PER_SHARD_TARGETS = (*SCORE, *FILTER, *ASSIGNMENTS, *INDEX, *UNIQUENESS)
"""Every per-shard asset that :func:`due_followups` can make due."""


@dataclass(frozen=True)
class Update:
    """One recorded materialization.

    Attributes:
        storage_id: Its event-log id (increasing).
        asset: The asset's key, e.g. ``classifier_scores``.
        shard: Its partition, ``None`` for an unpartitioned asset.
        run_tags: The tags of the run that recorded it (empty for a runless event).
        run_assets: The assets that run targeted (empty for a runless event).
    """

    storage_id: int
    asset: str
    shard: str | None
    run_tags: Mapping[str, str] = field(default_factory=dict)
    run_assets: frozenset[str] = frozenset()


@dataclass
class Due:
    """Per-shard assets to run.

    Attributes:
        shards: Asset → the shards named by partition-level updates.
        every: Asset → the input asset whose every materialized shard is due (a global
            update: a retrained classifier, new centroids, a new quantizer).
    """

    shards: dict[str, set[str]] = field(default_factory=dict)
    every: dict[str, str] = field(default_factory=dict)

    def add(self, assets: Iterable[str], shard: str) -> None:
        """Make ``assets`` of ``shard`` due."""
        for asset in assets:
            self.shards.setdefault(asset, set()).add(shard)

    def add_every(self, assets: Iterable[str], having: str) -> None:
        """Make ``assets`` of every shard that has a materialization of ``having`` due."""
        for asset in assets:
            self.every.setdefault(asset, having)

    def __bool__(self) -> bool:
        """Whether anything is due."""
        return bool(self.shards or self.every)


def due_followups(
    updates: Iterable[Update],
    *,
    centroids: bool,
    quantizer: bool,
    per_shard_tag: str,
    assigned_tag: str,
) -> Due:
    """The per-shard work the ``updates`` make due (the table in the module docstring).

    Args:
        updates: Materializations of :data:`TRIGGERS`, any order.
        centroids: Whether every clustering's centroids exist (else nothing is assigned).
        quantizer: Whether the similarity quantizer exists (else nothing is indexed).
        per_shard_tag: The run tag of the runs that score and filter new shards.
        assigned_tag: The run tag of those runs that also assign their shards.

    Returns:
        The due assets by shard, and the global updates' "every shard having X".
    """
    assign = ASSIGNMENTS if centroids else ()
    due = Due()
    for u in updates:
        ran = u.run_assets
        if u.asset == "safety_classifiers" and not ran & set(SCORE):
            due.add_every((*SCORE, *FILTER, *assign), "image_embeddings")
        elif u.asset in CENTROIDS and centroids and not ran & set(ASSIGNMENTS):
            due.add_every(ASSIGNMENTS, "filtered_images")
        elif u.asset == "similarity_quantizer" and not ran & set(INDEX):
            due.add_every((*INDEX, *UNIQUENESS), "image_embeddings")
        elif u.shard is None:
            continue
        elif u.asset == "classifier_scores":
            if per_shard_tag not in u.run_tags and not ran & set(FILTER):
                due.add((*FILTER, *assign), u.shard)
        elif u.asset == "filtered_images":
            if assigned_tag not in u.run_tags and not ran & set(ASSIGNMENTS):
                due.add(assign, u.shard)
        elif u.asset == "image_embeddings":
            if quantizer and not ran & set(INDEX):
                due.add((*INDEX, *UNIQUENESS), u.shard)
        elif u.asset == "similarity_index" and not ran & set(UNIQUENESS):
            due.add(UNIQUENESS, u.shard)
    return due
