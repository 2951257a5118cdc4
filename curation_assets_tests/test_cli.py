"""The `curation` command end to end, as a user runs it (subprocess, its own home)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from curation_assets_tests.conftest import write_images


def curation(*args: str, home: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "CURATION_"))}
    return subprocess.run(
        [sys.executable, "-m", "curation_assets.cli", *args, "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=home.parent,
    )


def _report(stdout: str) -> dict[str, str]:
    return dict(re.findall(r"^\s+(\w+)\s+(\d+)$", stdout, flags=re.MULTILINE))


@pytest.mark.slow
def test_run_on_the_demo_corpus_accounts_for_every_planted_input(tmp_path):
    home = tmp_path / "home"
    proc = curation("run", home=home)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = _report(proc.stdout)
    planted = int(report["inputs_planted"])
    assert planted > 600
    assert report["inputs_traced_to_one_table"] == str(planted)
    assert report["corrupt_quarantined"] == report["corrupt_planted"]
    assert report["corrupt_with_expected_reason"] == report["corrupt_planted"]
    assert report["clean_inputs_wrongly_quarantined"] == "0"
    assert report["exact_duplicate_groups_collapsed"] == report["exact_duplicate_groups_planted"]
    assert report["raw_images"] == report["image_embeddings"]
    assert "time per stage" in proc.stdout and "image_embeddings" in proc.stdout
    raw = pl.read_delta(str(home / "delta" / "raw_images"))
    assert raw.height == int(report["raw_images"])
    assert sorted(raw["shard"].unique()) == [
        "shard-000",
        "shard-001.tar",
        "shard-002.csv",
        "shard-003.parquet",
    ]
    assert (home / "dagster" / "dagster.yaml").is_file()


def test_a_failing_shard_fails_the_command_but_not_the_other_shards(tmp_path):
    src = tmp_path / "src"
    write_images(src / "good", 3)
    (src / "bad.csv").write_text("no_path_column\nx.jpg\n")
    proc = curation("run", "--source", str(src), home=tmp_path / "home")
    assert proc.returncode == 1
    assert "shard bad.csv" in proc.stderr and "add a 'path' column" in proc.stderr
    assert "good: ok" in proc.stdout
    raw = pl.read_delta(str(tmp_path / "home" / "delta" / "raw_images"))
    assert raw.height == 3


def test_a_missing_source_is_a_clear_error(tmp_path):
    proc = curation("run", "--source", str(tmp_path / "nope"), home=tmp_path / "home")
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr
