"""The export stage over Delta and files: its inputs, the files it writes, the row check."""

import tarfile

import numpy as np
import polars as pl
import pytest

from curation_assets.lib.export.manifest import curated_rows, one_row_per_kept_image
from curation_assets.lib.export.publish import files_unchanged
from curation_assets.lib.export.run import (
    FILE_KEYS,
    export_root,
    kept_images,
    write_export_files,
)
from curation_assets.lib.storage import DeltaStore
from curation_assets_tests.weights_inputs import write_weight_inputs


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export_run")
    store = DeltaStore(str(tmp / "delta"))
    inputs = write_weight_inputs(store, tmp / "images", n=120)
    images = kept_images(store)
    weights = pl.DataFrame(
        {"image_id": images["image_id"], "weight": np.linspace(0.5, 1.5, images.height)}
    )
    return inputs, images, curated_rows(images, weights)


def test_export_root_defaults_to_the_curation_home(tmp_path, monkeypatch):
    monkeypatch.setenv("CURATION_HOME", str(tmp_path / "home"))
    assert export_root("") == tmp_path / "home" / "export"
    assert export_root(str(tmp_path / "elsewhere")) == tmp_path / "elsewhere"


def test_kept_images_are_the_filtered_images_dedup_kept(world):
    inputs, images, _ = world
    assert sorted(images["image_id"]) == sorted(inputs.kept)
    assert {"source_uri", "caption", "width", "height", "shard"} <= set(images.columns)


def test_manifest_alone_is_one_stamped_file(world, tmp_path):
    _, _, rows = world
    summary = write_export_files(
        rows, tmp_path, soft_cap_samples=0, penalty=0.15, seed=0, webdataset=False, shard_size=10
    )
    assert summary["extra"] == {"manifest": str(tmp_path / "curated_dataset.parquet")}
    assert summary["failures"] == [] and "soft_cap_stats" not in summary
    assert list(summary["files"]) == [str(tmp_path / "curated_dataset.parquet")]
    assert pl.read_parquet(tmp_path / "curated_dataset.parquet").equals(rows)
    assert files_unchanged(summary["files"])
    (tmp_path / "curated_dataset.parquet").unlink()
    assert not files_unchanged(summary["files"])


def test_sample_and_webdataset_with_their_figures(world, tmp_path):
    _, _, rows = world
    summary = write_export_files(
        rows, tmp_path, soft_cap_samples=300, penalty=0.15, seed=0, webdataset=True, shard_size=25
    )
    extra = summary["extra"]
    sample = pl.read_parquet(extra["soft_cap_sample"])
    assert int(sample["count"].sum()) == 300 and (sample["count"] > 0).all()
    assert summary["soft_cap_stats"]["n_samples"] == 300
    assert "count_histogram" not in summary["soft_cap_stats"]
    assert extra["webdataset_samples"] == rows.height and summary["failures"] == []
    assert extra["webdataset_shards"] == -(-rows.height // 25)
    names = []
    for path in sorted((tmp_path / "webdataset").glob("*.tar")):
        with tarfile.open(path) as tar:
            names += tar.getnames()
    assert len(names) == 3 * rows.height
    assert set(summary["files"]) == {str(extra[k]) for k in FILE_KEYS}


def test_an_unreadable_image_is_a_failure_not_a_lost_export(world, tmp_path):
    _, _, rows = world
    broken = rows.with_columns(
        source_uri=pl.when(pl.int_range(pl.len()) == 0)
        .then(pl.lit(str(tmp_path / "missing.jpg")))
        .otherwise(pl.col("source_uri"))
    )
    summary = write_export_files(
        broken, tmp_path, soft_cap_samples=0, penalty=0.15, seed=0, webdataset=True, shard_size=50
    )
    assert [f["reason"] for f in summary["failures"]] == ["read_error"]
    assert summary["extra"]["webdataset_samples"] == rows.height - 1


def test_one_row_per_kept_image(world):
    _, images, rows = world
    assert one_row_per_kept_image(rows, images)
    assert not one_row_per_kept_image(rows.head(rows.height - 1), images)
    twice = pl.concat([rows.head(rows.height - 1), rows.head(1)])
    assert not one_row_per_kept_image(twice, images)
    nan = rows.with_columns(
        weight=pl.when(pl.int_range(pl.len()) == 0).then(np.nan).otherwise("weight")
    )
    assert not one_row_per_kept_image(nan, images)
