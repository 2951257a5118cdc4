"""The Delta lease: the cross-process lock of object-store roots, tested on a local table.

The lease only needs atomic Delta commits, which a local table has too, so real processes race
for it here exactly as they would on S3.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from curation_assets.lib import storage
from curation_assets.lib.leases import DeltaLease, LeaseLostError
from curation_assets.lib.storage import DeltaStore

HOLDER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from curation_assets.lib.leases import DeltaLease

    uri, who, go, n, ttl = sys.argv[1:6]
    go, n, ttl = Path(go), int(n), float(ttl)
    Path(f"{go}.ready-{who}").touch()
    while not go.exists():
        time.sleep(0.001)
    spans = []
    for _ in range(n):
        with DeltaLease(uri, "ingest", ttl_s=ttl, poll_s=0.05).held():
            t0 = time.time()
            time.sleep(0.03)
            spans.append([t0, time.time()])
    print(json.dumps(spans), flush=True)
    """
)


def _race(tmp_path: Path, writers: tuple[str, ...], n: int) -> list[list[float]]:
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    go = tmp_path / "go"
    uri = str(tmp_path / "locks" / "leases")
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), uri, w, str(go), str(n), "30"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in writers
    ]
    deadline = time.monotonic() + 120
    while not all(Path(f"{go}.ready-{w}").exists() for w in writers):
        assert time.monotonic() < deadline, "holders never started"
        time.sleep(0.02)
    go.touch()
    spans = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        spans += json.loads(out.strip().splitlines()[-1])
    return sorted(spans)


def test_three_processes_never_hold_the_lease_at_once(tmp_path):
    spans = _race(tmp_path, ("A", "B", "C"), 6)
    assert len(spans) == 18
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end, "two processes held the lease at once"


def test_a_killed_holders_lease_expires(tmp_path):
    uri = str(tmp_path / "leases")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from curation_assets.lib.leases import DeltaLease\n"
            "with DeltaLease(sys.argv[1], 'ingest', ttl_s=2.0).held():\n"
            "    print('held', flush=True); time.sleep(600)",
            uri,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    time.sleep(2.5)  # its heartbeat renewed it meanwhile: still held
    other = DeltaLease(uri, "ingest", ttl_s=2.0, poll_s=0.1)
    row = other._row(other._open())  # noqa: SLF001
    assert row is not None and row["expires_at"] > time.time()
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    t0 = time.monotonic()
    with other.held():
        waited = time.monotonic() - t0
    assert waited <= 2.0 + 1.0  # at most the ttl (plus polling) after the kill


def test_release_frees_it_at_once_and_a_taken_over_lease_is_reported(tmp_path):
    uri = str(tmp_path / "leases")
    first = DeltaLease(uri, "ingest", ttl_s=30.0)
    with first.held():
        pass
    second = DeltaLease(uri, "ingest", ttl_s=0.5, poll_s=0.05)
    t0 = time.monotonic()
    second.acquire()
    assert time.monotonic() - t0 < 5  # released, not expired
    time.sleep(0.6)  # second's lease expires without renewal ...
    third = DeltaLease(uri, "ingest", ttl_s=30.0)
    third.acquire()  # ... and a third takes it over
    with pytest.raises(LeaseLostError, match="taken over"):
        second.renew()
    third.release()


def test_object_store_roots_lock_with_a_lease(monkeypatch):
    """DeltaStore.lock on s3:// holds a DeltaLease in <root>/_locks/leases (no flock there)."""
    seen = []

    class FakeLease:
        def __init__(self, uri, name, **kwargs):
            seen.append((uri, name, kwargs["storage_options"]))

        def held(self):
            import contextlib

            return contextlib.nullcontext()

    monkeypatch.setattr(storage, "DeltaLease", FakeLease)
    store = DeltaStore("s3://bucket/prefix", {"AWS_REGION": "x"})
    with store.lock("ingest"):
        pass
    assert seen == [("s3://bucket/prefix/_locks/leases", "ingest", {"AWS_REGION": "x"})]
