"""The weights' scoring as engine work: a task that crossed a process boundary gives the same rows.

:class:`PicklingEngine` runs each shard as a Ray task would, without Ray: the work is pickled
and unpickled per shard (so it opens its own store and loads the probe from ``weight_probes``,
as on a worker), one shard per key. Its tables must equal the local engine's on the same
inputs, in a full run, an incremental one and with the uniqueness term and concepts on.
The real cluster test is ``defs/test_engine_ray.py::test_weights_on_ray_write_the_local_tables``.
"""

import os
import pickle
import socket
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from curation_assets.lib.engine import LocalEngine, ShardResult
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import (
    AUDIT_SHARD_COUNTS,
    BIAS_AUDIT,
    SAMPLE_WEIGHTS,
    WEIGHT_PROBES,
    WEIGHT_SHARD_STATS,
)
from curation_assets.lib.weights import work as weights_work
from curation_assets.lib.weights.update import update_weights
from curation_assets.lib.weights.work import FrozenTextEncoder, WeightShardWork, freeze_encoder
from curation_assets_tests.lib.weights.test_update import BASE, BUDGET
from curation_assets_tests.lib.weights.test_update import SETTINGS as UPDATE_SETTINGS
from curation_assets_tests.weights_inputs import DIM, write_uniqueness, write_weight_inputs

SETTINGS = {**UPDATE_SETTINGS, "keywords": ["outdoors"]}
TABLES = (SAMPLE_WEIGHTS, WEIGHT_SHARD_STATS, AUDIT_SHARD_COUNTS, BIAS_AUDIT)
BASIS = np.eye(DIM, dtype=np.float32)


class PicklingEngine:
    """Runs each key in this process on a pickled copy of the work, as a Ray worker would."""

    name = "pickled"

    def __init__(self) -> None:
        self.payloads: list[int] = []
        self.keys: list[str] = []

    def map_shards(
        self,
        work: Callable[[str, Callable[[str], None]], Any],
        keys: Sequence[str],
        *,
        wants_gpu: bool = False,
        on_progress: Callable[[str, str], None] | None = None,
    ) -> Iterator[ShardResult[Any]]:
        for key in reversed(keys):  # not in key order, as Ray's completion order
            blob = pickle.dumps(work)
            self.payloads.append(len(blob))
            self.keys.append(key)
            copy = pickle.loads(blob)
            value = copy(key, lambda s, key=key: on_progress and on_progress(key, s))
            yield ShardResult(
                key, value, self.name, "node-x", os.getpid(), socket.gethostname(), 0.0, 0.0
            )


def _no_encoder():
    return None, "none configured"


def _encoder():
    return (lambda texts: BASIS[[0 if t == "a photo." else 1 for t in texts]]), "test"


def _corpus(tmp: Path, shards: tuple[str, ...] = BASE, seed: int = 0) -> DeltaStore:
    store = DeltaStore(str(tmp / "delta"))
    write_weight_inputs(store, tmp / "images", n=900, seed=seed, images=False, shards=shards)
    return store


def _tables(store: DeltaStore) -> dict[str, pl.DataFrame]:
    out = {}
    for spec in TABLES:
        df = store.read(spec)
        out[spec.name] = df.sort(
            [c for c in ("shard", "image_id", "attribute", "value", "hit") if c in df.columns]
        )
    return out


def _assert_same(a: DeltaStore, b: DeltaStore) -> None:
    ta, tb = _tables(a), _tables(b)
    for name, frame in ta.items():
        assert frame.height > 0, name
        assert frame.equals(tb[name]), name


