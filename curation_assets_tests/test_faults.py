"""Fault injection: SIGKILL `curation run` at Delta writes, re-run, compare with a clean run.

Each case runs the real CLI in a subprocess with ``CURATION_FAILPOINT=PHASE:TABLE[:N]``
(:data:`curation_assets.lib.failpoints.FAILPOINT_ENV`): the process kills itself with SIGKILL
before, during (data files partly written, no commit) or after the N-th write to TABLE. Then
`curation run` runs again without the failpoint and every Delta table is compared with the
tables of a run that was never killed: rows lost (must be 0) and whether the tables are equal
(must be yes; timestamps, wall times and the recovery wording of the dedup log excepted).

The cases cover a first run (two shards, fresh home) and an incremental run (a third shard
landing on a finished home). The report table goes to stdout (``pytest -m faults -s``) and to
``$CURATION_TEST_ARTIFACTS/fault_report.md`` when that is set.
"""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from curation_assets.lib.failpoints import FAILPOINT_ENV
from curation_assets.lib.settings import save_settings
from curation_assets.tools.demo import build_demo_corpus
from curation_assets_tests.tables_compare import converged as _converged
from curation_assets_tests.tables_compare import read_tables

pytestmark = [pytest.mark.faults, pytest.mark.slow]

BASE = "shard-000,shard-001.tar"
ALL = "shard-000,shard-001.tar,shard-002.csv"

FIRST_RUN = [
    ("before", "raw_images"),
    ("during", "image_embeddings"),
    ("after", "filtered_images:2"),
    ("during", "cluster_centroids_2"),
    ("after", "cluster_assignments_3"),
    ("before", "duplicate_pairs"),
    ("during", "duplicate_pairs"),
    ("after", "duplicate_pairs"),
    ("during", "deduplicated_images"),
    ("after", "dedup_runs"),
    ("during", "stage_commits"),
    ("during", "sample_weights"),
    ("after", "bias_audit"),
    ("during", "curated_dataset"),
]
INCREMENTAL = [
    ("during", "raw_images"),
    ("after", "image_embeddings"),
    ("after", "duplicate_pairs"),
    ("during", "deduplicated_images"),
    ("before", "stage_commits"),
    ("after", "sample_weights"),
    ("after", "curated_dataset"),
]

REPORT: list[dict] = []


def _command(home: Path, src: Path, shards: str) -> list[str]:
    cmd = [sys.executable, "-m", "curation_assets.cli", "run", "--home", str(home)]
    return [*cmd, "--source", str(src), "--shards", shards]


def _env(failpoint: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != FAILPOINT_ENV}
    if failpoint:
        env[FAILPOINT_ENV] = failpoint
    return env


def _run(home: Path, src: Path, shards: str, failpoint: str | None = None):
    return subprocess.run(
        _command(home, src, shards),
        env=_env(failpoint),
        capture_output=True,
        text=True,
        timeout=600,
    )


