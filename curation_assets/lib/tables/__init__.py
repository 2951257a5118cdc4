"""The table registry: every Delta table the pipeline writes, declared once, in pipeline order.

Each table is a :class:`TableSpec` (name = asset name = folder under the Delta root, ordered
columns with polars dtype and description, partitioning, a one-line description), declared in
the module of its stage:

* :mod:`~curation_assets.lib.tables.ingest`: ``raw_images``, ``quarantine``,
  ``exact_duplicates``, ``ingest_notes`` (and :data:`REASON_CODES`, the quarantine reasons)
* :mod:`~curation_assets.lib.tables.quality`: ``image_quality`` (written by ingest)
* :mod:`~curation_assets.lib.tables.embed`: ``image_embeddings``
* :mod:`~curation_assets.lib.tables.classify`: ``labels``, ``safety_classifiers``,
  ``label_queue``, ``classifier_scores``
* :mod:`~curation_assets.lib.tables.filter`: ``filtered_images``, ``filter_rejections``
* :mod:`~curation_assets.lib.tables.cluster`: ``cluster_centroids_<c>``,
  ``cluster_assignments_<c>`` for c < :data:`N_CLUSTERINGS`
* :mod:`~curation_assets.lib.tables.dedup`: ``deduplicated_images``, ``duplicate_pairs``,
  ``candidate_pairs``, ``verified_pairs``, ``duplicate_members``, ``duplicate_vectors``,
  ``dedup_members``, ``dedup_runs``
* :mod:`~curation_assets.lib.tables.weights`: ``sample_weights``, ``bias_audit``,
  ``weight_shard_stats``, ``audit_shard_counts``, ``weight_probes``
* :mod:`~curation_assets.lib.tables.export`: ``curated_dataset``
* :mod:`~curation_assets.lib.tables.similar`: ``similarity_quantizer``, ``similarity_index``,
  ``image_uniqueness``
* :mod:`~curation_assets.lib.tables.commits`: ``stage_commits``

:data:`TABLES` lists them all. Writers and readers (``DeltaStore``), the Dagster column
schemas (``defs/metadata.table_schema``), column lineage, the CLI's summary and the tests all
take their specs from here. To add a table: declare it in its stage's module, add it to
:data:`TABLES` at its place in the pipeline, and export it below.

This package imports only polars and pyarrow (no torch, faiss or dagster), so anything may
import it cheaply.
"""

from collections.abc import Mapping
from types import MappingProxyType

from curation_assets.lib.tables.classify import (
    CLASSIFIER_SCORES,
    LABEL_QUEUE,
    LABELS,
    SAFETY_CLASSIFIERS,
)
from curation_assets.lib.tables.cluster import (
    CLUSTER_ASSIGNMENTS,
    CLUSTER_CENTROIDS,
    N_CLUSTERINGS,
    assignments_spec,
    centroids_spec,
)
from curation_assets.lib.tables.commits import STAGE_COMMITS, STAGE_SETTINGS
from curation_assets.lib.tables.dedup import (
    CANDIDATE_PAIRS,
    DEDUP_MEMBERS,
    DEDUP_RUNS,
    DEDUPLICATED_IMAGES,
    DUPLICATE_MEMBERS,
    DUPLICATE_PAIRS,
    DUPLICATE_VECTORS,
    VERIFIED_PAIRS,
)
from curation_assets.lib.tables.embed import IMAGE_EMBEDDINGS
from curation_assets.lib.tables.export import CURATED_DATASET
from curation_assets.lib.tables.filter import FILTER_REJECTIONS, FILTERED_IMAGES
from curation_assets.lib.tables.ingest import (
    DUPLICATE_FILES,
    INGEST_NOTES,
    QUARANTINE,
    RAW_IMAGES,
    REASON_CODES,
)
from curation_assets.lib.tables.quality import IMAGE_QUALITY
from curation_assets.lib.tables.similar import (
    IMAGE_UNIQUENESS,
    SIMILARITY_INDEX,
    SIMILARITY_QUANTIZER,
)
from curation_assets.lib.tables.spec import UTC_TIMESTAMP, Column, TableSpec
from curation_assets.lib.tables.weights import (
    AUDIT_SHARD_COUNTS,
    BIAS_AUDIT,
    SAMPLE_WEIGHTS,
    WEIGHT_PROBES,
    WEIGHT_SHARD_STATS,
)


