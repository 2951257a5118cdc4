"""`dagster dev -w workspace.yaml` serves the same assets, checks and sensor (loopback only)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

QUERY = """
{
  assetNodes { assetKey { path } isPartitioned
    assetChecksOrError { ... on AssetChecks { checks { name } } } }
  repositoriesOrError { ... on RepositoryConnection { nodes {
    name sensors { name sensorState { status } } } } }
}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(port: int, query: str) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())["data"]


@pytest.mark.slow
def test_dagster_dev_shows_assets_checks_and_sensor(tmp_path):
    port = _free_port()
    home = tmp_path / "home"
    (home / "dagster").mkdir(parents=True)
    (home / "dagster" / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    (home / "sources").mkdir()
    env = {
        **os.environ,
        "CURATION_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
    }
    dagster = Path(sys.executable).with_name("dagster")
    proc = subprocess.Popen(
        [str(dagster), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 240
        data = None
        while time.time() < deadline:
            try:
                data = _graphql(port, QUERY)
                if data["assetNodes"]:
                    break
            except (OSError, KeyError, TypeError, ValueError):
                pass
            assert proc.poll() is None, "dagster dev exited early"
            time.sleep(2)
        assert data and data["assetNodes"], "webserver did not serve the definitions in time"
        nodes = {"/".join(n["assetKey"]["path"]): n for n in data["assetNodes"]}
        from curation_assets.definitions import defs

        graph = defs.resolve_asset_graph()
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
        assert sensors == {"shard_sensor": "RUNNING", "curation_automation": "RUNNING"}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
