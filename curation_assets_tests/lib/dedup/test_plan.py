"""The dedup plan: full, incremental or current, and the reason, straight from plan_dedup."""

from dataclasses import replace

import pytest

from curation_assets.lib.dedup import DedupInputs, load_inputs, plan_dedup
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import DUPLICATE_PAIRS, FILTERED_IMAGES, N_CLUSTERINGS
from curation_assets_tests.lib.dedup.helpers import (
    POLICY,
    add_shard,
    run_and_write,
    vectors,
    write_centroids,
)

TAU = 0.95


@pytest.fixture
def store(tmp_path) -> DeltaStore:
    s = DeltaStore(str(tmp_path / "delta"))
    write_centroids(s)
    add_shard(s, "a", vectors(20, 3, seed=1))
    return s


def _plan(store: DeltaStore, inputs: DedupInputs | None = None, **kwargs):
    args = {"tau": TAU, "policy": POLICY, **kwargs}
    return plan_dedup(store, inputs or load_inputs(store), **args)


def test_first_run_is_full(store):
    plan = _plan(store)
    assert (plan.mode, plan.reason) == ("full", "first run")
    assert plan.commit is None and plan.old is None and plan.torn == []


def test_nothing_new_since_the_commit_is_current_with_the_committed_tables(store):
    first = run_and_write(store)
    plan = _plan(store)
    assert plan.mode == "current" and "no new image since the last run (20 images)" in plan.reason
    assert plan.commit is not None and plan.old is not None and plan.old_pairs is not None
    assert plan.old.height == 20 and plan.old["row"].to_list() == list(range(20))
    assert plan.old_pairs.height == first.pairs.height


def test_new_images_with_the_same_parameters_are_incremental(store):
    run_and_write(store)
    add_shard(store, "b", vectors(7, 0, seed=2), start=100)
    plan = _plan(store)
    assert plan.mode == "incremental"
    assert plan.reason == "extends the last run (20 images) by 7"
    assert plan.old is not None and plan.old.height == 20


def test_mode_full_is_obeyed(store):
    run_and_write(store)
    plan = _plan(store, force_full=True)
    assert plan.mode == "full" and "config mode=full" in plan.reason


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"tau": 0.9}, "tau changed 0.95 → 0.9"),
        ({"policy": ("earliest", "resolution")}, "policy changed resolution,earliest,"),
        ({"model_id": "other:model@x"}, "embedding model changed"),
        ({"versions": ["x"] * N_CLUSTERINGS}, "centroids were retrained since the last run"),
    ],
)
def test_a_changed_parameter_recomputes_in_full_and_says_which(store, change, reason):
    run_and_write(store)
    inputs = load_inputs(store)
    params = {k: v for k, v in change.items() if k in ("tau", "policy")}
    fields = {k: v for k, v in change.items() if k not in params}
    plan = _plan(store, replace(inputs, **fields), **params)
    assert plan.mode == "full" and reason in plan.reason, plan.reason
    assert plan.commit is not None and plan.old is None


def test_an_image_that_left_the_filtered_set_recomputes_in_full(store):
    run_and_write(store)
    kept = store.read(FILTERED_IMAGES, shards=["a"])
    store.replace_shard(FILTERED_IMAGES, "a", kept.head(15))
    plan = _plan(store)
    assert plan.mode == "full"
    assert "5 previously deduplicated images left the filtered set" in plan.reason


def test_a_previous_run_over_no_image_is_not_extended(tmp_path):
    store = DeltaStore(str(tmp_path / "delta"))
    write_centroids(store)
    run_and_write(store)  # nothing filtered yet: a committed run over 0 images
    add_shard(store, "a", vectors(5, 0, seed=3))
    plan = _plan(store)
    assert plan.mode == "full" and "covered no image" in plan.reason


def test_outputs_written_after_the_commit_are_recovered_incrementally(store):
    first = run_and_write(store)
    store.replace_table(DUPLICATE_PAIRS, first.pairs.head(0))  # a run killed before its commit
    plan = _plan(store)
    assert plan.torn == [DUPLICATE_PAIRS.name]
    assert plan.mode == "incremental" and "recovering: duplicate_pairs" in plan.reason
    assert plan.old_pairs is not None and plan.old_pairs.height == first.pairs.height
