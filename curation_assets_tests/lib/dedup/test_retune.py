"""τ retuned from the stored pairs equals a full run at that τ; the sweep equals brute force."""

import json

import numpy as np
import polars as pl
import pytest

from curation_assets.lib.dedup import pairs_at, read_truth, sweep_grid, tau_sweep
from curation_assets.lib.errors import ConfigError
from curation_assets.lib.tables import CANDIDATE_PAIRS, DEDUP_MEMBERS, DUPLICATE_MEMBERS
from curation_assets_tests.lib.dedup.helpers import run_and_write
from curation_assets_tests.lib.dedup.test_scale import N_SHARDS, _add, _store, _tables, corpus

__all__ = ["corpus"]  # the module-scoped fixture, shared with test_scale

FLOOR = 0.9


def _state(store) -> tuple[pl.DataFrame, ...]:
    images, pairs = _tables(store)
    band = store.read(CANDIDATE_PAIRS).sort("image_id_a", "image_id_b")
    members = store.read(DUPLICATE_MEMBERS).sort("image_id")
    return images, pairs, band, members


def _assert_same(a, b) -> None:
    names = ("deduplicated_images", "duplicate_pairs", "candidate_pairs", "duplicate_members")
    for left, right, name in zip(a, b, names, strict=True):
        assert left.equals(right), name


@pytest.mark.parametrize("new_tau", [0.93, 0.97, FLOOR])
def test_a_retuned_tau_equals_a_full_run_at_that_tau_without_searching(tmp_path, corpus, new_tau):
    expected_store = _store(tmp_path / "full", corpus)
    _add(expected_store, corpus, range(N_SHARDS))
    run_and_write(expected_store, tau=new_tau, tau_min=FLOOR)
    expected = _state(expected_store)

    store = _store(tmp_path / "retune", corpus)
    _add(store, corpus, range(N_SHARDS))
    first = run_and_write(store, tau=0.95, tau_min=FLOOR)
    assert first.stats["candidate_pairs"] > 0  # the band holds pairs to retune with
    layout_version = store.version(DEDUP_MEMBERS.name)
    out = run_and_write(store, tau=new_tau, tau_min=FLOOR)
    assert out.plan.mode == "retune", out.plan.reason
    assert out.stats["units"] == 0 and out.stats["comparisons"] == 0
    assert store.version(DEDUP_MEMBERS.name) == layout_version  # no vector was laid out again
    _assert_same(_state(store), expected)
    # and a second run at the same τ has nothing to do
    assert run_and_write(store, tau=new_tau, tau_min=FLOOR).plan.mode == "current"


def test_new_shards_and_a_new_tau_in_one_run_equal_a_full_run(tmp_path, corpus):
    expected_store = _store(tmp_path / "full", corpus)
    _add(expected_store, corpus, range(N_SHARDS))
    run_and_write(expected_store, tau=0.92, tau_min=FLOOR)

    store = _store(tmp_path / "inc", corpus)
    _add(store, corpus, range(N_SHARDS - 2))
    run_and_write(store, tau=0.96, tau_min=FLOOR)
    _add(store, corpus, range(N_SHARDS - 2, N_SHARDS))
    out = run_and_write(store, tau=0.92, tau_min=FLOOR)
    assert out.plan.mode == "incremental" and "τ 0.96 → 0.92" in out.plan.reason
    _assert_same(_state(store), _state(expected_store))


def test_tau_below_the_stored_floor_is_a_full_run_that_says_so(tmp_path, corpus):
    store = _store(tmp_path / "s", corpus)
    _add(store, corpus, range(2))
    run_and_write(store, tau=0.95, tau_min=FLOOR)
    out = run_and_write(store, tau=0.88, tau_min=0.88)
    assert out.plan.mode == "full" and "below the stored floor τ_min = 0.9" in out.plan.reason
    with pytest.raises(ConfigError, match="tau_min"):
        run_and_write(store, tau=0.9, tau_min=0.95)


def _brute_force(pairs: pl.DataFrame, tau: float) -> tuple[int, int, int]:
    """(pairs, groups, removed) at τ by breadth-first search over the pairs ≥ τ."""
    kept = pairs.filter(pl.col("similarity") >= tau)
    edges: dict[str, set[str]] = {}
    for a, b in kept.select("image_id_a", "image_id_b").iter_rows():
        edges.setdefault(a, set()).add(b)
        edges.setdefault(b, set()).add(a)
    seen: set[str] = set()
    groups = 0
    for start in edges:
        if start in seen:
            continue
        groups += 1
        stack = [start]
        while stack:
            v = stack.pop()
            if v not in seen:
                seen.add(v)
                stack.extend(edges[v] - seen)
    return kept.height, groups, len(edges) - groups


def test_the_sweep_equals_brute_force_components_at_every_tau(tmp_path, corpus):
    store = _store(tmp_path / "s", corpus)
    _add(store, corpus, range(N_SHARDS))
    out = run_and_write(store, tau=0.95, tau_min=FLOOR)
    stored = out.merged.stored
    grid = sweep_grid(FLOOR, 0.95, step=0.01)
    assert grid[0] == 1.0 and grid[-1] == FLOOR and 0.95 in grid
    sweep = tau_sweep(stored, grid)
    for row in sweep.iter_rows(named=True):
        assert (row["pairs"], row["groups"], row["removed"]) == _brute_force(stored, row["tau"])
    at_tau = sweep.filter(pl.col("tau") == 0.95).row(0, named=True)
    assert at_tau["removed"] == out.stats["removed"] and at_tau["pairs"] == out.stats["pairs"]
    assert sweep["removed"].is_sorted()  # lower τ never removes fewer (tau is descending)
    near = pairs_at(stored, 0.95, n=2)
    assert near.height == 4 and (near["similarity"][:2] >= 0.95).all()
    assert (near["similarity"][2:] < 0.95).all()


