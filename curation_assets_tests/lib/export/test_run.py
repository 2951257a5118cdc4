"""The export stage over Delta and files, shard by shard: plan, files, order, convergence."""

import os
import tarfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from curation_assets.lib.commits import last_commit
from curation_assets.lib.errors import ConfigError
from curation_assets.lib.export.manifest import curated_rows, one_row_per_kept_image
from curation_assets.lib.export.run import (
    EXPORT_STAGE,
    export_root,
    export_shards,
    kept_images,
    plan_export,
    rows_per_shard,
    run_export,
    shard_batches,
    totals,
)
from curation_assets.lib.export.shards import (
    MANIFEST_NAME,
    check_shard_key,
    published_shards,
    scan_manifest,
    shard_link,
)
from curation_assets.lib.memory import MemoryBudget
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import (
    CURATED_DATASET,
    DEDUPLICATED_IMAGES,
    FILTERED_IMAGES,
    SAMPLE_WEIGHTS,
)
from curation_assets_tests.weights_inputs import write_linear_weights, write_weight_inputs

SETTINGS = {
    "export_dir": "",
    "webdataset": False,
    "shard_size": 10,
    "soft_cap_samples": 0,
    "penalty": 0.15,
    "seed": 0,
}


def write_shard(store: DeltaStore, key: str, n: int, *, seed: int, drop: int = 0) -> None:
    """Write one shard of filtered images, dedup decisions (every 5th removed) and weights.

    ``drop`` rows (the first ones) are filtered out, as a re-filtered shard would be.
    """
    rng = np.random.default_rng(seed)
    ids = [f"{key}-{i:05d}-{rng.integers(1 << 30):x}" for i in range(n)][drop:]
    m = len(ids)
    kept = [i % 5 != 4 for i in range(m)]
    store.replace_shard(
        FILTERED_IMAGES,
        key,
        pl.DataFrame(
            {
                "image_id": ids,
                "shard": [key] * m,
                "source_uri": [f"/data/{key}/{i}.jpg" for i in ids],
                "caption": [f"caption {i}" for i in range(m)],
                "width": [64] * m,
                "height": [48] * m,
            }
        ),
    )
    store.replace_shard(
        DEDUPLICATED_IMAGES,
        key,
        pl.DataFrame(
            {
                "image_id": ids,
                "shard": [key] * m,
                "kept": kept,
                "duplicate_of": [None if k else ids[0] for k in kept],
                "similarity": [None if k else 0.97 for k in kept],
                "component_id": ids,
                "component_size": [1] * m,
                "row": list(range(m)),
            }
        ),
    )
    keep_ids = [i for i, k in zip(ids, kept, strict=True) if k]
    store.replace_shard(
        SAMPLE_WEIGHTS,
        key,
        pl.DataFrame(
            {
                "image_id": keep_ids,
                "shard": [key] * len(keep_ids),
                "weight": rng.uniform(0.2, 3.0, len(keep_ids)),
                "raw_ratio": [1.0] * len(keep_ids),
                "p_unfiltered": [0.5] * len(keep_ids),
                "p_kept": [0.9] * len(keep_ids),
                "clipped": [False] * len(keep_ids),
            }
        ),
    )


def _run(store: DeltaStore, out: Path, **overrides):
    settings = {**SETTINGS, "export_dir": str(out.resolve()), **overrides}
    return run_export(
        store,
        out,
        settings,
        soft_cap_samples=settings["soft_cap_samples"],
        penalty=settings["penalty"],
        seed=settings["seed"],
        webdataset=settings["webdataset"],
        shard_size=settings["shard_size"],
        budget=MemoryBudget(64),
    )


def _snapshot(out: Path) -> dict[str, tuple[str, int]]:
    """Every file under the export folder → (resolved path, mtime_ns)."""
    snap = {}
    for key in published_shards(out):
        for p in sorted(shard_link(out, key).iterdir()):
            snap[f"{key}/{p.name}"] = (str(p.resolve()), p.stat().st_mtime_ns)
    return snap


def _manifest(out: Path) -> pl.DataFrame:
    return scan_manifest(out).collect().sort("image_id")


@pytest.fixture
def corpus(tmp_path):
    store = DeltaStore(str(tmp_path / "delta"))
    for i in range(4):
        write_shard(store, f"shard-{i}", 30, seed=i)
    return store, tmp_path / "export"


