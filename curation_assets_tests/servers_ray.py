"""A real two-node Ray cluster on loopback, for the tests marked ``cluster``.

:func:`ray_cluster` starts a head node and a second node on this machine, each with one CPU,
with ``ray start --block`` in a process group of its own, and stops exactly those processes
afterwards (SIGTERM to each group, SIGKILL after a grace period): ``ray stop --force`` would stop
every Ray on the machine, other people's included. Ray's workers are children of the node's
raylet and stay in its process group, so they go with it. Every port a node listens on is a
free one picked here (Ray's defaults, 6379/10001/8265/52365, would clash with another cluster on
the same machine). The temporary folder is short (``/tmp/rNNNN``): Ray's unix socket paths must
fit in ~107 characters. Starting takes ~20 s on a 2-core machine.

The nodes get ``PYTHONPATH`` = this repository, so their workers import ``curation_assets`` and
test helpers as the driver does. Skips when ray is not importable.
"""

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120.0


@dataclass
class RayCluster:
    """A running loopback cluster.

    Attributes:
        address: ``127.0.0.1:<port>`` of the head's GCS (the engine address).
        temp_dir: Ray's session folder (logs under ``session_latest/logs``).
        procs: The ``ray start --block`` processes, one per node (each leads a process group).
    """

    address: str
    temp_dir: Path
    procs: list[subprocess.Popen] = field(default_factory=list)

    def node_ids(self) -> list[str]:
        """Hex ids of the alive nodes."""
        import ray

        return [n["NodeID"] for n in ray.nodes() if n["Alive"]]


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_bin() -> str:
    here = Path(sys.executable).parent / "ray"
    return str(here) if here.exists() else (shutil.which("ray") or "ray")


def _node_ports() -> list[str]:
    return [
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
    ]