def test_the_sweep_handles_ties_exact_copies_and_cycles_as_brute_force_does():
    """Random graph: tied similarities, 1.0 (exact copies), cycles, isolated pairs."""
    rng = np.random.default_rng(5)
    n, m = 300, 900
    a, b = rng.integers(0, n, m), rng.integers(0, n, m)
    keep = a != b
    lo, hi = np.minimum(a, b)[keep], np.maximum(a, b)[keep]
    pairs = (
        pl.DataFrame(
            {
                "image_id_a": [f"img-{i:04d}" for i in lo],
                "image_id_b": [f"img-{j:04d}" for j in hi],
                "similarity": rng.choice([1.0, 0.995, 0.975, 0.955, 0.935], lo.size).astype(
                    np.float32
                ),
            }
        )
        .unique(["image_id_a", "image_id_b"])
        .sort("image_id_a", "image_id_b")
    )
    sweep = tau_sweep(pairs, sweep_grid(0.93, 0.95, step=0.01))
    for row in sweep.iter_rows(named=True):
        assert (row["pairs"], row["groups"], row["removed"]) == _brute_force(pairs, row["tau"])
    empty = tau_sweep(pairs.clear(), [1.0, 0.95])
    assert empty["pairs"].to_list() == [0, 0] and empty["removed"].to_list() == [0, 0]


def test_sweep_precision_and_recall_against_a_ground_truth(tmp_path):
    pairs = pl.DataFrame(
        {
            "image_id_a": ["a", "a", "c", "x"],
            "image_id_b": ["b", "c", "d", "y"],
            "similarity": [0.99, 0.95, 0.91, 0.93],
        },
        schema_overrides={"similarity": pl.Float32},
    )
    # true groups: {a, b, c} and {d, e}; x and y are unknown to the truth
    truth = pl.DataFrame({"image_id": list("abcde"), "group": ["1", "1", "1", "2", "2"]})
    sweep = tau_sweep(pairs, [0.98, 0.94, 0.9], truth).to_dicts()
    # true pairs: ab, ac, bc, de = 4. At 0.98: ab (true). At 0.94: +ac (true); xy unknown.
    # At 0.9: +cd (false): known pairs ab, ac, cd -> precision 2/3.
    assert [r["true_pairs_found"] for r in sweep] == [1, 2, 2]
    assert [r["precision"] for r in sweep] == [1.0, 1.0, pytest.approx(2 / 3)]
    assert [r["recall"] for r in sweep] == [0.25, 0.5, 0.5]
    assert [r["removed"] for r in sweep] == [1, 2, 4]  # {a,b,c,d} and {x,y} at 0.9
    assert tau_sweep(pairs, [0.9])["precision"][0] is None


def test_read_truth_maps_the_demo_format_through_raw_images(tmp_path, corpus):
    store = _store(tmp_path / "s", corpus)
    _add(store, corpus, range(1))
    run_and_write(store, tau=0.95, tau_min=FLOOR)
    from curation_assets.lib.tables import RAW_IMAGES

    raw = store.read(RAW_IMAGES).sort("image_id").head(4)
    items = [
        {"source_uri": u, "shard": s, "base_id": g}
        for u, s, g in zip(raw["source_uri"], raw["shard"], ["p", "p", "q", None], strict=True)
    ]
    path = tmp_path / "ground_truth.json"
    path.write_text(json.dumps({"items": items}))
    truth = read_truth(path, store).sort("image_id")
    assert truth["image_id"].to_list() == raw["image_id"].head(3).to_list()
    assert truth["group"].to_list() == ["p", "p", "q"]
    bad = tmp_path / "bad.csv"
    bad.write_text("x,y\n1,2\n")
    with pytest.raises(ConfigError, match="'group' column"):
        read_truth(bad, store)
    with pytest.raises(ConfigError, match="does not exist"):
        read_truth(tmp_path / "missing.csv", store)


def test_the_band_costs_pairs_not_search(tmp_path, corpus):
    """Searching at the floor finds the same ≥ τ pairs; the extra is only the band's rows."""
    plain = _store(tmp_path / "plain", corpus)
    _add(plain, corpus, range(N_SHARDS))
    a = run_and_write(plain, tau=0.95)  # no band
    banded = _store(tmp_path / "band", corpus)
    _add(banded, corpus, range(N_SHARDS))
    b = run_and_write(banded, tau=0.95, tau_min=FLOOR)
    assert a.stats["comparisons"] == b.stats["comparisons"]
    assert _tables(plain)[0].equals(_tables(banded)[0]) and a.pairs.equals(b.pairs)
    assert a.merged.band.height == 0 and b.merged.band.height == b.stats["candidate_pairs"] > 0
    assert np.all(b.merged.band["similarity"].to_numpy() < 0.95)