def test_export_root_defaults_to_the_curation_home(tmp_path, monkeypatch):
    monkeypatch.setenv("CURATION_HOME", str(tmp_path / "home"))
    assert export_root("") == tmp_path / "home" / "export"
    assert export_root(str(tmp_path / "elsewhere")) == tmp_path / "elsewhere"


def test_first_export_writes_one_folder_per_shard_and_the_delta_manifest(corpus):
    store, out = corpus
    outcome = _run(store, out)
    assert outcome.plan.full and not outcome.up_to_date
    assert published_shards(out) == {f"shard-{i}" for i in range(4)}
    delta = store.read(CURATED_DATASET).sort("image_id")
    assert delta.height == 4 * 24  # every 5th image of 30 is a removed duplicate
    assert _manifest(out).equals(delta)
    assert set(store.shard_files(CURATED_DATASET.name)) == published_shards(out)
    for key in published_shards(out):
        files = pl.read_parquet(shard_link(out, key) / MANIFEST_NAME)
        assert set(files["shard"]) == {key}
    weights = store.read(SAMPLE_WEIGHTS)["weight"].to_numpy()
    figures = outcome.summary["totals"]
    assert figures["rows"] == delta.height and figures["shards"] == 4
    assert figures["weight_sum"] == pytest.approx(weights.sum())
    assert figures["ess"] == pytest.approx(weights.sum() ** 2 / (weights**2).sum())
    assert rows_per_shard(store, CURATED_DATASET.name) == {f"shard-{i}": 24 for i in range(4)}


def test_a_new_shard_writes_only_its_own_files(corpus):
    store, out = corpus
    _run(store, out)
    before = _snapshot(out)
    version = store.version(CURATED_DATASET.name)
    write_shard(store, "shard-new", 10, seed=9)
    outcome = _run(store, out)
    assert not outcome.plan.full and outcome.plan.rewrite == ["shard-new"]
    assert outcome.written is not None and outcome.written.written == ["shard-new"]
    after = _snapshot(out)
    assert {k: v for k, v in after.items() if not k.startswith("shard-new/")} == before
    assert set(after) - set(before) == {f"shard-new/{MANIFEST_NAME}"}
    assert store.changed_shards(CURATED_DATASET.name, version) == {"shard-new"}
    assert outcome.summary["totals"]["rows"] == 4 * 24 + 8


def test_a_rerun_is_a_no_op_and_lost_files_are_rewritten_alone(corpus):
    store, out = corpus
    _run(store, out)
    version = store.version(CURATED_DATASET.name)
    again = _run(store, out)
    assert again.up_to_date and store.version(CURATED_DATASET.name) == version
    before = _snapshot(out)
    (shard_link(out, "shard-2") / MANIFEST_NAME).unlink()  # someone deleted a file
    redo = _run(store, out)
    assert not redo.up_to_date and redo.plan.rewrite == ["shard-2"]
    after = _snapshot(out)
    assert {k: v for k, v in after.items() if not k.startswith("shard-2/")} == {
        k: v for k, v in before.items() if not k.startswith("shard-2/")
    }
    assert _manifest(out).equals(store.read(CURATED_DATASET).sort("image_id"))


def test_removed_and_refiltered_shards_lose_their_files_and_rows(corpus):
    store, out = corpus
    _run(store, out)
    store.replace_shard(FILTERED_IMAGES, "shard-1", FILTERED_IMAGES.empty())
    store.replace_shard(DEDUPLICATED_IMAGES, "shard-1", DEDUPLICATED_IMAGES.empty())
    store.replace_shard(SAMPLE_WEIGHTS, "shard-1", SAMPLE_WEIGHTS.empty())
    write_shard(store, "shard-3", 30, seed=3, drop=10)  # re-filtered: 10 fewer images
    outcome = _run(store, out)
    assert outcome.plan.rewrite == ["shard-1", "shard-3"]
    assert outcome.written is not None and outcome.written.removed == ["shard-1"]
    assert published_shards(out) == {"shard-0", "shard-2", "shard-3"}
    assert not (out / ".shards" / "shard-1").exists()
    assert "shard-1" not in store.shard_files(CURATED_DATASET.name)
    assert pl.read_parquet(shard_link(out, "shard-3") / MANIFEST_NAME).height == 16
    assert _manifest(out).equals(store.read(CURATED_DATASET).sort("image_id"))
    assert set(outcome.summary["shards"]) == {"shard-0", "shard-2", "shard-3"}


