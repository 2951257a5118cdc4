"""Column lineage: which upstream columns each table column is computed from.

Declared once here and attached to every materialization as ``dagster/column_lineage`` (the
asset page's *Column lineage* tab). Only real data flow is listed: a column copied from an
upstream table, or computed from upstream columns (a score from an embedding and a
classifier; a weight from embeddings and keep decisions). Row filtering (which rows survive)
is not column lineage; the filter's and dedup's reasons live in their own tables.
``test_definitions`` checks every entry against the table schemas.
"""

import dagster as dg

from curation_assets.lib.tables import N_CLUSTERINGS

Dep = tuple[str, str]
"""(upstream asset key, column)."""


def _same(asset: str, *columns: str) -> dict[str, list[Dep]]:
    """Columns copied unchanged from ``asset``."""
    return {c: [(asset, c)] for c in columns}


def _assignment_clusters() -> list[Dep]:
    return [(f"cluster_assignments_{c}", "cluster") for c in range(N_CLUSTERINGS)]


COLUMN_LINEAGE: dict[str, dict[str, list[Dep]]] = {
    "image_embeddings": {
        **_same("raw_images", "image_id", "shard"),
        "embedding": [("raw_images", "source_uri")],  # the pixels read from there
    },
    "classifier_scores": {
        **_same("image_embeddings", "image_id", "shard"),
        "category": [("safety_classifiers", "category")],
        "score": [
            ("image_embeddings", "embedding"),
            ("safety_classifiers", "classifier_json"),
        ],
        "threshold": [("safety_classifiers", "threshold")],
    },
    "filtered_images": _same(
        "raw_images", "image_id", "shard", "source_uri", "caption", "width", "height"
    ),
    "filter_rejections": _same(
        "classifier_scores", "image_id", "shard", "category", "score", "threshold"
    ),
    **{
        f"cluster_assignments_{c}": {
            **_same("image_embeddings", "image_id", "shard"),
            "cluster": [("image_embeddings", "embedding"), (f"cluster_centroids_{c}", "centroid")],
            "cosine": [("image_embeddings", "embedding"), (f"cluster_centroids_{c}", "centroid")],
            "centroids_version": [(f"cluster_centroids_{c}", "version")],
        }
        for c in range(N_CLUSTERINGS)
    },
    "duplicate_pairs": {
        "image_id_a": [("filtered_images", "image_id")],
        "image_id_b": [("filtered_images", "image_id")],
        "similarity": [("image_embeddings", "embedding")],
        "found_by": _assignment_clusters(),
    },
    "deduplicated_images": {
        **_same("filtered_images", "image_id", "shard"),
        "kept": [  # similarity decides the groups, the keep policy the survivor of each
            ("image_embeddings", "embedding"),
            ("raw_images", "width"),
            ("raw_images", "height"),
            ("raw_images", "ingested_at"),
            ("raw_images", "image_id"),
        ],
        "duplicate_of": [("filtered_images", "image_id"), ("image_embeddings", "embedding")],
        "similarity": [("image_embeddings", "embedding")],
        "component_id": [("image_embeddings", "embedding"), *_assignment_clusters()],
    },
    "sample_weights": {
        **_same("deduplicated_images", "image_id", "shard"),
        "weight": [("image_embeddings", "embedding"), ("deduplicated_images", "kept")],
        "raw_ratio": [("image_embeddings", "embedding"), ("deduplicated_images", "kept")],
    },
    "curated_dataset": {
        **_same("filtered_images", "image_id", "source_uri", "caption", "shard", "width", "height"),
        "weight": [("sample_weights", "weight")],
    },
}


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
