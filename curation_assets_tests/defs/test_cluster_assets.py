"""Cluster assets on the demo corpus (real EfficientNet-Lite0 embeddings)."""

import numpy as np
import pytest

from curation_assets.lib.cluster import load_centroids
from curation_assets.lib.tables import N_CLUSTERINGS, assignments_spec
from curation_assets_tests.defs.helpers import check_results

pytestmark = pytest.mark.slow


def test_five_clusterings_with_metadata(pipeline):
    mats = {
        m.asset_key.to_user_string(): m.metadata
        for m in pipeline["centroids"].asset_materializations_for_node("cluster_centroids")
    }
    assert sorted(mats) == [f"cluster_centroids_{c}" for c in range(N_CLUSTERINGS)]
    versions = set()
    for meta in mats.values():
        assert meta["k"].value == 4
        assert meta["imbalance"].value >= 1.0
        assert "█" in meta["cluster_size_histogram"].value
        versions.add(meta["version"].value)
    assert len(versions) == N_CLUSTERINGS  # five seeds, five different clusterings
    store = pipeline["store"]
    for c in range(N_CLUSTERINGS):
        cent = load_centroids(store, c)
        assert cent is not None and cent.matrix.shape[0] == 4
        np.testing.assert_allclose(np.linalg.norm(cent.matrix, axis=1), 1.0, atol=1e-5)


def test_each_shard_is_assigned_in_every_clustering_with_the_centroids_in_force(pipeline):
    store = pipeline["store"]
    for shard, result in pipeline["assignments"].items():
        assert check_results(result) == {"every_filtered_image_assigned": True}
        mats = {
            m.asset_key.to_user_string(): m.metadata
            for m in result.asset_materializations_for_node("cluster_assignments")
        }
        assert sorted(mats) == [f"cluster_assignments_{c}" for c in range(N_CLUSTERINGS)]
        for c in range(N_CLUSTERINGS):
            cent = load_centroids(store, c)
            meta = mats[f"cluster_assignments_{c}"]
            assert cent is not None and meta["centroids_version"].value == cent.version
            assert 1 <= meta["clusters_used"].value <= 4
            rows = store.read(assignments_spec(c), shards=[shard])
            assert meta["dagster/row_count"].value == rows.height > 0