def test_incremental_equals_full(corpus, tmp_path):
    store, out = corpus
    _run(store, out)
    write_shard(store, "shard-4", 12, seed=4)
    write_shard(store, "shard-0", 30, seed=10)  # new weights for an old shard
    incremental = _run(store, out)
    assert incremental.plan.rewrite == ["shard-0", "shard-4"]
    full_out = tmp_path / "full"
    full = _run(store, full_out)  # other folder: a full export from scratch
    assert full.plan.full
    assert _manifest(out).equals(_manifest(full_out))
    expected = curated_rows(kept_images(store), store.read(SAMPLE_WEIGHTS))
    assert _manifest(out).equals(expected)
    inc, ful = incremental.summary["totals"], full.summary["totals"]
    assert inc["rows"] == ful["rows"] and inc["shards"] == ful["shards"]
    assert inc["weight_sum"] == pytest.approx(ful["weight_sum"])
    assert inc["ess"] == pytest.approx(ful["ess"])


def test_a_killed_run_is_rewritten_by_the_next(corpus):
    store, out = corpus
    _run(store, out)
    write_shard(store, "shard-1", 30, seed=11)
    write_shard(store, "shard-5", 7, seed=5)
    # A run killed after exporting shard-5 but before its commit row:
    export_shards(store, out, ["shard-5"], webdataset=False, shard_size=10, budget=MemoryBudget(64))
    (out / ".shards" / "shard-1" / "deadbeef0000").mkdir(parents=True)  # half-written folder
    os.symlink("nowhere", out / ".shard=shard-1.999.link")  # a swap that never happened
    outcome = _run(store, out)
    assert outcome.plan.rewrite == ["shard-1", "shard-5"]
    assert not (out / ".shards" / "shard-1" / "deadbeef0000").exists()
    assert not (out / ".shard=shard-1.999.link").is_symlink()
    expected = curated_rows(kept_images(store), store.read(SAMPLE_WEIGHTS))
    assert _manifest(out).equals(expected)
    assert store.read(CURATED_DATASET).sort("image_id").equals(expected)
    assert _run(store, out).up_to_date


def test_the_whole_file_layout_is_migrated(corpus):
    store, out = corpus
    from dataclasses import replace

    flat = replace(CURATED_DATASET, partition_by=())
    old = curated_rows(kept_images(store), store.read(SAMPLE_WEIGHTS))
    store.replace_table(flat, old)
    out.mkdir(parents=True)
    old.write_parquet(out / "curated_dataset.parquet")
    (out / ".webdataset-abc").mkdir()
    os.symlink(".webdataset-abc", out / "webdataset")
    outcome = _run(store, out)
    assert outcome.plan.full
    assert sorted(outcome.legacy_removed) == [
        str(out / "curated_dataset.parquet"),
        str(out / "webdataset"),
    ]
    assert not (out / ".webdataset-abc").exists()
    assert store.shard_files(CURATED_DATASET.name)
    assert _manifest(out).equals(old)


def test_webdataset_tars_and_soft_cap_per_run(tmp_path):
    store = DeltaStore(str(tmp_path / "delta"))
    inputs = write_weight_inputs(store, tmp_path / "images", n=120)
    write_linear_weights(store)
    out = tmp_path / "export"
    outcome = _run(store, out, webdataset=True, shard_size=25, soft_cap_samples=300)
    names: list[str] = []
    for tar_path in sorted(out.glob("shard=*/*.tar")):
        with tarfile.open(tar_path) as tar:
            names += tar.getnames()
    assert {n.split(".")[0] for n in names} == set(inputs.kept)
    assert len(names) == 3 * len(inputs.kept)
    figures = outcome.summary["totals"]
    assert figures["webdataset_samples"] == len(inputs.kept) and figures["failures"] == 0
    sample = pl.read_parquet(out / "soft_cap_sample.parquet")
    assert int(sample["count"].sum()) == 300
    assert outcome.summary["soft_cap"]["soft_cap_stats"]["n_samples"] == 300
    assert _run(store, out, webdataset=True, shard_size=25, soft_cap_samples=300).up_to_date
    resampled = _run(store, out, webdataset=True, shard_size=25, soft_cap_samples=100)
    assert not resampled.up_to_date and resampled.plan.rewrite == []  # no shard re-read
    assert int(pl.read_parquet(out / "soft_cap_sample.parquet")["count"].sum()) == 100
    _run(store, out, webdataset=True, shard_size=25)
    assert not (out / "soft_cap_sample.parquet").exists()


