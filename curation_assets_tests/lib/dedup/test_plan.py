"""The dedup plan: full, incremental or current, the shards to redo and the reason."""

import pytest

from curation_assets.lib.cluster import load_centroids
from curation_assets.lib.dedup import plan_dedup
from curation_assets.lib.dedup.layout import reset
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import DUPLICATE_PAIRS, FILTERED_IMAGES, N_CLUSTERINGS
from curation_assets_tests.lib.dedup.helpers import (
    MODEL,
    POLICY,
    add_shard,
    assign_shard_rows,
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


def _versions(store: DeltaStore) -> list[str]:
    out = []
    for c in range(N_CLUSTERINGS):
        cent = load_centroids(store, c)
        assert cent is not None
        out.append(cent.version)
    return out


def _plan(store: DeltaStore, **kwargs):
    args = {
        "tau": TAU,
        "policy": POLICY,
        "model_id": MODEL,
        "versions": _versions(store),
        **kwargs,
    }
    return plan_dedup(store, **args)


def test_first_run_is_full_over_every_filtered_shard(store):
    add_shard(store, "b", vectors(4, 0, seed=2), assign_rows=False)
    plan = _plan(store)
    assert (plan.mode, plan.reason) == ("full", "first run")
    assert plan.commit is None and plan.redo == {"a", "b"} and plan.torn == []


def test_nothing_changed_since_the_commit_is_current(store):
    run_and_write(store)
    plan = _plan(store)
    assert plan.mode == "current"
    assert "no input changed since the last run (1 shards)" in plan.reason
    assert plan.covered == {"a"} and plan.redo == set() and plan.layout is not None


def test_a_new_shard_is_incremental_and_only_it_is_redone(store):
    run_and_write(store)
    add_shard(store, "b", vectors(7, 0, seed=2), start=100)
    plan = _plan(store)
    assert plan.mode == "incremental" and plan.redo == {"b"}
    assert plan.reason == "extends the last run (1 shards): 1 new shards, 0 changed"


def test_a_refiltered_or_reassigned_shard_is_redone(store):
    run_and_write(store)
    kept = store.read(FILTERED_IMAGES, shards=["a"])
    store.replace_shard(FILTERED_IMAGES, "a", kept.head(15))
    plan = _plan(store)
    assert plan.mode == "incremental" and plan.redo == {"a"} and "1 changed" in plan.reason
    run_and_write(store)
    assign_shard_rows(store, "a", kept.head(15)["image_id"].to_list(), vectors(20, 3, seed=1)[:15])
    assert _plan(store).redo == {"a"}


def test_mode_full_is_obeyed(store):
    run_and_write(store)
    plan = _plan(store, force_full=True)
    assert plan.mode == "full" and "config mode=full" in plan.reason


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"tau": 0.9}, "τ = 0.9 is below the stored floor τ_min = 0.95"),
        ({"tau": 0.97, "tau_min": 0.9}, "τ_min lowered 0.95 → 0.9"),
        ({"policy": ("earliest", "resolution")}, "policy changed resolution,earliest,"),
        ({"model_id": "other:model@x"}, "embedding model changed"),
        ({"versions": ["x"] * N_CLUSTERINGS}, "centroids were retrained since the last run"),
    ],
)
def test_a_changed_parameter_recomputes_in_full_and_says_which(store, change, reason):
    run_and_write(store)
    plan = _plan(store, **change)
    assert plan.mode == "full" and reason in plan.reason, plan.reason
    assert plan.commit is not None and plan.redo == {"a"}


def test_outputs_written_after_the_commit_are_recovered_incrementally(store):
    first = run_and_write(store)
    store.replace_table(DUPLICATE_PAIRS, first.pairs.head(0))  # a run killed before its commit
    plan = _plan(store)
    assert plan.torn == [DUPLICATE_PAIRS.name]
    assert plan.mode == "incremental" and "recovering: duplicate_pairs" in plan.reason


def test_a_full_run_killed_while_laying_out_is_redone_in_full(store):
    run_and_write(store)
    reset(store)  # what a full run does first; then it was killed
    plan = _plan(store)
    assert plan.mode == "full" and "laying out dedup_members anew" in plan.reason
