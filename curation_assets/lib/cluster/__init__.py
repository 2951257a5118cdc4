"""Cluster stage: five spherical k-means clusterings and the per-shard assignments.

* :mod:`~curation_assets.lib.cluster.kmeans`: faiss k-means (BLAS set up before faiss loads),
  training, assignment to centroids, cluster-size histogram.
* :mod:`~curation_assets.lib.cluster.io`: the ``cluster_centroids_<c>`` and
  ``cluster_assignments_<c>`` tables, the filtered embeddings they are made from, and the
  figures and check the assets report.

Import faiss from here (``from curation_assets.lib.cluster import faiss``) so that OpenBLAS is
configured before faiss is first loaded.
"""

from curation_assets.lib.cluster.io import (
    AssignOutcome,
    AssignShardWork,
    Centroids,
    CentroidsError,
    TrainingMatrix,
    assignment_check,
    assignment_figures,
    assignments_frame,
    centroids_frame,
    centroids_version,
    cluster_size_bars,
    clustering_figures,
    filtered_count,
    filtered_embeddings,
    load_centroids,
    training_matrix,
)
from curation_assets.lib.cluster.kmeans import (
    BLAS_CONFIG,
    DEFAULT_SEEDS,
    KMeansModel,
    assign,
    cluster_size_histogram,
    configure_blas,
    default_k,
    faiss,
    train_clusterings,
    train_kmeans,
)
from curation_assets.lib.tables import N_CLUSTERINGS

__all__ = [
    "AssignOutcome",
    "AssignShardWork",
    "filtered_count",
    "training_matrix",
    "TrainingMatrix",
    "BLAS_CONFIG",
    "DEFAULT_SEEDS",
    "N_CLUSTERINGS",
    "Centroids",
    "CentroidsError",
    "KMeansModel",
    "assign",
    "assignment_check",
    "assignment_figures",
    "assignments_frame",
    "centroids_frame",
    "centroids_version",
    "cluster_size_bars",
    "cluster_size_histogram",
    "clustering_figures",
    "configure_blas",
    "default_k",
    "faiss",
    "filtered_embeddings",
    "load_centroids",
    "train_clusterings",
    "train_kmeans",
]
