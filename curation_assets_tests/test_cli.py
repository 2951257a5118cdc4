"""The `curation` command end to end, as a user runs it (subprocess, its own home)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import DEDUPLICATED_IMAGES
from curation_assets_tests.conftest import write_images


def curation(
    *args: str, home: Path, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "CURATION_"))}
    env = {**clean, **(env or {})}
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
    # The stand-in category (photographs) is trained from the seed labels and filters.
    assert float(re.search(r"^\s+recall\s+([\d.]+)$", proc.stdout, re.M).group(1)) >= 0.95
    assert float(re.search(r"^\s+precision\s+([\d.]+)$", proc.stdout, re.M).group(1)) >= 0.7
    before = float(re.search(r"warm_share_unfiltered_pct\s+([\d.]+)", proc.stdout).group(1))
    after = float(re.search(r"warm_share_filtered_pct\s+([\d.]+)", proc.stdout).group(1))
    assert before - after >= 10, (before, after)
    assert "time per stage" in proc.stdout and "image_embeddings" in proc.stdout
    # Near-duplicates: planted edits of one base image end up in one group.
    assert re.search(r"^dedup: full \(first run\)", proc.stdout, re.M)
    dedup = dict(re.findall(r"^\s+(pair_recall|removal_precision)\s+([\d.]+)$", proc.stdout, re.M))
    assert float(dedup["pair_recall"]) >= 0.85 and float(dedup["removal_precision"]) >= 0.85
    assert int(report["deduplicated_images"]) == int(report["filtered_images"])
    raw = pl.read_delta(str(home / "delta" / "raw_images"))
    assert raw.height == int(report["raw_images"])
    assert sorted(raw["shard"].unique()) == [
        "shard-000",
        "shard-001.tar",
        "shard-002.csv",
        "shard-003.parquet",
    ]
    assert (home / "dagster" / "dagster.yaml").is_file()
    # Active learning: the queue exports as CSV, Label Studio tasks and an HTML contact sheet.
    out = tmp_path / "queue"
    proc = curation("labels", "export-queue", "--out", str(out), home=home)
    assert proc.returncode == 0, proc.stderr
    queue = pl.read_csv(out / "label_queue.csv")
    assert queue.height > 0 and set(queue["category"]) == {"demo_photograph"}
    assert (out / "label_studio_tasks.json").stat().st_size > 0
    assert "data:image/jpeg;base64," in (out / "contact_sheet.html").read_text()
    # τ: the sweep from the stored pairs (with the demo's ground truth), then a retune to a row
    proc = curation("dedup", "sweep", "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    sweep = json.loads(proc.stdout)
    assert sweep["truth"] and sweep["tau_min"] == pytest.approx(sweep["tau"] - 0.05)
    row = next(r for r in sweep["sweep"] if r["tau"] == pytest.approx(0.9))
    assert 0 < row["precision"] <= 1 and 0 < row["recall"] <= 1
    proc = curation("dedup", "retune", "--tau", "0.9", home=home)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"^dedup retune: .*no search", proc.stdout, re.M), proc.stdout
    assert f"{row['removed']} of" in proc.stdout and f"{row['pairs']} pairs" in proc.stdout
    kept = DeltaStore(str(home / "delta")).read(DEDUPLICATED_IMAGES)  # merged with its changes
    assert kept.height - kept["kept"].sum() == row["removed"]


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


def test_labels_import_is_all_or_nothing_and_the_queue_exports(tmp_path):
    """The loop: run -> export queue -> label -> import -> (retrain)."""
    home = tmp_path / "home"
    src = tmp_path / "src"
    write_images(src / "s", 30)
    spec = tmp_path / "categories.yaml"
    spec.write_text(
        "categories:\n  - name: even\n    description: even-numbered images\n"
        "    target_recall: 0.9\n"
    )
    env = {"CURATION_CATEGORIES": str(spec)}
    proc = curation("run", "--source", str(src), home=home, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "skipped" in proc.stdout  # no labels yet: the category is skipped, not invented
    images = sorted((src / "s").glob("*.jpg"))
    good = tmp_path / "labels.csv"
    good.write_text(
        "source_uri,category,label\n"
        + "".join(f"{p},even,{int(i % 2 == 0)}\n" for i, p in enumerate(images[:24]))
    )
    bad = tmp_path / "bad.csv"
    bad.write_text(good.read_text() + f"{src / 's' / 'nope.jpg'},even,1\n{images[0]},odd,1\n")
    proc = curation("labels", "import", str(bad), home=home, env=env)
    assert proc.returncode == 1 and "nothing imported" in proc.stderr
    assert "unknown" in proc.stderr.lower()
    assert not (home / "delta" / "labels").exists()
    proc = curation("labels", "import", str(good), home=home, env=env)
    assert proc.returncode == 0 and "imported 24 labels" in proc.stdout
    again = curation("labels", "import", str(good), home=home, env=env)
    assert again.returncode == 0 and "imported 0 labels" in again.stdout
    labels = pl.read_delta(str(home / "delta" / "labels"))
    assert labels.height == 24 and set(labels["category"]) == {"even"}
    proc = curation("labels", "export-queue", home=home, env=env)
    assert proc.returncode == 1 and "label queue is empty" in proc.stderr
