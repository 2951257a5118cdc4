"""The probe's bounded sample and the probe kept in Delta."""

import contextlib
import threading

import numpy as np
import polars as pl
import pytest

from curation_assets.lib.memory import MemoryBudget
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import WEIGHT_PROBES
from curation_assets.lib.weights.fit import DEFAULT_MAX_TRAIN_PER_CLASS
from curation_assets.lib.weights.probe import (
    MIN_SAMPLE_SHARDS,
    OVERSAMPLE,
    fit_sampled_probe,
    gather_sample,
    load_probe,
    per_class_rows,
    plan_sample,
    probe_row,
    store_probe,
    unit_hash,
)
from curation_assets.lib.weights.shards import shard_sizes
from curation_assets_tests.weights_inputs import write_weight_inputs


def _sizes(n_shards: int, per_shard: int, kept_share: float) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "shard": [f"s{i:03d}" for i in range(n_shards)],
            "n_reference": [per_shard] * n_shards,
            "n_kept": [int(per_shard * kept_share)] * n_shards,
        }
    )


def test_the_sample_size_follows_the_memory_budget():
    assert per_class_rows(MemoryBudget(2048), 512) == 32_768
    assert per_class_rows(MemoryBudget(64), 512) == 1024
    assert per_class_rows(MemoryBudget(1e6), 8) == DEFAULT_MAX_TRAIN_PER_CLASS
    assert per_class_rows(MemoryBudget(0.001), 512) == 50


def test_the_sample_reads_a_seeded_subset_of_shards_and_draws_rows_at_class_rates():
    sizes = _sizes(500, 1000, 0.7)  # 350 000 kept, 150 000 removed
    plan = plan_sample(sizes, per_class=5000, seed=0, method="kept_vs_removed")
    assert MIN_SAMPLE_SHARDS <= len(plan.shards) < 500
    kept_in = 700 * len(plan.shards)
    removed_in = 300 * len(plan.shards)
    assert removed_in >= OVERSAMPLE * 5000 and removed_in - 300 < OVERSAMPLE * 5000
    assert plan.rate_kept == pytest.approx(5000 / kept_in)
    assert plan.rate_removed == pytest.approx(5000 / removed_in)
    assert plan_sample(sizes, per_class=5000, seed=0, method="kept_vs_removed") == plan
    other = plan_sample(sizes, per_class=5000, seed=1, method="kept_vs_removed")
    assert other.shards != plan.shards  # the seed picks the shards
    dalle = plan_sample(sizes, per_class=5000, seed=0, method="unfiltered_vs_filtered")
    assert dalle.rate_kept == dalle.rate_removed  # the reference sample stays uniform
    small = plan_sample(_sizes(3, 100, 0.5), per_class=5000, seed=0, method="kept_vs_removed")
    assert sorted(small.shards) == ["s000", "s001", "s002"] and small.rate_kept == 1.0


def test_unit_hash_is_stable_and_uniform():
    keys = [f"k{i}" for i in range(20_000)]
    u = unit_hash(3, keys)
    assert np.array_equal(u, unit_hash(3, keys)) and not np.array_equal(u, unit_hash(4, keys))
    assert 0.0 <= u.min() and u.max() < 1.0 and abs(u.mean() - 0.5) < 0.01
    assert unit_hash(3, ["k5"])[0] == u[5]  # a key's draw does not depend on the others


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("weights_probe")
    store = DeltaStore(str(tmp / "delta"))
    write_weight_inputs(store, tmp / "images", n=1200, images=False)
    return store


def _fitted(store: DeltaStore):
    sizes = shard_sizes(store, "filter")
    plan = plan_sample(sizes, per_class=200, seed=0, method="kept_vs_removed")
    sample = gather_sample(
        store,
        plan,
        correct_for="filter",
        seed=0,
        sizes=dict(zip(sizes["shard"], sizes["n_reference"], strict=True)),
        max_rows=300,
    )
    assert sample.ids == sorted(sample.ids) and sample.model_id == "test:model@none"
    assert 150 <= int(sample.kept.sum()) <= 250 and 150 <= int((~sample.kept).sum()) <= 250
    probe = fit_sampled_probe(
        sample,
        n_reference=int(sizes["n_reference"].sum()),
        n_kept=int(sizes["n_kept"].sum()),
        method="kept_vs_removed",
        C=1.0,
        pca_dim=4,
        seed=0,
        per_class=200,
        w_min=0.1,
        w_max=10.0,
    )
    return sizes, sample, probe


def test_a_stored_probe_scores_exactly_like_the_fitted_one(store):
    sizes, sample, probe = _fitted(store)
    assert probe.model.status == "fitted" and probe.sample_rows == len(sample.ids)
    n_kept, n_ref = int(sizes["n_kept"].sum()), int(sizes["n_reference"].sum())
    assert probe.model.prior_kept == pytest.approx(n_kept / n_ref)
    assert len(probe.train_folds) == 2 * probe.model.n_train_per_class
    store.append(WEIGHT_PROBES, probe_row(probe, {"probe": {"seed": 0}}))
    back = load_probe(store, probe.probe_id)
    assert back.train_folds == probe.train_folds and back.scale == probe.scale
    x = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    fold = np.array([i % 6 - 1 for i in range(50)])  # unseen rows and every fold
    np.testing.assert_array_equal(back.model.log_ratio(x, fold), probe.model.log_ratio(x, fold))
    with pytest.raises(ValueError, match="not in weight_probes"):
        load_probe(store, "nope")


def test_two_writers_storing_one_probe_at_once_leave_one_row(tmp_path, store):
    """Both pass the "already there?" check before either writes: still one row."""
    _, _, probe = _fitted(store)
    target = DeltaStore(str(tmp_path / "delta"))
    both_checked = threading.Barrier(2)
    write = target._write

    def write_after_both_checked(name, data, **kwargs):
        with contextlib.suppress(threading.BrokenBarrierError):
            both_checked.wait(timeout=30)
        return write(name, data, **kwargs)

    target._write = write_after_both_checked  # type: ignore[method-assign]
    errors: list[BaseException] = []

    def store_it() -> None:
        try:
            store_probe(target, probe, {"probe": {"seed": 0}})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=store_it) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    rows = target.read(WEIGHT_PROBES)
    assert rows["probe_id"].to_list() == [probe.probe_id]
    store_probe(target, probe, {"probe": {"seed": 0}})  # there: nothing written
    assert target.read(WEIGHT_PROBES).height == 1
