"""`dagster dev -w workspace.yaml` serves the same assets, checks and sensor (loopback only)."""

import pytest

from curation_assets.instance import install_instance_config
from curation_assets.tools.devserver import dagster_dev

QUERY = """
{
  assetNodes { assetKey { path } isPartitioned
    assetChecksOrError { ... on AssetChecks { checks { name } } } }
  repositoriesOrError { ... on RepositoryConnection { nodes {
    name sensors { name sensorState { status } } } } }
}
"""


@pytest.mark.slow
def test_dagster_dev_shows_assets_checks_and_sensor(tmp_path):
    home = tmp_path / "home"
    install_instance_config(home)
    with dagster_dev(home, tmp_path / "dagster-dev.log") as dev:
        data = dev.query(QUERY)
        nodes = {"/".join(n["assetKey"]["path"]): n for n in data["assetNodes"]}
        from curation_assets.definitions import defs

        graph = defs().resolve_asset_graph()
        assert set(nodes) == {k.to_user_string() for k in graph.get_all_asset_keys()}
        assert (
            nodes["raw_images"]["isPartitioned"]
            and not nodes["safety_classifiers"]["isPartitioned"]
        )
        checks = {
            (key, c["name"])
            for key, n in nodes.items()
            for c in (n["assetChecksOrError"] or {}).get("checks", [])
        }
        assert ("raw_images", "every_input_accounted_for") in checks
        assert checks == {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
        sensors = {
            s["name"]: s["sensorState"]["status"]
            for repo in data["repositoriesOrError"]["nodes"]
            for s in repo["sensors"]
        }
        assert sensors == {
            "shard_sensor": "RUNNING",
            "curation_automation": "RUNNING",
            "shard_automation": "RUNNING",
        }
