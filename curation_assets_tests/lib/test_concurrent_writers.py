"""Two real processes writing one Delta root: nothing lost, nothing doubled, clear errors.

Each test starts writer processes that wait on a start file, so their commits really race
(the first creation of a table included), then checks the table they leave behind.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable
from deltalake.exceptions import CommitFailedError

from curation_assets.lib import storage
from curation_assets.lib.storage import ConcurrentWriteError, DeltaStore
from curation_assets.lib.tables import QUARANTINE

WRITER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import polars as pl
    from curation_assets.lib.storage import ConcurrentWriteError, DeltaStore
    from curation_assets.lib.tables import QUARANTINE

    root, who, go, n, mode = sys.argv[1:6]
    go, n = Path(go), int(n)
    store = DeltaStore(root)
    Path(f"{go}.ready-{who}").touch()
    while not go.exists():
        time.sleep(0.001)

    def frame(shard, i, rows):
        return pl.DataFrame({
            "shard": [shard] * rows,
            "source_uri": [f"{who}/{i}/{j}" for j in range(rows)],
            "stage": ["ingest"] * rows,
            "reason": ["zero_byte"] * rows,
            "detail": [""] * rows,
            "image_id": [None] * rows,
            "quarantined_at": [None] * rows,
        })

    out = []
    for i in range(n):
        try:
            if mode == "append":
                out.append(store.append(QUARANTINE, frame(f"{who}-{i}", i, 1)))
            elif mode == "stream-once":  # first write of a fresh table, rows streamed
                store.replace_shard(QUARANTINE, "s", iter([frame("s", i, 3)]))
                out.append("ok")
            elif mode == "same-shard":
                store.replace_shard(QUARANTINE, "s", frame("s", i, 3))
                out.append("ok")
            else:  # lock: hold the lock, record when
                with store.lock("ingest"):
                    t0 = time.time()
                    time.sleep(0.05)
                    out.append([t0, time.time()])
        except ConcurrentWriteError as exc:
            out.append(f"ConcurrentWriteError: {exc}")
    print(json.dumps(out))
    """
)


def _race(tmp_path: Path, mode: str, n: int, writers: tuple[str, ...] = ("A", "B")) -> list:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "root"), who, str(go), str(n), mode],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for who in writers
    ]
    deadline = time.monotonic() + 120
    while not all(Path(f"{go}.ready-{w}").exists() for w in writers):
        assert time.monotonic() < deadline, "writers never started"
        time.sleep(0.02)
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def test_two_processes_create_and_append_to_one_table(tmp_path):
    """The first-creation race is retried; every row lands once.

    Each writer learns the exact version of its own commits (lib.commits records depend on it).
    """
    a, b = _race(tmp_path, "append", 15)
    df = DeltaStore(str(tmp_path / "root")).read(QUARANTINE)
    assert df.height == 30 and df["source_uri"].n_unique() == 30
    table = DeltaTable(str(tmp_path / "root" / "quarantine"))
    history = {h["version"]: (h["curation.writer"], h["operation"]) for h in table.history()}
    # The table is created empty first (by one writer, or by both when their creations race:
    # a second, harmless CREATE TABLE commit); then every version is exactly one append.
    writes = {v for v, (_, op) in history.items() if op == "WRITE"}
    assert sorted(a + b) == sorted(writes) and len(writes) == 30, (a, b, history)
    assert {op for _, op in history.values()} == {"CREATE TABLE", "WRITE"}
    # Each process's versions are its own commits: the writer recorded in that commit is it.
    assert a == sorted(a) and b == sorted(b)
    assert len({history[v][0] for v in a}) == 1 and len({history[v][0] for v in b}) == 1
    assert {history[v][0] for v in a} != {history[v][0] for v in b}


def test_two_processes_replacing_one_shard_leave_one_whole_frame(tmp_path):
    """Conflicting replacements of one shard are retried or refused, never merged.

    The shard ends as exactly one writer's frame.
    """
    a, b = _race(tmp_path, "same-shard", 10)
    for r in a + b:
        assert r == "ok" or ("ConcurrentWriteError" in r and "latest commit by" in r), r
    df = DeltaStore(str(tmp_path / "root")).read(QUARANTINE)
    assert df.height == 3
    prefixes = {uri.rsplit("/", 1)[0] for uri in df["source_uri"]}
    assert len(prefixes) == 1, prefixes  # one writer's one frame, not a mix


@pytest.mark.parametrize("round_", range(3))
def test_racing_first_writes_of_one_shard_never_double_it(tmp_path, round_):
    """Two processes stream the first rows of one shard into a table neither has created.

    Creating and writing in one commit let deltalake rebase the loser onto the winner without
    re-applying its ``overwrite WHERE shard = ...``: the shard held both frames (6 rows, every
    embedding twice when two instances embedded one shard). Now the shard holds one frame and
    the loser fails naming the other writer (a streamed write is not re-sent).
    """
    a, b = _race(tmp_path, "stream-once", 1)
    for r in a + b:
        assert r == "ok" or ("ConcurrentWriteError" in r and "latest commit by" in r), r
    assert "ok" in a + b
    df = DeltaStore(str(tmp_path / "root")).read(QUARANTINE)
    assert df.height == 3, df


def test_lock_excludes_other_processes(tmp_path):
    a, b = _race(tmp_path, "lock", 8)
    spans = sorted(a + b)
    assert len(spans) == 16
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end, "two processes held the lock at once"


def test_lock_of_a_killed_holder_is_released(tmp_path):
    root = tmp_path / "root"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from curation_assets.lib.storage import DeltaStore\n"
            "with DeltaStore(sys.argv[1]).lock('ingest'):\n"
            "    print('held', flush=True); time.sleep(600)",
            str(root),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    holder_pid = holder.pid
    assert str(holder_pid) in (root / "_locks" / "ingest.lock").read_text()
    os.kill(holder_pid, signal.SIGKILL)
    holder.wait(timeout=30)
    t0 = time.monotonic()
    with DeltaStore(str(root)).lock("ingest", poll_s=1):
        assert time.monotonic() - t0 < 5


def test_losing_every_retry_names_the_other_writer(tmp_path, monkeypatch):
    store = DeltaStore(str(tmp_path / "root"))
    row = {
        "shard": "s",
        "source_uri": "x",
        "stage": "ingest",
        "reason": "zero_byte",
        "detail": "",
        "image_id": None,
        "quarantined_at": None,
    }
    store.append(QUARANTINE, pl.DataFrame([row]))
    calls = []

    def always_loses(*args, **kwargs):
        calls.append(1)
        raise CommitFailedError("a concurrent transaction deleted data this operation read")

    monkeypatch.setattr(storage, "write_deltalake", always_loses)
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    with pytest.raises(ConcurrentWriteError) as err:
        store.append(QUARANTINE, pl.DataFrame([row]))
    assert len(calls) == storage.COMMIT_ATTEMPTS
    msg = str(err.value)
    assert "'quarantine'" in msg and f":{os.getpid()} (version 1, WRITE)" in msg
    assert store.read(QUARANTINE).height == 1  # nothing half-written