@pytest.mark.parametrize("extra", [{}, {"uniqueness_power": 1.0, "concepts": {"c": "x"}}])
def test_pickled_tasks_write_the_local_engines_tables(tmp_path, extra):
    settings = {**SETTINGS, **extra}
    encoder = _encoder if extra else _no_encoder
    stores = {}
    for name in ("local", "pickled"):
        stores[name] = _corpus(tmp_path / name)
        if extra:
            write_uniqueness(stores[name], list(BASE))
    local = update_weights(stores["local"], settings, BUDGET, encoder)
    engine = PicklingEngine()
    weights_work._PROBES.clear()
    pickled = update_weights(stores["pickled"], settings, BUDGET, encoder, engine=engine)
    assert (local.plan.mode, pickled.plan.mode) == ("full", "full")
    assert local.summary["probe_id"] == pickled.summary["probe_id"]
    _assert_same(stores["local"], stores["pickled"])
    # local: the three small shards are one group, one task; pickled: one task per shard
    assert (local.tasks.engine, local.tasks.tasks, dict(local.tasks.per_node)) == ("local", 1, {})
    assert sorted(engine.keys) == list(BASE) and pickled.tasks.tasks == 3
    assert pickled.tasks.metadata()["score_tasks_per_node"] == {"node-x": 3}
    # the task's arguments are small: no probe, no store, no text model
    assert max(engine.payloads) < 8_000
    assert len(weights_work._PROBES) == 1  # the tasks loaded the probe once, from weight_probes
    # a new shard: scored alone by the committed probe, on both engines alike
    for name, store in stores.items():
        write_weight_inputs(
            store, tmp_path / name / "images", n=300, seed=5, images=False, shards=("shard-d",)
        )
        if extra:
            write_uniqueness(store, ["shard-d"], seed=3)
    engine = PicklingEngine()
    local = update_weights(stores["local"], settings, BUDGET, encoder)
    pickled = update_weights(stores["pickled"], settings, BUDGET, encoder, engine=engine)
    assert local.plan.mode == pickled.plan.mode == "incremental"
    assert local.plan.shards == pickled.plan.shards == ["shard-d"]
    assert "shard-d" in engine.keys
    assert pickled.summary["shards_scored"] == local.summary["shards_scored"]
    _assert_same(stores["local"], stores["pickled"])
    if extra:
        counts = stores["pickled"].read(AUDIT_SHARD_COUNTS)
        assert "concept" in set(counts["attribute"])


def test_the_work_pickles_without_the_steps_store_and_probe(tmp_path):
    store = _corpus(tmp_path)
    update_weights(store, SETTINGS, BUDGET, _no_encoder)
    probe_id = store.read(WEIGHT_PROBES)["probe_id"][0]
    work = WeightShardWork(
        root_uri=store.root_uri,
        storage_options={},
        probe_id=probe_id,
        probes_version=store.version(WEIGHT_PROBES.name),
        scale=1.0,
        correct_for="filter",
        w_min=0.1,
        w_max=10.0,
        batch_size=64,
        store=store,
    )
    copy = pickle.loads(pickle.dumps(work))
    assert copy.store is None and copy.probe is None and copy == work
    assert copy.shards("shard-a") == ["shard-a"]
    grouped = WeightShardWork(**{**work.__dict__, "groups": {"shard-a": ("shard-a", "shard-b")}})
    assert grouped.shards("shard-a") == ["shard-a", "shard-b"]
    assert grouped.shards("shard-c") == ["shard-c"]


def test_a_frozen_encoder_answers_the_audits_prompt_lists_and_no_others():
    calls: list[list[str]] = []

    def encoder(texts: list[str]) -> np.ndarray:
        calls.append(list(texts))
        return BASIS[[len(t) % DIM for t in texts]]

    frozen = freeze_encoder(encoder, {"one": "a cat.", "two": ["a dog.", "two dogs."]})
    assert calls == [["a photo."], ["a cat."], ["a dog.", "two dogs."]]
    assert isinstance(pickle.loads(pickle.dumps(frozen)), FrozenTextEncoder)
    np.testing.assert_array_equal(frozen(["a dog.", "two dogs."]), encoder(["a dog.", "two dogs."]))
    with pytest.raises(ValueError, match="no text embedding"):
        frozen(["a bird."])


def test_the_local_engine_is_the_default(tmp_path):
    store = _corpus(tmp_path, shards=("shard-a",))
    out = update_weights(store, SETTINGS, BUDGET, _no_encoder, engine=LocalEngine())
    assert out.tasks.metadata() == {
        "score_engine": "local",
        "score_tasks": 1,
        "score_task_seconds": out.tasks.metadata()["score_task_seconds"],
    }
