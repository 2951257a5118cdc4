"""The uniqueness term of the weights.

Off by default, direction, mean 1, missing scores, incremental = full, and the full re-score a
setting change forces. Each test builds its own corpus (write_weight_inputs, 8-d) in a fresh
Delta root, plus ``image_uniqueness`` rows written here (a seeded score per image).
"""

import numpy as np
import polars as pl
import pytest

from curation_assets.lib import commits
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import (
    IMAGE_UNIQUENESS,
    SAMPLE_WEIGHTS,
    WEIGHT_SHARD_STATS,
)
from curation_assets.lib.weights.totals import UNIQUENESS_STATS, upgrade_stats
from curation_assets.lib.weights.uniqueness import UniquenessTerm, uniqueness_settings
from curation_assets.lib.weights.update import update_weights
from curation_assets_tests.lib.weights.test_update import (
    BASE,
    BUDGET,
    SETTINGS,
    RecordingStore,
    _add,
    _corpus,
    _no_encoder,
    _run,
    _weights,
)
from curation_assets_tests.weights_inputs import write_uniqueness

ON = {"uniqueness_power": 1.0, "uniqueness_floor": 0.01}


def _with_scores(store: DeltaStore) -> pl.DataFrame:
    """Weights joined with their images' scores (null where none)."""
    u = store.read(IMAGE_UNIQUENESS, columns=["image_id", "uniqueness"])
    return _weights(store).join(u, on="image_id", how="left").sort("image_id")


def _stats(store: DeltaStore) -> pl.DataFrame:
    return store.read(WEIGHT_SHARD_STATS).sort("shard")


def _expected(frame: pl.DataFrame, term: UniquenessTerm, scale: float) -> np.ndarray:
    """clip(scale · raw_ratio · m, w_min, w_max) from the stored raw ratios and scores."""
    u = frame["uniqueness"].cast(pl.Float64).fill_null(float("nan")).to_numpy()
    m = np.where(np.isnan(u), 1.0, (np.maximum(u, term.floor) / term.reference) ** term.power)
    raw = frame["raw_ratio"].to_numpy()
    return np.clip(scale * raw * m, SETTINGS["w_min"], SETTINGS["w_max"])


def test_off_by_default_the_weights_ignore_the_uniqueness_table(tmp_path):
    plain = _corpus(tmp_path / "plain")
    scored = _corpus(tmp_path / "scored")
    write_uniqueness(scored, BASE)
    a, b = _run(plain), _run(scored)
    assert _weights(scored).equals(_weights(plain))  # bit for bit
    assert b.summary["uniqueness_power"] == 0.0 and b.summary["uniqueness"] is None
    assert "uniqueness_missing" not in b.summary and "uniqueness_missing" not in b.totals
    assert a.summary["probe_id"] == b.summary["probe_id"]  # same settings record as before
    assert _stats(scored).select(UNIQUENESS_STATS).null_count().row(0) == (len(BASE),) * 5
    commit = commits.last_commit(scored, "weights")
    assert commit is not None and "uniqueness" not in commit.config
    assert IMAGE_UNIQUENESS.name not in commit.inputs
    # an explicit 0 is "off" too: nothing to do
    assert _run(scored, uniqueness_power=0.0).plan.mode == "current"