def test_an_unreadable_image_is_a_failure_with_its_shard(corpus):
    store, out = corpus
    outcome = _run(store, out, webdataset=True)  # the /data/... uris do not exist
    failures = outcome.summary["failures"]
    assert outcome.summary["totals"]["failures"] == 4 * 24
    assert len(failures) == 50 and {f["reason"] for f in failures} == {"read_error"}
    assert {f["shard"] for f in failures} <= {f"shard-{i}" for i in range(4)}
    assert outcome.summary["totals"]["webdataset_samples"] == 0


def test_a_shard_over_the_memory_budget_is_a_clear_error(corpus):
    store, out = corpus
    with pytest.raises(ConfigError, match="memory_budget_mb"):
        export_shards(
            store,
            out,
            ["shard-0"],
            webdataset=False,
            shard_size=10,
            budget=MemoryBudget(10 * 512 / 2**20),  # 10 rows
        )
    assert not published_shards(out)


def test_plan_reads_no_row_when_nothing_changed(corpus):
    store, out = corpus
    _run(store, out)
    last = last_commit(store, EXPORT_STAGE)
    settings = {**SETTINGS, "export_dir": str(out.resolve())}
    plan = plan_export(store, out, last, settings)
    assert not plan.full and plan.rewrite == [] and set(plan.carried) == published_shards(out)
    other = plan_export(store, out, last, {**settings, "shard_size": 99})
    assert other.full and "file settings" in other.reason


def test_totals_are_sums_of_shard_figures():
    entries = {
        "a": {"rows": 2, "weight_sum": 3.0, "weight_sq_sum": 5.0, "webdataset_shards": 1,
              "webdataset_samples": 2, "failures": 0},
        "b": {"rows": 1, "weight_sum": 1.0, "weight_sq_sum": 1.0, "webdataset_shards": 0,
              "webdataset_samples": 0, "failures": 1},
    }  # fmt: skip
    t = totals(entries)
    assert t["rows"] == 3 and t["weight_sum"] == 4.0 and t["ess"] == pytest.approx(16 / 6)
    assert t["failures"] == 1 and t["webdataset_shards"] == 1
    assert totals({})["ess_ratio"] is None


def test_shard_keys_that_cannot_name_a_folder_are_refused():
    assert check_shard_key("shard-001.tar") == "shard-001.tar"
    for bad in ("", "..", ".hidden", "a/b", "a\\b"):
        with pytest.raises(ValueError, match="cannot name an export folder"):
            check_shard_key(bad)


def test_one_row_per_kept_image(corpus):
    store, _ = corpus
    images = kept_images(store)
    rows = curated_rows(images, store.read(SAMPLE_WEIGHTS))
    assert one_row_per_kept_image(rows, images)
    assert not one_row_per_kept_image(rows.head(rows.height - 1), images)
    nan = rows.with_columns(
        weight=pl.when(pl.int_range(pl.len()) == 0).then(np.nan).otherwise("weight")
    )
    assert not one_row_per_kept_image(nan, images)


def test_batches_fit_the_budget_and_give_the_same_export(corpus, tmp_path):
    store, out = corpus
    assert shard_batches(["a", "b", "c", "d"], {"a": 5, "b": 5, "c": 9, "d": 1}, 10) == [
        ["a", "b"],
        ["c", "d"],
    ]
    with pytest.raises(ConfigError, match="split the shard"):
        shard_batches(["a"], {"a": 11}, 10)
    one_at_a_time = tmp_path / "small"
    versions = store.version(CURATED_DATASET.name) or 0
    small = export_shards(
        store,
        one_at_a_time,
        [f"shard-{i}" for i in range(4)],
        webdataset=False,
        shard_size=10,
        budget=MemoryBudget(40 * 512 / 2**20),  # 40 rows: one 30-image shard per batch
    )
    assert small.written == [f"shard-{i}" for i in range(4)]
    assert (store.version(CURATED_DATASET.name) or 0) - versions == 4  # one commit per batch
    expected = curated_rows(kept_images(store), store.read(SAMPLE_WEIGHTS))
    assert _manifest(one_at_a_time).equals(expected)
