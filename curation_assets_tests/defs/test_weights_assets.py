"""The weights_and_audit asset on small synthetic tables: checks, metadata, commit, re-run.

The end-to-end run on the demo corpus (real embeddings, after real dedup) is
``test_dedup_assets.py::test_weights_audit_and_export_of_the_kept_images``.
"""

from collections.abc import Mapping
from typing import Any

import dagster as dg
import numpy as np
import pytest

from curation_assets.defs.resources import Compute, DeltaStorage, Engine, ImageEmbedder
from curation_assets.defs.weights import weights_and_audit
from curation_assets.lib.commits import last_commit
from curation_assets.lib.tables import BIAS_AUDIT, SAMPLE_WEIGHTS
from curation_assets.lib.weights.run import WEIGHTS_STAGE
from curation_assets_tests.defs.helpers import check_results
from curation_assets_tests.weights_inputs import write_uniqueness, write_weight_inputs

CHECKS = {
    "weights_finite_positive",
    "weights_mean_one",
    "weights_within_bounds",
    "weights_ess_ratio",
    "weighted_shares_near_unfiltered",
}


def _materialize(instance, res, **config) -> dg.ExecuteInProcessResult:
    run_config = dg.RunConfig(ops={"weights_and_audit": {"config": config}} if config else {})
    result = dg.materialize(
        [weights_and_audit], instance=instance, resources=res, run_config=run_config
    )
    assert result.success
    return result


