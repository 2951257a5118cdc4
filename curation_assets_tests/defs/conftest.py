import pytest

from curation_assets_tests.defs.dedup_pipeline import build_pipeline


@pytest.fixture(scope="package")
def pipeline(tmp_path_factory):
    """Four shards filtered (all kept); centroids on three; three deduplicated, one waits.

    Shared by test_cluster_assets and test_dedup_assets (built once: it embeds the demo corpus).
    """
    with build_pipeline(tmp_path_factory.mktemp("dedup")) as built:
        yield built