def test_with_a_positive_power_more_unique_images_weigh_more_mean_one_within_bounds(tmp_path):
    store = _corpus(tmp_path)
    write_uniqueness(store, BASE)
    _run(store)
    off = _weights(store)
    out = _run(store, **ON)
    assert out.plan.mode == "full"
    on = _with_scores(store)
    term = UniquenessTerm(1.0, 0.01, out.summary["uniqueness_reference"])
    # u_ref: median floored score of the sample's kept images (a small corpus: all of them)
    kept_u = on["uniqueness"].cast(pl.Float64).to_numpy()
    assert term.reference == pytest.approx(float(np.median(np.maximum(kept_u, 0.01))), rel=1e-6)
    np.testing.assert_allclose(on["weight"], _expected(on, term, out.summary["scale"]), rtol=1e-12)
    # the probe is the same (same seed and sample): only the multiplier moved the weights
    np.testing.assert_allclose(on["raw_ratio"], off["raw_ratio"], rtol=1e-12)
    both = on.join(off.select("image_id", w_off="weight", c_off="clipped"), on="image_id")
    free = both.filter(~pl.col("clipped") & ~pl.col("c_off")).sort("uniqueness")
    change = (free["weight"] / free["w_off"]).to_numpy()
    assert free.height > 100 and np.all(np.diff(change) >= -1e-12)  # monotone in uniqueness
    top = both.sort("uniqueness").tail(50)
    low = both.sort("uniqueness").head(50)
    assert (top["weight"] / top["w_off"]).mean() > 1.5 * (low["weight"] / low["w_off"]).mean()
    w = on["weight"].to_numpy()
    assert abs(w.mean() - 1.0) <= SETTINGS["mean_tolerance"]
    assert out.totals["mean"] == pytest.approx(w.mean(), abs=1e-12)
    assert w.min() >= SETTINGS["w_min"] and w.max() <= SETTINGS["w_max"]
    assert out.summary["uniqueness_missing"] == 0
    m = np.maximum(kept_u, 0.01) / term.reference
    assert out.summary["uniqueness_multiplier_mean"] == pytest.approx(m.mean(), rel=1e-9)
    stats = _stats(store)
    assert stats["uniqueness_power"].to_list() == [1.0] * len(BASE)
    assert stats["uniqueness_reference"].n_unique() == 1


def test_a_negative_power_favours_typical_images(tmp_path):
    store = _corpus(tmp_path)
    write_uniqueness(store, BASE)
    out = _run(store, uniqueness_power=-1.0)
    on = _with_scores(store)
    term = UniquenessTerm(-1.0, 0.01, out.summary["uniqueness_reference"])
    np.testing.assert_allclose(on["weight"], _expected(on, term, out.summary["scale"]), rtol=1e-12)
    zero = on.filter(pl.col("uniqueness") == 0.0)  # floored: finite, the largest multiplier
    assert zero.height and np.isfinite(zero["weight"].to_numpy()).all()
    assert np.corrcoef(on["uniqueness"], on["weight"] / on["raw_ratio"])[0, 1] < 0


def test_images_without_a_score_get_multiplier_one_and_are_counted(tmp_path):
    store = _corpus(tmp_path)
    write_uniqueness(store, BASE[:2])  # shard-c not scored yet
    out = _run(store, **ON)
    on = _with_scores(store)
    missing = on.filter(pl.col("uniqueness").is_null())
    assert (
        set(missing["shard"]) == {"shard-c"} and missing.height == on.filter(shard="shard-c").height
    )
    assert out.summary["uniqueness_missing"] == missing.height
    stats = _stats(store)
    assert stats.filter(shard="shard-c")["n_uniqueness_missing"].item() == missing.height
    assert stats.filter(shard="shard-a")["n_uniqueness_missing"].item() == 0
    term = UniquenessTerm(1.0, 0.01, out.summary["uniqueness_reference"])
    np.testing.assert_allclose(on["weight"], _expected(on, term, out.summary["scale"]), rtol=1e-12)
    assert abs(out.totals["mean"] - 1.0) <= SETTINGS["mean_tolerance"]
    # the scores land: the next run re-weights that shard alone, reading only its scores
    write_uniqueness(store, ["shard-c"])
    watched = RecordingStore(store.root_uri)
    again = update_weights(watched, {**SETTINGS, **ON}, BUDGET, _no_encoder)
    assert again.plan.mode == "incremental" and again.plan.shards == ["shard-c"]
    assert {s for t, s in watched.reads if t == IMAGE_UNIQUENESS.name} == {("shard-c",)}
    assert again.summary["uniqueness_missing"] == 0
    assert _with_scores(store)["uniqueness"].null_count() == 0