def _curation(home: Path, src: Path, shards: str, failpoint: str | None = None) -> int:
    proc = _run(home, src, shards, failpoint)
    if failpoint is None and proc.returncode != 0:
        pytest.fail(f"curation run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.returncode


def _tables(home: Path, root: Path | None = None) -> dict[str, pl.DataFrame]:
    return read_tables(root or home / "delta")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A source root, a clean first run, and a clean incremental run on a copy of it."""
    tmp = tmp_path_factory.mktemp("faults")
    src = tmp / "src"
    build_demo_corpus(src, n_base=40)
    first = tmp / "clean-first"
    _curation(first, src, BASE)
    incremental = tmp / "clean-incremental"
    shutil.copytree(first, incremental, symlinks=True)
    _curation(incremental, src, ALL)
    return {
        "tmp": tmp,
        "src": src,
        "first": first,
        "first_tables": _tables(first),
        "incremental_tables": _tables(incremental),
    }


def _report(run: str, fault: str, killed: object, lost: int, equal: bool, bad: list) -> None:
    """One row of the fault table."""
    converged = "yes" if equal else f"no: {bad}"
    REPORT.append(
        {
            "run": run,
            "failpoint": fault,
            "killed": killed,
            "rows lost": lost,
            "converged": converged,
        }
    )


def _case(world, name: str, home: Path, shards: str, failpoint: str, expected: dict) -> None:
    rc = _curation(home, world["src"], shards, failpoint)
    killed = rc in (-signal.SIGKILL, 128 + signal.SIGKILL)
    _curation(home, world["src"], shards)  # the re-run must succeed
    lost, equal, bad = _converged(_tables(home), expected)
    _report(name, failpoint, killed, lost, equal, bad)
    assert killed, f"failpoint {failpoint} never fired (rc={rc})"
    assert lost == 0 and equal, f"after a kill at {failpoint}: tables differ: {bad}"


@pytest.mark.parametrize(("phase", "table"), FIRST_RUN, ids=[f"{p}:{t}" for p, t in FIRST_RUN])
def test_kill_during_first_run_converges(world, phase, table):
    home = world["tmp"] / f"first-{phase}-{table.replace(':', '-')}"
    _case(world, "first", home, BASE, f"{phase}:{table}", world["first_tables"])


@pytest.mark.parametrize(("phase", "table"), INCREMENTAL, ids=[f"{p}:{t}" for p, t in INCREMENTAL])
def test_kill_during_incremental_run_converges(world, phase, table):
    home = world["tmp"] / f"incr-{phase}-{table.replace(':', '-')}"
    shutil.copytree(world["first"], home, symlinks=True)
    _case(world, "incremental", home, ALL, f"{phase}:{table}", world["incremental_tables"])


@contextlib.contextmanager
def _mounted(target: Path, *options: str, source: str = "tmpfs", fstype: str | None = None):
    """Mount ``source`` on ``target`` for the block; skip the test where mounting is refused."""
    target.mkdir(parents=True, exist_ok=True)
    cmd = ["mount", *(["-t", fstype] if fstype else []), *options, source, str(target)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        pytest.skip("no mount command")
    if proc.returncode != 0:
        pytest.skip(f"mounting is not permitted here: {proc.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True, timeout=30)


def _all_tables_readable(root: Path) -> list[str]:
    """Tables under ``root`` that fail to read (must be none: nothing half-visible)."""
    broken = []
    for d in sorted(root.iterdir()):
        if (d / "_delta_log").is_dir():
            try:
                pl.read_delta(str(d))
            except Exception as exc:  # noqa: BLE001 - any failure to read is the finding
                broken.append(f"{d.name}: {exc}")
    return broken


def test_full_disk_fails_clearly_and_a_rerun_with_space_converges(world):
    """A full disk stops the run with the OS error; with space, a re-run converges.

    The Delta root sits on a 600 KiB tmpfs (a first run writes ~1.2 MiB). Every table stays
    readable after the failure.
    """
    home = world["tmp"] / "full-disk"
    with _mounted(home / "delta", "-o", "size=600k", fstype="tmpfs"):
        proc = _run(home, world["src"], BASE)
        output = proc.stdout + proc.stderr
        assert proc.returncode not in (0, -signal.SIGKILL), output
        assert "No space left on device" in output, output[-3000:]
        assert not _all_tables_readable(home / "delta")
        remount = ["mount", "-o", "remount,size=64m", str(home / "delta")]
        subprocess.run(remount, check=True, capture_output=True, timeout=30)
        _curation(home, world["src"], BASE)
        lost, equal, bad = _converged(_tables(home), world["first_tables"])
    _report(
        "first",
        "disk full (600 KiB tmpfs)",
        f"no: exit {proc.returncode}, ENOSPC reported",
        lost,
        equal,
        bad,
    )
    assert lost == 0 and equal, bad


def test_read_only_root_fails_clearly_and_changes_nothing(world):
    """A read-only Delta root stops an incremental run with a clear error, changing nothing.

    Once writable again, a re-run converges.
    """
    home = world["tmp"] / "read-only"
    shutil.copytree(world["first"], home, symlinks=True)
    delta = home / "delta"
    with _mounted(delta, "--bind", source=str(delta)):
        subprocess.run(
            ["mount", "-o", "remount,bind,ro", str(delta)],
            check=True,
            capture_output=True,
            timeout=30,
        )
        proc = _run(home, world["src"], ALL)
        output = proc.stdout + proc.stderr
        unchanged = _converged(_tables(home), world["first_tables"])
    assert proc.returncode not in (0, -signal.SIGKILL), output
    assert "Read-only file system" in output, output[-3000:]
    assert unchanged[:2] == (0, True), unchanged
    _curation(home, world["src"], ALL)
    lost, equal, bad = _converged(_tables(home), world["incremental_tables"])
    _report(
        "incremental",
        "read-only Delta root",
        f"no: exit {proc.returncode}, EROFS reported, tables unchanged",
        lost,
        equal,
        bad,
    )
    assert lost == 0 and equal, bad


def test_two_instances_on_one_delta_root(world):
    """Two instances writing one Delta root at once: no image twice, no row lost.

    Two Dagster homes (two `curation run` processes at once) share one Delta root and run the
    same shards; a re-run converges. A process that loses every retry fails naming the other
    writer.
    """
    shared = world["tmp"] / "shared-delta"
    homes = [world["tmp"] / f"instance-{i}" for i in (1, 2)]
    for home in homes:
        save_settings(home, delta_root=str(shared))
    procs = [
        subprocess.Popen(
            _command(home, world["src"], BASE),
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for home in homes
    ]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    codes = [p.returncode for p in procs]
    for code, output in zip(codes, outputs, strict=True):
        assert code == 0 or "ConcurrentWriteError" in output, output[-3000:]
    raw = pl.read_delta(str(shared / "raw_images"))
    assert raw["image_id"].n_unique() == raw.height
    _curation(homes[0], world["src"], BASE)
    lost, equal, bad = _converged(_tables(homes[0], shared), world["first_tables"])
    _report(
        "first", "two instances, one Delta root, at once", f"no: exits {codes}", lost, equal, bad
    )
    assert lost == 0 and equal, bad


def test_fault_report():
    """Print the table of cases (run last)."""
    if not REPORT:
        pytest.skip("no fault case ran")
    cols = list(REPORT[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in REPORT]
    text = "\n".join(lines)
    sys.stdout.write("\n" + text + "\n")
    artifacts = os.environ.get("CURATION_TEST_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        (Path(artifacts) / "fault_report.md").write_text(text + "\n")
    assert all(r["rows lost"] == 0 and r["converged"] == "yes" for r in REPORT)