def _start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen(
            [_ray_bin(), "start", "--block", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: stopped without `ray stop`
        )


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (children, grandchildren, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _stop(procs: list[subprocess.Popen], grace_s: float = 5.0) -> None:
    """Stop the nodes: SIGTERM their groups, then SIGKILL what is left, workers included.

    Ray's worker processes lead process groups of their own (below the raylet), so they are
    collected from /proc before the raylet goes, and killed by pid.
    """
    below = set().union(*(descendants(p.pid) for p in procs)) if procs else set()
    for proc in reversed(procs):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for proc in reversed(procs):
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # what SIGTERM left (raylet, agents)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
    for pid in below:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _listening(port: int) -> bool:
    """Whether something accepts TCP connections on ``127.0.0.1:port`` right now."""
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def log_tail(logs: Path, lines: int = 15) -> str:
    """The last lines of the node logs and of Ray's own GCS/raylet logs under ``logs``.

    What a failed start prints, so a CI log says why a node died rather than only that it did.
    """
    found = sorted(logs.glob("*.log")) + sorted(logs.glob("session_latest/logs/*.err"))
    found += sorted(logs.glob("session_latest/logs/gcs_server.out"))
    parts = []
    for path in found:
        with contextlib.suppress(OSError):
            text = path.read_text(errors="replace").strip().splitlines()[-lines:]
            if text:
                parts.append(f"--- {path.relative_to(logs)}\n" + "\n".join(text))
    return "\n".join(parts) or "(no logs)"


class ClusterStartError(RuntimeError):
    """A node of the test cluster died or did not come up in time (the logs' tails attached)."""


def _wait_for_nodes(port: int, n: int, procs: list[subprocess.Popen], logs: Path) -> None:
    """Wait until ``n`` nodes are alive, connecting this process as a driver first.

    ``ray.init`` is called only once the head's GCS port accepts connections: called earlier,
    it retries an absent GCS for many minutes (13 in one CI run) instead of failing.
    """
    import ray

    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        dead = [(p.args[2:4], p.returncode) for p in procs if p.poll() is not None]
        if dead:
            msg = f"ray start exited early {dead}:\n{log_tail(logs)}"
            raise ClusterStartError(msg)
        alive = []
        try:
            if not ray.is_initialized() and _listening(port):
                ray.init(address=f"127.0.0.1:{port}", log_to_driver=False)
            if ray.is_initialized():
                alive = [node for node in ray.nodes() if node["Alive"]]
        except (ConnectionError, RuntimeError):
            alive = []
        if len(alive) >= n:
            return
        if time.monotonic() > deadline:
            msg = (
                f"{len(alive)} of {n} Ray nodes up after {START_TIMEOUT_S:.0f}s:\n{log_tail(logs)}"
            )
            raise ClusterStartError(msg)
        time.sleep(0.5)


@contextlib.contextmanager
def ray_cluster(
    nodes: int = 2, *, gpus_per_node: int = 0, attempts: int = 2
) -> Iterator[RayCluster]:
    """Start ``nodes`` one-CPU Ray nodes on loopback; yield the cluster; stop them.

    The calling process is connected to it as a driver (``ray.init``) and disconnected at the
    end. ``gpus_per_node`` declares GPUs that need not exist (Ray schedules on the declared
    count; torch in the workers still finds no CUDA and runs on CPU): it exercises the GPU
    scheduling path on a machine without one.

    A start that fails (a node exits, or the nodes are not up within ``START_TIMEOUT_S``) is
    stopped and tried again with fresh ports and a fresh folder, ``attempts`` times in all; the
    failed attempts' log tails are issued as warnings (pytest's summary shows them), and the last
    one's are in the error.
    """
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not importable; install the cluster extra")
    auth_mode = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # this driver too (see _start_once)
    try:
        for attempt in range(1, attempts + 1):
            try:
                cluster = _start_once(nodes, gpus_per_node)
                break
            except ClusterStartError as exc:
                if attempt == attempts:
                    raise
                warnings.warn(
                    f"Ray test cluster, attempt {attempt} of {attempts} failed: {exc}",
                    stacklevel=2,
                )
        try:
            yield cluster
        finally:
            _teardown(cluster)
    finally:
        if auth_mode is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = auth_mode


def _teardown(cluster: RayCluster) -> None:
    import ray

    ray.shutdown()
    _stop(cluster.procs)
    shutil.rmtree(cluster.temp_dir, ignore_errors=True)


def _start_once(nodes: int, gpus_per_node: int) -> RayCluster:
    """One try at starting the nodes; on failure everything it started is stopped and removed."""
    temp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        ),
        "RAY_USAGE_STATS_ENABLED": "0",
        # Ray 2.60: once any local ray.init() has written ~/.ray/auth_token (a bench, a GPU
        # test), token auth turns on and a driver no longer reaches a loopback cluster
        # ("Failed to connect to Ray cluster at <host ip>"): these throwaway nodes go without
        "RAY_AUTH_MODE": "disabled",
    }
    common = [
        "--node-ip-address=127.0.0.1",
        "--num-cpus=1",
        f"--num-gpus={gpus_per_node}",
        f"--temp-dir={temp}",
    ]
    cluster = RayCluster(address=f"127.0.0.1:{port}", temp_dir=temp)
    try:
        head = [
            "--head",
            f"--port={port}",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-port={free_port()}",
        ]
        cluster.procs.append(_start(head + common + _node_ports(), temp / "head.log", env))
        _wait_for_nodes(port, 1, cluster.procs, temp)
        second = [f"--address={cluster.address}", *common, *_node_ports()]
        for i in range(1, nodes):
            cluster.procs.append(_start(second, temp / f"node{i}.log", env))
        _wait_for_nodes(port, nodes, cluster.procs, temp)
    except BaseException:
        _teardown(cluster)
        raise
    return cluster


@pytest.fixture(scope="module")
def ray_two_nodes() -> Iterator[RayCluster]:
    """A two-node loopback Ray cluster for the tests of one module."""
    with ray_cluster(2) as cluster:
        yield cluster
