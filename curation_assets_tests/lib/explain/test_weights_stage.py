"""`curation explain`'s weights stage shows the uniqueness multiplier when the weights used one.

Synthetic tables (write_weight_inputs, no image files, no classify/cluster tables): the stage
is called on its own, with the context the earlier stages would have set.
"""

import numpy as np
import polars as pl

from curation_assets.lib.explain import AsOf, Snapshot
from curation_assets.lib.explain.early import Context
from curation_assets.lib.explain.late import weights_stage
from curation_assets.lib.memory import MemoryBudget
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import SAMPLE_WEIGHTS
from curation_assets.lib.weights.update import update_weights
from curation_assets_tests.lib.weights.test_update import SETTINGS
from curation_assets_tests.weights_inputs import write_uniqueness, write_weight_inputs


def _weights_stage(store: DeltaStore, image_id: str):
    shard = store.read(SAMPLE_WEIGHTS).filter(image_id=image_id)["shard"].item()
    return weights_stage(Context(Snapshot(store, AsOf()), image_id=image_id, shard=shard))


def test_the_weights_stage_shows_the_uniqueness_multiplier_only_when_used(tmp_path):
    store = DeltaStore(str(tmp_path / "delta"))
    write_weight_inputs(store, tmp_path / "images", images=False)
    scores = write_uniqueness(store, ["shard-a"])  # shard-b has no scores
    update_weights(store, SETTINGS, MemoryBudget(256), lambda: (None, "none"))
    weights = store.read(SAMPLE_WEIGHTS).filter(~pl.col("clipped"))
    some = weights.filter(shard="shard-a")["image_id"][0]
    plain = _weights_stage(store, some)
    assert plain.outcome == "weighted" and "uniqueness" not in plain.details
    assert "uniqueness" not in plain.summary

    settings = {**SETTINGS, "uniqueness_power": 1.0, "uniqueness_floor": 0.01}
    out = update_weights(store, settings, MemoryBudget(256), lambda: (None, "none"))
    reference = out.summary["uniqueness_reference"]
    weights = store.read(SAMPLE_WEIGHTS).filter(~pl.col("clipped"))
    some = weights.filter(shard="shard-a")["image_id"][0]
    stage = _weights_stage(store, some)
    u = stage.details["uniqueness"]
    score = scores.filter(image_id=some)["uniqueness"].item()
    assert u["score"] == score and u["reference"] == reference and u["power"] == 1.0
    assert np.isclose(u["multiplier"], max(score, 0.01) / reference, rtol=1e-9)
    assert f"×{u['multiplier']:.2f} (uniqueness_power 1)" in stage.summary
    unscored = weights.filter(shard="shard-b")["image_id"][0]
    missing = _weights_stage(store, unscored).details["uniqueness"]
    assert missing["score"] is None and np.isclose(missing["multiplier"], 1.0, rtol=1e-9)
