"""The dedup stage's name and tables in ``stage_commits``: what it reads and what it writes.

* Inputs (their versions are recorded with each commit; the next run redoes the shards that
  changed since): ``filtered_images``, ``image_embeddings``, ``raw_images``, every
  ``cluster_centroids_<c>`` and ``cluster_assignments_<c>``.
* Outputs: ``dedup_members`` (the bucketed layout, :mod:`.layout`), ``duplicate_pairs``,
  ``candidate_pairs`` and ``duplicate_members`` (the pair graph, :mod:`.merge`),
  ``deduplicated_images`` (per shard) and ``dedup_runs``.
"""

from collections.abc import Mapping

import polars as pl

from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import (
    CANDIDATE_PAIRS,
    DEDUP_MEMBERS,
    DEDUP_RUNS,
    DEDUPLICATED_IMAGES,
    DUPLICATE_MEMBERS,
    DUPLICATE_PAIRS,
    FILTERED_IMAGES,
    IMAGE_EMBEDDINGS,
    RAW_IMAGES,
    assignments_spec,
    centroids_spec,
)

#: Stage name of dedup's commit records (:mod:`curation_assets.lib.commits`).
DEDUP_STAGE = "dedup"
DEDUP_OUTPUTS = (
    DEDUP_MEMBERS,
    DUPLICATE_PAIRS,
    CANDIDATE_PAIRS,
    DUPLICATE_MEMBERS,
    DEDUPLICATED_IMAGES,
    DEDUP_RUNS,
)


def input_tables(n_clusterings: int) -> list[str]:
    """The tables a dedup run reads (their Delta versions are recorded with its commit)."""
    return [
        FILTERED_IMAGES.name,
        IMAGE_EMBEDDINGS.name,
        RAW_IMAGES.name,
        *(centroids_spec(c).name for c in range(n_clusterings)),
        *(assignments_spec(c).name for c in range(n_clusterings)),
    ]


def stored_pairs(store: DeltaStore, outputs: Mapping[str, int]) -> pl.DataFrame:
    """Every stored pair (``duplicate_pairs`` and ``candidate_pairs``) as of a commit's outputs.

    Sorted by (image_id_a, image_id_b). Commits made before τ_min stored no band.
    """
    pairs = [store.read(DUPLICATE_PAIRS, version=outputs[DUPLICATE_PAIRS.name])]
    if CANDIDATE_PAIRS.name in outputs:
        pairs.append(store.read(CANDIDATE_PAIRS, version=outputs[CANDIDATE_PAIRS.name]))
    return pl.concat(pairs).sort("image_id_a", "image_id_b")
