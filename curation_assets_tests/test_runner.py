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


def _run_records(home: Path) -> list[dg.DagsterRun]:
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        return list(instance.get_runs())


@pytest.mark.timeout(180)
def test_ctrl_c_stops_the_whole_sequence_and_frees_the_pool_slot(tmp_path):
    """SIGINT while shard a embeds: no run for shard b, exit 130, one line, no slot held."""
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
    assert stderr_lines[-1].startswith("interrupted during shard a (run "), stderr_lines
    assert stderr_lines[-1].endswith("; no further run started"), stderr_lines
    assert "shard b" not in stdout_text and "classifiers:" not in stdout_text, stdout_text
    runs = _run_records(home)
    assert [(r.job_name, r.tags.get("dagster/partition")) for r in runs] == [("per_shard_job", "a")]
    assert runs[0].is_finished, runs[0].status
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        assert pool_slots(instance) == []
