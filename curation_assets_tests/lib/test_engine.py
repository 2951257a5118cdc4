"""Engines: the local engine's semantics and the bounded scheduling loop of the Ray engine."""

import os
import traceback

import pytest

from curation_assets.lib.engine import (
    LocalEngine,
    RayEngine,
    ShardResult,
    bounded_completion,
    gpu_slots,
    make_engine,
)
from curation_assets.lib.errors import ConfigError


class Recorder:
    """A picklable-style work function that records the calls it gets."""

    def __init__(self, fail: str | None = None) -> None:
        self.calls: list[str] = []
        self.fail = fail

    def __call__(self, key: str, progress) -> dict:
        self.calls.append(key)
        progress(f"half of {key}")
        if key == self.fail:
            raise ConfigError(f"bad config for {key}")
        return {"rows": len(key)}


def test_local_engine_runs_each_shard_in_order_in_this_process():
    work = Recorder()
    seen: list[tuple[str, str]] = []
    results = list(
        LocalEngine().map_shards(
            work, ["a", "bb", "ccc"], on_progress=lambda k, s: seen.append((k, s))
        )
    )
    assert [r.key for r in results] == ["a", "bb", "ccc"]
    assert [r.value for r in results] == [{"rows": 1}, {"rows": 2}, {"rows": 3}]
    assert {(r.engine, r.node_id, r.pid) for r in results} == {("local", None, os.getpid())}
    assert seen == [("a", "half of a"), ("bb", "half of bb"), ("ccc", "half of ccc")]
    meta = results[0].metadata()
    assert meta["engine"] == "local" and meta["worker_pid"] == os.getpid()
    assert "ray_node_id" not in meta and meta["task_seconds"] >= 0


def test_local_engine_has_one_shard_in_flight_and_starts_the_next_when_asked():
    work = Recorder()
    it = LocalEngine().map_shards(work, ["a", "b", "c"])
    assert work.calls == []  # lazy: nothing runs before the first result is asked for
    first = next(it)
    assert first.key == "a" and work.calls == ["a"]  # b has not started
    next(it)
    assert work.calls == ["a", "b"]


def test_local_engine_error_keeps_its_type_names_the_shard_after_the_finished_ones():
    work = Recorder(fail="b")
    it = LocalEngine().map_shards(work, ["a", "b", "c"])
    assert next(it).key == "a"
    with pytest.raises(ConfigError, match="bad config for b") as info:
        next(it)
    text = "".join(traceback.format_exception_only(info.value))
    assert "while processing shard 'b' (local engine)" in text
    assert work.calls == ["a", "b"]  # c never started


class FakeCluster:
    """Handles that complete in a fixed order among those in flight (newest first)."""

    def __init__(self, fail: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.submitted: list[str] = []
        self.peak = 0
        self.fail = fail

    def submit(self, key: str) -> str:
        self.submitted.append(key)
        return f"ref:{key}"

    def wait_one(self, handles: list[str]) -> str:
        self.peak = max(self.peak, len(handles))
        return handles[-1]

    def collect(self, key: str, handle: str) -> str:
        assert handle == f"ref:{key}"
        if key in self.fail:
            raise RuntimeError(f"{key} broke")
        return key


def test_bounded_completion_keeps_at_most_limit_in_flight_and_yields_in_completion_order():
    fake = FakeCluster()
    keys = [f"s{i}" for i in range(7)]
    out = list(bounded_completion(keys, fake.submit, fake.wait_one, fake.collect, limit=3))
    assert sorted(out) == keys and fake.submitted == keys
    assert fake.peak == 3
    assert out[:2] == ["s2", "s3"]  # completion order, not submission order


def test_bounded_completion_stops_submitting_after_an_error_and_drains_the_running_shards():
    fake = FakeCluster(fail={"s2"})
    keys = [f"s{i}" for i in range(7)]
    out: list[str] = []
    with pytest.raises(RuntimeError, match="s2 broke"):
        for key in bounded_completion(keys, fake.submit, fake.wait_one, fake.collect, limit=3):
            out.append(key)
    assert fake.submitted == ["s0", "s1", "s2"]  # nothing submitted after the failure
    assert sorted(out) == ["s0", "s1"]  # the shards in flight beside it were still reported


def test_make_engine_picks_by_address_without_connecting():
    assert isinstance(make_engine("local"), LocalEngine)
    assert isinstance(make_engine(""), LocalEngine)
    ray = make_engine("127.0.0.1:1", max_in_flight=4, max_retries=1)
    assert isinstance(ray, RayEngine) and ray.address == "127.0.0.1:1"
    assert (ray.max_in_flight, ray.max_retries) == (4, 1)


def test_gpus_per_task_fraction_sets_the_gpu_slots_and_bad_values_are_refused(monkeypatch):
    assert [gpu_slots(1, f) for f in (1, 0.5, 0.25, 1 / 3)] == [1, 2, 4, 3]
    assert gpu_slots(8, 2) == 4 and gpu_slots(1, 2) == 1
    assert make_engine("h:1", gpus_per_task=0.25).gpus_per_task == 0.25  # type: ignore[union-attr]
    for bad in (0, -1, 1.5):
        with pytest.raises(ConfigError, match="gpus_per_task"):
            RayEngine("h:1", gpus_per_task=bad)
    from curation_assets.lib.settings import gpu_fraction_env

    monkeypatch.setenv("CURATION_RAY_GPUS_PER_TASK", "0.5")
    assert gpu_fraction_env("CURATION_RAY_GPUS_PER_TASK") == 0.5
    monkeypatch.setenv("CURATION_RAY_GPUS_PER_TASK", "half")
    with pytest.raises(ValueError, match="CURATION_RAY_GPUS_PER_TASK='half'"):
        gpu_fraction_env("CURATION_RAY_GPUS_PER_TASK")
    monkeypatch.delenv("CURATION_RAY_GPUS_PER_TASK")
    assert gpu_fraction_env("CURATION_RAY_GPUS_PER_TASK") == 1.0


def test_an_address_where_nothing_listens_fails_fast_also_as_ray_client_url():
    import socket

    from curation_assets.lib.engine import EngineAddressError

    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        with pytest.raises(EngineAddressError, match="nothing answers there"):
            RayEngine(address)._check_reachable(timeout_s=2)
    RayEngine("auto")._check_reachable()  # left to Ray: no error here


def test_a_ray_result_says_which_node_ran_it():
    result = ShardResult("k", 1, "ray", "abc123", 42, "host", 0.0, 1.23456)
    assert result.metadata() == {
        "engine": "ray",
        "worker_pid": 42,
        "worker_host": "host",
        "task_seconds": 1.235,
        "ray_node_id": "abc123",
    }
