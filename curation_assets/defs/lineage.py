"""Column lineage: which upstream columns each table column is computed from.

Declared once here and attached to every materialization as ``dagster/column_lineage`` (the
asset page's *Column lineage* tab). Only real data flow is listed: a column copied from an
upstream table, or computed from upstream columns (a score from an embedding and a
classifier; a weight from embeddings and keep decisions). Row filtering (which rows survive)
is not column lineage; the filter's and dedup's reasons live in their own tables.
Tables and columns are named through the table registry (:mod:`curation_assets.lib.tables`),
and a column a table does not have fails at import; ``test_definitions`` checks every entry
against the asset graph too.
"""

import dagster as dg

from curation_assets.lib.tables import (
    CLASSIFIER_SCORES,
    CURATED_DATASET,
    DEDUPLICATED_IMAGES,
    DUPLICATE_PAIRS,
    FILTER_REJECTIONS,
    FILTERED_IMAGES,
    IMAGE_EMBEDDINGS,
    N_CLUSTERINGS,
    RAW_IMAGES,
    SAFETY_CLASSIFIERS,
    SAMPLE_WEIGHTS,
    TableSpec,
    assignments_spec,
    centroids_spec,
)

Dep = tuple[str, str]
"""(upstream asset key, column)."""


def _cols(spec: TableSpec, *columns: str) -> list[Dep]:
    """``(table, column)`` for columns of ``spec``; a column the registry lacks is a bug here."""
    missing = [c for c in columns if c not in spec.column_names]
    if missing:
        msg = f"column lineage names columns {missing} that table {spec.name!r} does not have"
        raise ValueError(msg)
    return [(spec.name, c) for c in columns]


def _same(spec: TableSpec, *columns: str) -> dict[str, list[Dep]]:
    """Columns copied unchanged from ``spec``'s table."""
    return {c: _cols(spec, c) for c in columns}


def _assignment_clusters() -> list[Dep]:
    return [dep for c in range(N_CLUSTERINGS) for dep in _cols(assignments_spec(c), "cluster")]


def _clustering(c: int) -> dict[str, list[Dep]]:
    embedding = _cols(IMAGE_EMBEDDINGS, "embedding")
    return {
        **_same(IMAGE_EMBEDDINGS, "image_id", "shard"),
        "cluster": [*embedding, *_cols(centroids_spec(c), "centroid")],
        "cosine": [*embedding, *_cols(centroids_spec(c), "centroid")],
        "centroids_version": _cols(centroids_spec(c), "version"),
    }


COLUMN_LINEAGE: dict[str, dict[str, list[Dep]]] = {
    IMAGE_EMBEDDINGS.name: {
        **_same(RAW_IMAGES, "image_id", "shard"),
        "embedding": _cols(RAW_IMAGES, "source_uri"),  # the pixels read from there
    },
    CLASSIFIER_SCORES.name: {
        **_same(IMAGE_EMBEDDINGS, "image_id", "shard"),
        "category": _cols(SAFETY_CLASSIFIERS, "category"),
        "score": [
            *_cols(IMAGE_EMBEDDINGS, "embedding"),
            *_cols(SAFETY_CLASSIFIERS, "classifier_json"),
        ],
        "threshold": _cols(SAFETY_CLASSIFIERS, "threshold"),
    },
    FILTERED_IMAGES.name: _same(
        RAW_IMAGES, "image_id", "shard", "source_uri", "caption", "width", "height"
    ),
    FILTER_REJECTIONS.name: _same(
        CLASSIFIER_SCORES, "image_id", "shard", "category", "score", "threshold"
    ),
    **{assignments_spec(c).name: _clustering(c) for c in range(N_CLUSTERINGS)},
    DUPLICATE_PAIRS.name: {
        "image_id_a": _cols(FILTERED_IMAGES, "image_id"),
        "image_id_b": _cols(FILTERED_IMAGES, "image_id"),
        "similarity": _cols(IMAGE_EMBEDDINGS, "embedding"),
        "found_by": _assignment_clusters(),
    },
    DEDUPLICATED_IMAGES.name: {
        **_same(FILTERED_IMAGES, "image_id", "shard"),
        # similarity decides the groups, the keep policy the survivor of each
        "kept": [
            *_cols(IMAGE_EMBEDDINGS, "embedding"),
            *_cols(RAW_IMAGES, "width", "height", "ingested_at", "image_id"),
        ],
        "duplicate_of": [
            *_cols(FILTERED_IMAGES, "image_id"),
            *_cols(IMAGE_EMBEDDINGS, "embedding"),
        ],
        "similarity": _cols(IMAGE_EMBEDDINGS, "embedding"),
        "component_id": [*_cols(IMAGE_EMBEDDINGS, "embedding"), *_assignment_clusters()],
    },
    SAMPLE_WEIGHTS.name: {
        **_same(DEDUPLICATED_IMAGES, "image_id", "shard"),
        "weight": [*_cols(IMAGE_EMBEDDINGS, "embedding"), *_cols(DEDUPLICATED_IMAGES, "kept")],
        "raw_ratio": [
            *_cols(IMAGE_EMBEDDINGS, "embedding"),
            *_cols(DEDUPLICATED_IMAGES, "kept"),
        ],
    },
    CURATED_DATASET.name: {
        **_same(FILTERED_IMAGES, "image_id", "source_uri", "caption", "shard", "width", "height"),
        "weight": _cols(SAMPLE_WEIGHTS, "weight"),
    },
}
"""Upstream columns of each table's columns, by table; every name is checked against the
table registry (:mod:`curation_assets.lib.tables`) when this module is imported."""


def column_lineage(asset: str) -> dict[str, dg.TableColumnLineage]:
    """``{"dagster/column_lineage": ...}`` for ``asset``'s materializations."""
    deps = COLUMN_LINEAGE[asset]
    return {
        "dagster/column_lineage": dg.TableColumnLineage(
            deps_by_column={
                column: [
                    dg.TableColumnDep(asset_key=dg.AssetKey(a), column_name=c) for a, c in sources
                ]
                for column, sources in deps.items()
            }
        )
    }
