"""Helpers for the browser test: `dagster dev` in a process group, headless Chromium, cleanup.

Only Debian's own Chromium is used (``apt-get install chromium``); nothing is downloaded:
Playwright drives it through ``executable_path`` and ``playwright install`` is never run.
"""

from __future__ import annotations

import json
import os
import shutil
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

import psutil

REPO = Path(__file__).resolve().parents[1]

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
"""Flags for Chromium as root in a container, offline (``--headless`` comes from Playwright)."""

VIEWPORT = {"width": 1400, "height": 900}


def chromium_path() -> str | None:
    """Debian's Chromium binary, or None when it is not installed."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def artifacts_dir(tmp_path: Path) -> Path:
    """Where screenshots go: ``$CURATION_TEST_ARTIFACTS`` if set, else under ``tmp_path``."""
    env = os.environ.get("CURATION_TEST_ARTIFACTS")
    out = Path(env).expanduser().resolve() if env else tmp_path / "artifacts"
    out.mkdir(parents=True, exist_ok=True)
    return out


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    """POST a GraphQL query to the webserver; returns ``data``."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())["data"]


READY_QUERY = """
{
  assetNodes { assetKey { path } }
  repositoriesOrError { ... on RepositoryConnection { nodes {
    sensors { name sensorState { status } } } } }
}
"""

RUNS_QUERY = """
{ runsOrError { ... on Runs { results { runId jobName status tags { key value } } } } }
"""


def runs(port: int) -> list[dict]:
    """Every run of the instance, newest first (GraphQL, used to cross-check the UI)."""
    return graphql(port, RUNS_QUERY)["runsOrError"]["results"]


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

    def log_tail(self, n: int = 40) -> str:
        """The last ``n`` lines of the combined stdout/stderr of ``dagster dev``."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


def write_shard(folder: Path, n: int) -> list[Path]:
    """Write ``n`` distinct small JPEGs and a ``_SUCCESS`` marker (ready at once)."""
    from curation_assets_tests.conftest import write_images

    paths = write_images(folder, n)
    (folder / "_SUCCESS").write_text("")
    return paths


def prepare_home(home: Path) -> Path:
    """Create a curation home with the project's dagster.yaml; returns DAGSTER_HOME."""
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True)
    (dagster_home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    (home / "sources").mkdir()
    return dagster_home


def register_partitions(dagster_home: Path, partitions_def: str, keys: list[str]) -> None:
    """Add dynamic partitions in the instance before the daemon starts.

    A registered shard is skipped by ``shard_sensor`` (it requests a run only for shards it
    registers itself), so the only run is the one launched from the UI.
    """
    import dagster as dg

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        instance.add_dynamic_partitions(partitions_def, keys)


@contextmanager
def dagster_dev(home: Path, log: Path, *, ready_timeout_s: float = 240) -> Iterator[DagsterDev]:
    """Start ``dagster dev -w workspace.yaml`` on a free loopback port; stop its whole group.

    Yields once the webserver serves the asset graph and the sensor state. On exit every process
    of the group (webserver, daemon, code servers, run workers) is stopped: SIGTERM to the
    group (dagster dev shuts down in a few seconds), SIGKILL if it is still there after 30 s.
    """
    port = free_port()
    env = {
        **os.environ,
        "CURATION_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("CURATION_SOURCE_ROOT", None)
    env.pop("CURATION_DELTA_ROOT", None)
    dagster = Path(sys.executable).with_name("dagster")
    cmd = [str(dagster), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
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
            except (OSError, KeyError, TypeError, ValueError):
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


def processes_mentioning(marker: str) -> list[psutil.Process]:
    """Live processes whose command line or environment contains ``marker`` (not this one)."""
    found = []
    me = os.getpid()
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        if p.pid == me or p.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            text = " ".join(p.info["cmdline"] or [])
            if marker not in text:
                text = " ".join(f"{k}={v}" for k, v in p.environ().items())
            if marker in text:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def assert_no_strays(marker: str, *, wait_s: float = 15) -> None:
    """Fail (after killing them) if processes started for this test are still alive."""
    deadline = time.monotonic() + wait_s
    strays = processes_mentioning(marker)
    while strays and time.monotonic() < deadline:
        time.sleep(0.5)
        strays = processes_mentioning(marker)
    if strays:
        described = [f"{p.pid} {' '.join(p.cmdline())[:120]}" for p in strays]
        for p in strays:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        raise AssertionError(f"processes left running after the test: {described}")
