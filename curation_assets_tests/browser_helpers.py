"""Helpers for the browser test: `dagster dev` in a process group, headless Chromium, cleanup.

Only Debian's own Chromium is used (``apt-get install chromium``); nothing is downloaded:
Playwright drives it through ``executable_path`` and ``playwright install`` is never run.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import psutil

from curation_assets.instance import install_instance_config
from curation_assets.tools.devserver import graphql

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


RUNS_QUERY = """
{ runsOrError { ... on Runs { results { runId jobName status tags { key value } } } } }
"""


def runs(port: int) -> list[dict]:
    """Every run of the instance, newest first (GraphQL, used to cross-check the UI)."""
    return graphql(port, RUNS_QUERY)["runsOrError"]["results"]


def write_shard(folder: Path, n: int) -> list[Path]:
    """Write ``n`` distinct small JPEGs and a ``_SUCCESS`` marker (ready at once)."""
    from curation_assets_tests.conftest import write_images

    paths = write_images(folder, n)
    (folder / "_SUCCESS").write_text("")
    return paths


def prepare_home(home: Path) -> Path:
    """Create a curation home with the project's dagster.yaml; returns DAGSTER_HOME."""
    return install_instance_config(home)


def register_partitions(dagster_home: Path, partitions_def: str, keys: list[str]) -> None:
    """Add dynamic partitions in the instance before the daemon starts.

    A registered shard is skipped by ``shard_sensor`` (it requests a run only for shards it
    registers itself), so the only run is the one launched from the UI.
    """
    import dagster as dg

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        instance.add_dynamic_partitions(partitions_def, keys)


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