def _metadata(result: dg.ExecuteInProcessResult) -> dict[str, Mapping[str, Any]]:
    return {
        m.asset_key.to_user_string(): m.metadata
        for m in result.asset_materializations_for_node("weights_and_audit")
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("weights_assets")
    delta = DeltaStorage(root_uri=str(tmp / "delta"))
    inputs = write_weight_inputs(delta.store(), tmp / "images")
    with dg.instance_for_test() as instance:
        yield (
            instance,
            {
                "delta": delta,
                "embedder": ImageEmbedder(),
                "compute": Compute(),
                "engine": Engine(),
            },
            inputs,
        )


def test_weights_and_audit_write_both_tables_check_them_and_commit(world):
    instance, res, inputs = world
    result = _materialize(instance, res, pca_dim=4, min_support=10)
    checks = check_results(result)
    assert set(checks) == CHECKS
    for name in CHECKS - {"weighted_shares_near_unfiltered"}:
        assert checks[name] is True, name
    meta = _metadata(result)
    sw, audit = meta["sample_weights"], meta["bias_audit"]
    assert sw["probe_status"].value == "fitted" and sw["up_to_date"].value is False
    assert sw["mode"].value == "full" and sw["reason"].value == "first run"
    assert sw["probe_sample_rows"].value == len(inputs.ids) - (
        len(inputs.filtered) - len(inputs.kept)
    )  # a small corpus: the sample is every reference image
    assert sw["memory_budget_mb"].value == Compute().memory_budget_mb
    assert sw["shards_scored"].value == 2
    # the local engine: the two small shards are one group, one task in this process
    assert (sw["score_engine"].value, sw["score_tasks"].value) == ("local", 1)
    assert "score_tasks_per_node" not in sw
    assert sw["kept_images"].value == len(inputs.kept) == sw["dagster/row_count"].value
    assert "Kept images by weight" in sw["weight_distribution"].value
    assert sw["probe"].value["method"] == "kept_vs_removed"
    assert audit["concepts"].value == "none configured"
    assert "| attribute |" in audit["shares"].value
    store = res["delta"].store()
    weights = store.read(SAMPLE_WEIGHTS)
    assert sorted(weights["image_id"]) == sorted(inputs.kept)
    assert weights["weight"].mean() == pytest.approx(1.0, abs=1e-9)
    assert sw["weight_mean"].value == pytest.approx(weights["weight"].mean(), abs=1e-12)
    assert audit["dagster/row_count"].value == store.read(BIAS_AUDIT).height
    commit = last_commit(store, WEIGHTS_STAGE)
    assert commit is not None and commit.summary["kept_images"] == len(inputs.kept)
    assert commit.summary["mode"] == "full" and commit.summary["probe_id"]
    assert "Kept images by weight" in sw["weight_distribution"].value


def test_a_rerun_with_nothing_new_writes_nothing_and_reports_the_same(world):
    instance, res, _ = world
    store = res["delta"].store()
    first = _materialize(instance, res, pca_dim=4, min_support=10)
    versions = {t: store.version(t) for t in (SAMPLE_WEIGHTS.name, BIAS_AUDIT.name)}
    again = _materialize(instance, res, pca_dim=4, min_support=10)
    assert {t: store.version(t) for t in versions} == versions
    a, b = _metadata(first)["sample_weights"], _metadata(again)["sample_weights"]
    assert b["up_to_date"].value is True and b["mode"].value == "current"
    for key in ("probe_status", "probe_auc", "ess_ratio", "kept_images", "weight_max"):
        assert b[key].value == a[key].value, key
    assert check_results(again) == check_results(first)
    # another configuration is another run: the weights are refitted and rewritten
    other = _materialize(instance, res, pca_dim=4, min_support=10, w_max=2.0)
    meta = _metadata(other)["sample_weights"]
    assert meta["up_to_date"].value is False and meta["mode"].value == "full"
    assert meta["reason"].value == "probe settings changed: w_max 10.0 → 2.0"
    assert store.version(SAMPLE_WEIGHTS.name) != versions[SAMPLE_WEIGHTS.name]
    assert np.all(store.read(SAMPLE_WEIGHTS)["weight"].to_numpy() <= 2.0)


def test_a_check_only_setting_changes_nothing_and_a_bad_setting_fails_clearly(world):
    instance, res, _ = world
    store = res["delta"].store()
    _materialize(instance, res, pca_dim=4, min_support=10)
    version = store.version(SAMPLE_WEIGHTS.name)
    relaxed = _materialize(instance, res, pca_dim=4, min_support=50, max_shift_pts=5.0)
    assert _metadata(relaxed)["sample_weights"]["mode"].value == "current"
    assert store.version(SAMPLE_WEIGHTS.name) == version
    result = dg.materialize(
        [weights_and_audit],
        instance=instance,
        resources=res,
        run_config=dg.RunConfig(ops={"weights_and_audit": {"config": {"C": -1.0}}}),
        raise_on_error=False,
    )
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    assert failure is not None and "C=-1.0" in failure.message


def test_settings_chosen_once_stay_in_force_for_unconfigured_runs(world):
    """A run that sets nothing (as automation runs it) keeps the last run's probe settings."""
    instance, res, _ = world
    store = res["delta"].store()
    _materialize(instance, res, pca_dim=4, w_max=3.0, keywords=["warm"])
    version = store.version(SAMPLE_WEIGHTS.name)
    automated = _metadata(_materialize(instance, res))["sample_weights"]
    assert automated["mode"].value == "current", automated["reason"].value
    assert store.version(SAMPLE_WEIGHTS.name) == version
    kept = set(automated["settings_kept_from_last_run"].value.split(", "))
    assert {"pca_dim", "w_max", "keywords", "C", "correct_for", "method"} <= kept
    assert np.all(store.read(SAMPLE_WEIGHTS)["weight"].to_numpy() <= 3.0)
    bad = dg.materialize(
        [weights_and_audit],
        instance=instance,
        resources=res,
        run_config=dg.RunConfig(ops={"weights_and_audit": {"config": {"method": "bogus"}}}),
        raise_on_error=False,
    )
    assert not bad.success
    failure = bad.get_step_failure_events()[0].step_failure_data.error
    assert failure is not None and "method='bogus': expected one of" in failure.message


def test_uniqueness_power_weights_by_uniqueness_and_reports_it(tmp_path):
    delta = DeltaStorage(root_uri=str(tmp_path / "delta"))
    store = delta.store()
    write_weight_inputs(store, tmp_path / "images", images=False)
    res = {
        "delta": delta,
        "embedder": ImageEmbedder(),
        "compute": Compute(),
        "engine": Engine(),
    }
    with dg.instance_for_test() as instance:
        failed = dg.materialize(
            [weights_and_audit],
            instance=instance,
            resources=res,
            run_config=dg.RunConfig(
                ops={"weights_and_audit": {"config": {"pca_dim": 4, "uniqueness_power": 1.0}}}
            ),
            raise_on_error=False,
        )
        assert not failed.success
        error = failed.get_step_failure_events()[0].step_failure_data.error
        assert error is not None and "image_uniqueness was never materialized" in error.message
        write_uniqueness(store, ["shard-a"])  # shard-b not scored yet
        off = _metadata(_materialize(instance, res, pca_dim=4))["sample_weights"]
        assert off["uniqueness_power"].value == 0.0 and "uniqueness_missing" not in off
        result = _materialize(instance, res, pca_dim=4, uniqueness_power=1.0)
    meta = _metadata(result)["sample_weights"]
    checks = check_results(result)
    for name in ("weights_finite_positive", "weights_mean_one", "weights_within_bounds"):
        assert checks[name] is True, name
    assert meta["mode"].value == "full"
    assert meta["reason"].value == "uniqueness settings changed: uniqueness_power 0.0 → 1.0"
    assert meta["uniqueness_power"].value == 1.0 and meta["uniqueness_floor"].value == 0.01
    assert 0.0 < meta["uniqueness_reference"].value <= 0.6
    kept_b = store.read(SAMPLE_WEIGHTS).filter(shard="shard-b").height
    assert kept_b > 0 and meta["uniqueness_missing"].value == kept_b
    assert meta["uniqueness_multiplier_mean"].value > 0
