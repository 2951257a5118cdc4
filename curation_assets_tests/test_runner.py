"""The headless runner: shard selection, step errors, and Ctrl-C stopping the whole sequence."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from curation_assets.defs.run_health import pool_slots
from curation_assets.runner import ShardSelectionError, ready_shards, step_errors
from curation_assets_tests.conftest import write_images


def test_ready_shards_lists_skips_and_selects(tmp_path):
    write_images(tmp_path / "a", 2)
    write_images(tmp_path / "b", 2, start=10)
    (tmp_path / "c.tmp").mkdir()  # ignored: a shard still being written
    lines: list[str] = []
    assert [s.key for s in ready_shards(tmp_path, echo=lines.append)] == ["a", "b"]
    assert [s.key for s in ready_shards(tmp_path, "b", echo=lines.append)] == ["b"]
    with pytest.raises(ShardSelectionError, match=r"no ready shard named \['z'\]; found"):
        ready_shards(tmp_path, "a,z", echo=lines.append)
    with pytest.raises(ShardSelectionError, match="does not exist"):
        ready_shards(tmp_path / "nope", echo=lines.append)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardSelectionError, match="no shard under"):
        ready_shards(tmp_path / "empty", echo=lines.append)


def test_step_errors_name_the_step_and_the_user_codes_own_error(tmp_path):
    @dg.op
    def broken() -> None:
        raise ValueError("the spec names no category; add one to categories.yaml")

    @dg.job
    def job() -> None:
        broken()

    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = job.execute_in_process(instance=instance, raise_on_error=False)
    assert step_errors(result) == [
        "broken: ValueError: the spec names no category; add one to categories.yaml"
    ]


RANGE_END = "dagster/asset_partition_range_end"


def _run_records(home: Path) -> list[dg.DagsterRun]:
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        return list(instance.get_runs())


@pytest.mark.timeout(180)
def test_ctrl_c_stops_the_whole_sequence_and_frees_the_pool_slot(tmp_path):
    """SIGINT while shards a and b embed (one run): no further run, exit 130, no slot held."""
    src = tmp_path / "src"
    write_images(src / "a", 60)
    write_images(src / "b", 10, start=500)
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "CURATION_"))}
    out, err = tmp_path / "out.log", tmp_path / "err.log"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "curation_assets.cli", "run", "--source", str(src)]
            + ["--home", str(home)],
            stdout=stdout,
            stderr=stderr,
            env={**env, "PYTHONUNBUFFERED": "1"},
            cwd=tmp_path,
        )
    try:
        deadline = time.monotonic() + 120
        while "ingest + embed:" not in out.read_text():  # the instance exists, runs begin
            assert proc.poll() is None and time.monotonic() < deadline, err.read_text()
            time.sleep(0.1)
        with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
            # shard a's run holds the gpu slot: its embedding step is running
            while not [s for s in pool_slots(instance) if s.claimed and s.pool == "gpu"]:
                assert proc.poll() is None and time.monotonic() < deadline, out.read_text()
                time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130, out.read_text() + err.read_text()
    finally:
        proc.kill()
    stdout_text, stderr_lines = out.read_text(), err.read_text().strip().splitlines()
    assert stderr_lines[-1].startswith("interrupted during 2 shards a .. b (run "), stderr_lines
    assert stderr_lines[-1].endswith("; no further run started"), stderr_lines
    assert "classifiers:" not in stdout_text, stdout_text
    runs = _run_records(home)
    assert [
        (r.job_name, r.tags["dagster/asset_partition_range_start"], r.tags[RANGE_END]) for r in runs
    ] == [("per_shard_job", "a", "b")]
    assert runs[0].is_finished, runs[0].status
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        assert pool_slots(instance) == []


def test_shards_share_runs_and_a_bad_shard_fails_alone(tmp_path, monkeypatch):
    """Three shards, one run; the broken manifest in the middle fails it, then fails alone.

    The shards around it get runs of their own (the one before it was ingested in the shared
    run, but its embedding step never ran: the ingest step failed) and succeed.
    """
    import polars as pl

    from curation_assets.definitions import build_defs
    from curation_assets.runner import EMBED, Runner, prepare_home

    for var in ("CURATION_HOME", "DAGSTER_HOME"):  # prepare_home sets them; restored after
        monkeypatch.setenv(var, os.environ.get(var, ""))
    src = tmp_path / "src"
    write_images(src / "a", 3)
    write_images(src / "c", 2, start=20)
    (src / "m.csv").write_text("filename\nx.jpg\n")
    paths = prepare_home(str(tmp_path / "home"), source=str(src))
    lines: list[str] = []
    keys = ["a", "m.csv", "c"]
    with dg.instance_for_test() as instance:
        runner = Runner(instance, build_defs(str(paths.home)), paths.delta_root, echo=lines.append)
        runner.register(keys)
        assert runner.per_shard(keys, selection=EMBED) == ["a", "c"]
        runs = list(reversed(instance.get_runs()))  # oldest first
        summary = [
            (
                r.tags.get("dagster/partition")
                or r.tags["dagster/asset_partition_range_start"]
                + ".."
                + r.tags["dagster/asset_partition_range_end"],
                r.status.value,
            )
            for r in runs
        ]
    assert summary == [
        ("a..c", "FAILURE"),
        ("a", "SUCCESS"),
        ("m.csv", "FAILURE"),
        ("c", "SUCCESS"),
    ]
    assert list(runner.failures) == ["3 shards a .. c", "shard m.csv (alone)"]
    from curation_assets.lib.storage import DeltaStore
    from curation_assets.lib.tables import IMAGE_EMBEDDINGS

    emb = DeltaStore(paths.delta_root).read(IMAGE_EMBEDDINGS)
    assert dict(emb.group_by("shard").len().iter_rows()) == {"a": 3, "c": 2}
    assert pl.Series(lines).str.contains("a .. c: FAILED").any()


@pytest.mark.slow
def test_registering_more_shards_than_sqlite_takes_variables_for(tmp_path):
    """LAION-scale sources on the embedded default: 260k new shards register in chunks.

    One ``add_dynamic_partitions`` call binds one SQL variable per key, and sqlite refuses
    past its limit (32,766 on a stock build, 250,000 on this machine's): "too many SQL
    variables" (``curation bench partitions``, sqlite at 300k).
    """
    from curation_assets.defs.partitions import SHARDS_PARTITION
    from curation_assets.runner import Runner

    keys = [f"shard-{i:06d}.tar" for i in range(260_000)]
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        runner = Runner(instance, dg.Definitions(), str(tmp_path / "delta"), echo=lambda _: None)
        assert runner.register(keys[:10]) == keys[:10]
        assert runner.register(keys) == keys[10:]
        assert len(instance.get_dynamic_partitions(SHARDS_PARTITION)) == len(keys)
