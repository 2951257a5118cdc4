"""Drive a local ``dagster dev`` (webserver + daemon) from Python: start, query, stop.

Used by ``curation bench daemon`` (time a new shard's trip through the sensors and the
automation daemon) and by the tests that watch the daemon or drive the UI in a browser. The
server listens on loopback only and leads its own process group, so stopping it stops the
webserver, the daemon, the code server and every run worker it launched.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
"""The checkout (``workspace.yaml`` lives there when the package is installed editable)."""

REPOSITORY_SELECTOR = {
    "repositoryLocationName": "curation_assets",
    "repositoryName": "__repository__",
}

READY_QUERY = """
{
  assetNodes { assetKey { path } }
  repositoriesOrError { ... on RepositoryConnection { nodes {
    sensors { name sensorState { status } } } } }
}
"""

RUNS_QUERY = """
query($limit: Int) { runsOrError(limit: $limit) { ... on Runs { results {
  runId jobName status creationTime startTime endTime
  tags { key value } assetSelection { path }
  stepStats { stepKey status startTime endTime } } } } }
"""

BACKFILLS_QUERY = """
{ partitionBackfillsOrError(limit: 100) { ... on PartitionBackfills { results {
  id status timestamp numPartitions assetSelection { path } } } } }
"""

MATERIALIZATION_QUERY = """
query($path: [String!]!) { assetOrError(assetKey: {path: $path}) { ... on Asset {
  assetMaterializations(limit: 1) { timestamp runId partition } } } }
"""

PARTITION_KEYS_QUERY = """
query($path: [String!]!) { assetNodeOrError(assetKey: {path: $path}) {
  ... on AssetNode { partitionKeys } } }
"""

SENSOR_QUERY = """
query($sel: SensorSelector!) { sensorOrError(sensorSelector: $sel) {
  ... on Sensor { id sensorState { id status ticks(limit: 50) {
    timestamp status runIds requestedAssetMaterializationCount } } } } }
"""

START_SENSOR = """
mutation($sel: SensorSelector!) { startSensor(sensorSelector: $sel) {
  ... on Sensor { sensorState { status } } ... on PythonError { message } } }
"""

STOP_SENSOR = """
mutation($id: String) { stopSensor(id: $id) {
  ... on StopSensorMutationResult { instigationState { status } }
  ... on PythonError { message } } }
"""

EVALUATIONS_QUERY = """
query($key: AssetKeyInput!, $limit: Int!) {
  assetConditionEvaluationRecordsOrError(assetKey: $key, limit: $limit) {
    ... on AssetConditionEvaluationRecords { records {
      evaluationId timestamp numRequested
      evaluationNodes { uniqueId userLabel expandedLabel numTrue childUniqueIds } } } } }
"""

ACTIVE = {"QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING"}
"""Run statuses of a run that has not finished."""


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    """POST a GraphQL query to the webserver; returns ``data`` (raises on GraphQL errors)."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        body = json.loads(resp.read())
    if body.get("errors"):
        raise RuntimeError(f"GraphQL errors: {body['errors']}")
    return body["data"]


