"""The curated_dataset asset on small synthetic tables: files, checks, commit, re-run.

The end-to-end run on the demo corpus (real embeddings, after real dedup) is
``test_dedup_assets.py::test_weights_audit_and_export_of_the_kept_images``.
"""

from collections.abc import Mapping
from typing import Any

import dagster as dg
import polars as pl
import pytest

from curation_assets.defs.export import curated_dataset
from curation_assets.defs.resources import Compute, DeltaStorage
from curation_assets.lib.commits import last_commit
from curation_assets.lib.export.run import EXPORT_STAGE
from curation_assets.lib.export.shards import (
    MANIFEST_NAME,
    manifest_glob,
    published_shards,
    shard_link,
)
from curation_assets.lib.tables import CURATED_DATASET, SAMPLE_WEIGHTS
from curation_assets.lib.weights.run import fit_weights, load_weight_inputs
from curation_assets_tests.defs.helpers import check_results
from curation_assets_tests.weights_inputs import write_weight_inputs


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export_assets")
    delta = DeltaStorage(root_uri=str(tmp / "delta"))
    store = delta.store()
    inputs = write_weight_inputs(store, tmp / "images", n=160)
    frame, x, kept = load_weight_inputs(store, "filter")
    fitted = fit_weights(
        frame, x, kept, method="kept_vs_removed", C=1.0, pca_dim=4, seed=0, w_min=0.1, w_max=10
    )
    store.replace_table(SAMPLE_WEIGHTS, fitted.frame)
    with dg.instance_for_test() as instance:
        yield instance, {"delta": delta, "compute": Compute()}, inputs, tmp / "export"


def _export(instance, res, **config) -> dg.ExecuteInProcessResult:
    result = dg.materialize(
        [curated_dataset],
        instance=instance,
        resources=res,
        run_config=dg.RunConfig(ops={"curated_dataset": {"config": config}}),
    )
    assert result.success
    return result


def _metadata(result: dg.ExecuteInProcessResult) -> Mapping[str, Any]:
    return result.asset_materializations_for_node("curated_dataset")[0].metadata


def test_the_manifest_sample_and_shards_are_written_and_checked(world):
    instance, res, inputs, out = world
    config = {"export_dir": str(out), "soft_cap_samples": 200, "webdataset": True}
    result = _export(instance, res, shard_size=40, **config)
    assert check_results(result) == {"one_row_per_kept_image": True, "every_image_exported": True}
    meta = _metadata(result)
    store = res["delta"].store()
    rows = store.read(CURATED_DATASET)
    assert sorted(rows["image_id"]) == sorted(inputs.kept)
    assert meta["dagster/row_count"].value == rows.height and meta["up_to_date"].value is False
    assert meta["weight_sum"].value == pytest.approx(rows.height)  # mean weight 1
    assert meta["ess"].value <= rows.height
    assert meta["shards"].value == 2 and meta["shards_rewritten"].value == 2
    assert meta["manifest"].value == manifest_glob(out)
    assert meta["webdataset_samples"].value == rows.height
    assert meta["soft_cap_stats"].value["n_samples"] == 200
    manifest = pl.read_parquet(manifest_glob(out), hive_partitioning=False)
    assert manifest.sort("image_id").equals(rows.sort("image_id"))
    assert int(pl.read_parquet(out / "soft_cap_sample.parquet")["count"].sum()) == 200
    assert len(list(out.glob("shard=*/*.tar"))) >= 2
    commit = last_commit(store, EXPORT_STAGE)
    assert commit is not None and commit.config["export_dir"] == str(out.resolve())
    assert set(commit.summary["shards"]) == set(rows["shard"])


def test_a_rerun_is_a_no_op_until_a_file_changes(world):
    instance, res, _, out = world
    store = res["delta"].store()
    config = {"export_dir": str(out)}
    _export(instance, res, **config)
    version = store.version(CURATED_DATASET.name)
    again = _export(instance, res, **config)
    assert _metadata(again)["up_to_date"].value is True
    assert store.version(CURATED_DATASET.name) == version
    assert check_results(again)["one_row_per_kept_image"] is True
    shard = sorted(published_shards(out))[0]
    (shard_link(out, shard) / MANIFEST_NAME).unlink()  # someone removed a file: export again
    redo = _export(instance, res, **config)
    meta = _metadata(redo)
    assert meta["up_to_date"].value is False and meta["shards_rewritten"].value == 1
    assert (shard_link(out, shard) / MANIFEST_NAME).is_file()


def test_settings_set_once_stay_in_force_for_runs_that_leave_them_unset(world):
    """A launchpad choice survives the next automated run (no config): no double rewrite."""
    instance, res, _, out = world
    store = res["delta"].store()
    chosen = {"export_dir": str(out), "webdataset": True, "shard_size": 30, "soft_cap_samples": 50}
    _export(instance, res, **chosen)
    tars = sorted(out.glob("shard=*/*.tar"))
    assert tars
    version = store.version(CURATED_DATASET.name)

    automated = _export(instance, res, export_dir=str(out))  # what automation requests
    meta = _metadata(automated)
    assert meta["up_to_date"].value is True and store.version(CURATED_DATASET.name) == version
    assert sorted(out.glob("shard=*/*.tar")) == tars
    assert meta["settings"].value["webdataset"] is True
    assert meta["settings"].value["shard_size"] == 30
    kept = meta["settings_kept_from_last_run"].value
    assert {"webdataset", "shard_size", "soft_cap_samples", "penalty", "seed"} <= set(
        kept.split(", ")
    )

    off = _export(instance, res, export_dir=str(out), webdataset=False)  # an explicit change
    assert _metadata(off)["up_to_date"].value is False
    assert not list(out.glob("shard=*/*.tar"))
    assert _metadata(off)["settings"].value["shard_size"] == 30  # the rest kept
    again = _export(instance, res, export_dir=str(out))
    assert _metadata(again)["up_to_date"].value is True
    assert not list(out.glob("shard=*/*.tar"))
    commit = last_commit(store, EXPORT_STAGE)
    assert commit is not None and commit.config["webdataset"] is False