def test_incremental_uniqueness_weights_equal_a_rescore_with_the_same_term(tmp_path):
    store = _corpus(tmp_path)
    write_uniqueness(store, BASE)
    full = _run(store, **ON)
    _add(store, tmp_path, "shard-d", 150, seed=7)
    write_uniqueness(store, ["shard-d"])
    watched = RecordingStore(store.root_uri)
    inc = update_weights(watched, {**SETTINGS, **ON}, BUDGET, _no_encoder)
    assert inc.plan.mode == "incremental" and inc.plan.shards == ["shard-d"]
    # a new shard costs what the shard costs: only its scores are read
    assert [s for t, s in watched.reads if t == IMAGE_UNIQUENESS.name] == [("shard-d",)]
    assert inc.summary["uniqueness"] == full.summary["uniqueness"]
    incremental = _weights(store)
    rescored = _run(store, keywords=["outdoors"], **ON)  # every shard, same probe/scale/term
    assert rescored.plan.mode == "rescore" and rescored.written == 4
    assert _weights(store).equals(incremental)  # bit for bit
    assert rescored.totals["uniqueness_multiplier_mean"] == pytest.approx(
        inc.totals["uniqueness_multiplier_mean"], rel=1e-12
    )


def test_changing_the_uniqueness_settings_re_weights_everything_and_says_why(tmp_path):
    store = _corpus(tmp_path)
    write_uniqueness(store, BASE)
    _run(store)
    on = _run(store, **ON)
    assert on.plan.mode == "full" and on.written == len(BASE)
    assert on.plan.reason == "uniqueness settings changed: uniqueness_power 0.0 → 1.0"
    commit = commits.last_commit(store, "weights")
    assert commit is not None and commit.config["uniqueness"] == {"power": 1.0, "floor": 0.01}
    assert commit.summary["uniqueness"]["reference"] == on.summary["uniqueness_reference"]
    assert commit.inputs[IMAGE_UNIQUENESS.name] == store.version(IMAGE_UNIQUENESS.name)
    assert _run(store, **ON).plan.mode == "current"
    half = _run(store, uniqueness_power=0.5, uniqueness_floor=0.01)
    assert half.plan.reason == "uniqueness settings changed: uniqueness_power 1.0 → 0.5"
    floor = _run(store, uniqueness_power=0.5, uniqueness_floor=0.05)
    assert floor.plan.reason == "uniqueness settings changed: uniqueness_floor 0.01 → 0.05"
    off = _run(store)
    assert off.plan.mode == "full" and off.written == len(BASE)
    assert off.plan.reason == "uniqueness settings changed: uniqueness_power 0.5 → 0.0"
    assert _stats(store)["uniqueness_power"].null_count() == len(BASE)


def test_uniqueness_without_its_table_or_scores_fails_with_the_fix(tmp_path):
    store = _corpus(tmp_path)
    with pytest.raises(ValueError, match="image_uniqueness was never materialized.*similarity_job"):
        _run(store, **ON)
    assert store.version(SAMPLE_WEIGHTS.name) is None  # nothing written
    write_uniqueness(store, ["shard-elsewhere"])  # a table, but no score in the sampled shards
    assert store.exists(IMAGE_UNIQUENESS.name)
    with pytest.raises(ValueError, match="none of the .* kept images in the probe's sample"):
        _run(store, **ON)
    with pytest.raises(ValueError, match="uniqueness_floor=0.0"):
        uniqueness_settings({"uniqueness_power": 1.0, "uniqueness_floor": 0.0})
    with pytest.raises(ValueError, match="uniqueness_power=nan"):
        uniqueness_settings({"uniqueness_power": float("nan")})


def test_the_multiplier_floors_scores_and_leaves_missing_ones_at_one():
    term = UniquenessTerm(power=2.0, floor=0.1, reference=0.2)
    scores = pl.DataFrame({"image_id": ["a", "b", "c"], "uniqueness": [0.4, 0.0, 0.2]})
    m, missing = term.multipliers(["c", "zz", "a", "b"], scores)
    np.testing.assert_allclose(m, [1.0, 1.0, 4.0, 0.25])
    assert missing.tolist() == [False, True, False, False]


def test_stats_written_before_the_term_existed_read_as_not_used():
    old = WEIGHT_SHARD_STATS.empty().drop(list(UNIQUENESS_STATS))
    row = old.vstack(
        pl.DataFrame([[None] * old.width], schema=old.schema, orient="row").with_columns(
            shard=pl.lit("s"), n_kept=pl.lit(0, pl.Int64)
        )
    )
    up = upgrade_stats(row)
    assert up.columns == WEIGHT_SHARD_STATS.column_names
    assert up.select(UNIQUENESS_STATS).null_count().row(0) == (1,) * 5