def _registry(*specs: TableSpec) -> Mapping[str, TableSpec]:
    names = [s.name for s in specs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        msg = f"tables {repeated} are declared more than once; every table name must be unique"
        raise ValueError(msg)
    return MappingProxyType({s.name: s for s in specs})


TABLES: Mapping[str, TableSpec] = _registry(
    RAW_IMAGES,
    QUARANTINE,
    DUPLICATE_FILES,
    INGEST_NOTES,
    IMAGE_QUALITY,
    IMAGE_EMBEDDINGS,
    LABELS,
    SAFETY_CLASSIFIERS,
    LABEL_QUEUE,
    CLASSIFIER_SCORES,
    FILTERED_IMAGES,
    FILTER_REJECTIONS,
    *CLUSTER_CENTROIDS,
    *CLUSTER_ASSIGNMENTS,
    DEDUPLICATED_IMAGES,
    DUPLICATE_PAIRS,
    CANDIDATE_PAIRS,
    VERIFIED_PAIRS,
    DUPLICATE_MEMBERS,
    DUPLICATE_VECTORS,
    DEDUP_MEMBERS,
    DEDUP_RUNS,
    SAMPLE_WEIGHTS,
    BIAS_AUDIT,
    WEIGHT_SHARD_STATS,
    AUDIT_SHARD_COUNTS,
    WEIGHT_PROBES,
    CURATED_DATASET,
    SIMILARITY_QUANTIZER,
    SIMILARITY_INDEX,
    IMAGE_UNIQUENESS,
    STAGE_COMMITS,
    STAGE_SETTINGS,
)
"""Every Delta table of the pipeline, by name, in pipeline order (read-only)."""


def table(name: str) -> TableSpec:
    """The spec of the table called ``name``.

    Raises:
        KeyError: If no table of the registry has that name (the message lists them).
    """
    try:
        return TABLES[name]
    except KeyError:
        msg = f"no table {name!r} in the registry; known tables: {', '.join(TABLES)}"
        raise KeyError(msg) from None


__all__ = [
    "AUDIT_SHARD_COUNTS",
    "BIAS_AUDIT",
    "CANDIDATE_PAIRS",
    "CLASSIFIER_SCORES",
    "CLUSTER_ASSIGNMENTS",
    "CLUSTER_CENTROIDS",
    "CURATED_DATASET",
    "DEDUPLICATED_IMAGES",
    "DEDUP_MEMBERS",
    "DEDUP_RUNS",
    "DUPLICATE_FILES",
    "DUPLICATE_MEMBERS",
    "DUPLICATE_PAIRS",
    "DUPLICATE_VECTORS",
    "FILTERED_IMAGES",
    "FILTER_REJECTIONS",
    "IMAGE_EMBEDDINGS",
    "IMAGE_UNIQUENESS",
    "IMAGE_QUALITY",
    "INGEST_NOTES",
    "LABELS",
    "LABEL_QUEUE",
    "VERIFIED_PAIRS",
    "N_CLUSTERINGS",
    "QUARANTINE",
    "RAW_IMAGES",
    "REASON_CODES",
    "SAFETY_CLASSIFIERS",
    "SAMPLE_WEIGHTS",
    "SIMILARITY_INDEX",
    "SIMILARITY_QUANTIZER",
    "STAGE_COMMITS",
    "STAGE_SETTINGS",
    "TABLES",
    "UTC_TIMESTAMP",
    "WEIGHT_PROBES",
    "WEIGHT_SHARD_STATS",
    "Column",
    "TableSpec",
    "assignments_spec",
    "centroids_spec",
    "table",
]