@dataclass
class DagsterDev:
    """A running ``dagster dev`` (webserver + daemon), leader of its own process group."""

    proc: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        """Base URL of the webserver."""
        return f"http://127.0.0.1:{self.port}"

    def query(self, query: str, variables: dict | None = None) -> dict:
        """GraphQL against this server."""
        return graphql(self.port, query, variables)

    def log_tail(self, n: int = 40) -> str:
        """The last ``n`` lines of the combined stdout/stderr of ``dagster dev``."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def runs(self, limit: int = 1000) -> list[dict[str, Any]]:
        """Every run (newest first) with ``tags`` as a dict and ``assets`` as key strings."""
        out = []
        for r in self.query(RUNS_QUERY, {"limit": limit})["runsOrError"]["results"]:
            r = dict(r)
            r["tags"] = {t["key"]: t["value"] for t in r["tags"]}
            r["assets"] = sorted("/".join(a["path"]) for a in r.pop("assetSelection") or [])
            out.append(r)
        return out

    def partition_keys(self, asset: str = "raw_images") -> list[str]:
        """The partition keys of ``asset`` in Dagster's order (dynamic: registration order)."""
        node = self.query(PARTITION_KEYS_QUERY, {"path": asset.split("/")})["assetNodeOrError"]
        return list(node.get("partitionKeys") or [])

    def backfills(self) -> list[dict[str, Any]]:
        """Every asset backfill (newest first)."""
        return self.query(BACKFILLS_QUERY)["partitionBackfillsOrError"]["results"]

    def latest_materialization(self, asset: str) -> dict[str, Any] | None:
        """The newest materialization of ``asset`` (timestamp in ms, runId), or None."""
        node = self.query(MATERIALIZATION_QUERY, {"path": asset.split("/")})["assetOrError"]
        found = (node or {}).get("assetMaterializations") or []
        return found[0] if found else None

    def sensor(self, name: str) -> dict[str, Any]:
        """A sensor's id, status and its last 50 ticks (newest first)."""
        sel = {**REPOSITORY_SELECTOR, "sensorName": name}
        return self.query(SENSOR_QUERY, {"sel": sel})["sensorOrError"]

    def condition_evaluations(self, asset: str, limit: int = 3) -> list[dict[str, Any]]:
        """The automation condition's last ``limit`` evaluations of ``asset`` (newest first).

        Each has ``evaluationId``, ``timestamp``, ``numRequested`` and ``evaluationNodes``
        (every sub-condition: its label and how many partitions it was true for).
        """
        found = self.query(EVALUATIONS_QUERY, {"key": {"path": asset.split("/")}, "limit": limit})
        return (found["assetConditionEvaluationRecordsOrError"] or {}).get("records") or []

    def stop_sensor(self, name: str, *, settle_s: float = 3.0, timeout_s: float = 120) -> None:
        """Stop a sensor as the UI's toggle does, and return once it has stayed stopped.

        A tick in flight when the stop lands can write the sensor's state back as running:
        Dagster's sensor daemon reads the state and writes it again (new cursor, tick times)
        around each tick, and a stop committed in between is lost. So this waits until no tick
        is in flight and the state still reads ``STOPPED`` ``settle_s`` later, stopping again
        if it was written back. A tick that was in flight may still have requested runs; they
        are requested before this returns.
        """
        deadline = time.time() + timeout_s
        while True:
            state_id = self.sensor(name)["sensorState"]["id"]
            result = self.query(STOP_SENSOR, {"id": state_id})["stopSensor"]
            if result.get("message"):
                raise RuntimeError(f"stopping {name}: {result['message']}")
            while True:  # the tick in flight, if any, ends
                state = self.sensor(name)["sensorState"]
                if not any(t["status"] == "STARTED" for t in state["ticks"][:1]):
                    break
                if time.time() > deadline:
                    raise TimeoutError(f"{name}: a tick is still in flight after {timeout_s} s")
                time.sleep(0.5)
            time.sleep(settle_s)
            if self.sensor(name)["sensorState"]["status"] == "STOPPED":
                return
            if time.time() > deadline:
                raise TimeoutError(f"{name}: written back as running after {timeout_s} s")

    def start_sensor(self, name: str) -> None:
        """Start a sensor as the UI's toggle does."""
        sel = {**REPOSITORY_SELECTOR, "sensorName": name}
        result = self.query(START_SENSOR, {"sel": sel})["startSensor"]
        if result.get("message"):
            raise RuntimeError(f"starting {name}: {result['message']}")


def _command(port: int, target: list[str] | None = None) -> list[str]:
    beside = Path(sys.executable).with_name("dagster")  # the same environment as this process
    cmd = [str(beside), "dev", "-h", "127.0.0.1", "-p", str(port)]
    if target:
        return [*cmd, *target]
    workspace = REPO / "workspace.yaml"
    if workspace.is_file():
        return [*cmd, "-w", str(workspace)]
    return [*cmd, "-m", "curation_assets.definitions"]


@contextmanager
def dagster_dev(
    home: Path,
    log: Path,
    *,
    ready_timeout_s: float = 240,
    env: dict[str, str] | None = None,
    target: list[str] | None = None,
) -> Iterator[DagsterDev]:
    """Start ``dagster dev`` on a free loopback port for the curation home ``home``.

    Yields once the webserver serves the asset graph and the sensors. On exit every process of
    the group (webserver, daemon, code servers, run workers) is stopped: SIGTERM to the group
    (dagster dev shuts down in a few seconds), SIGKILL if it is still there after 30 s.

    Args:
        home: The curation home (``instance.install_instance_config`` prepares it).
        log: File that receives the server's stdout and stderr.
        ready_timeout_s: How long to wait for the webserver.
        env: Extra environment variables for the server and its runs.
        target: What to serve instead of the curation code location, as ``dagster dev``
            arguments (``["-f", "defs.py"]``; the tests serve a tiny job this way).
    """
    port = free_port()
    run_env = {
        **os.environ,
        "CURATION_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    for inherited in ("CURATION_SOURCE_ROOT", "CURATION_DELTA_ROOT"):
        if inherited not in (env or {}):
            run_env.pop(inherited, None)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            _command(port, target),
            cwd=REPO if (REPO / "workspace.yaml").is_file() else home,
            env=run_env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    dev = DagsterDev(proc=proc, port=port, log=log)
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            try:
                data = graphql(port, READY_QUERY)
                if data["assetNodes"] and data["repositoriesOrError"]["nodes"]:
                    break
            except (OSError, KeyError, TypeError, ValueError, RuntimeError):
                pass
            if proc.poll() is not None:
                raise RuntimeError(
                    f"dagster dev exited early ({proc.returncode}):\n{dev.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"dagster dev not serving after {ready_timeout_s}s")
            time.sleep(1)
        yield dev
    finally:
        stop_process_group(proc)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_process_group(proc: subprocess.Popen, *, grace_s: float = 30) -> None:
    """Stop every process of the group led by ``proc`` (SIGTERM, then SIGKILL); reap it."""
    pgid = proc.pid
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10)):
        if not _group_alive(pgid):
            break
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader so that the group can disappear
            if not _group_alive(pgid):
                break
            time.sleep(0.25)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
