"""The per-shard assets on a real two-node Ray cluster give the local engine's tables.

The demo corpus (four shards: folder, tar, csv and parquet manifests) is ingested once; then
each per-shard asset that runs on the engine (image_embeddings, classifier_scores,
cluster_assignments) is materialized over the four shards in one run with the local engine and
again with the Ray engine, on the same inputs, and every table it writes is compared. The
global steps between them (safety_classifiers from the demo's seed labels, filter_shard,
cluster_centroids) run locally once. The similarity steps (similarity_index, image_uniqueness)
are compared the same way over a quantizer trained locally, and their index files must answer
searches alike. Then a Ray worker is SIGKILLed while it embeds a shard:
Ray's retry makes the step succeed; with no Ray retry the step fails naming the shard and the
dead worker, the shard's rows stay the last committed ones, and a re-run converges. The
weights stage (weights_and_audit, a global step whose shards are scored as engine tasks) is
compared on synthetic inputs written twice, a full run and an incremental one; so is the dedup
(its units, then an update's one-pass buckets, as Ray tasks).
"""

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import polars as pl
import pytest
from deltalake import DeltaTable

from curation_assets.defs.classify import classifier_scores, safety_classifiers
from curation_assets.defs.cluster import cluster_assignments, cluster_centroids
from curation_assets.defs.embed import image_embeddings
from curation_assets.defs.filter import filter_shard
from curation_assets.defs.ingest import ingest
from curation_assets.defs.partitions import SHARDS_PARTITION, range_tags
from curation_assets.defs.resources import Categories, Compute, DeltaStorage, Engine, ImageEmbedder
from curation_assets.defs.similar import image_uniqueness, similarity_index, similarity_quantizer
from curation_assets.defs.weights import weights_and_audit
from curation_assets.lib.cluster import centroids_frame, train_clusterings
from curation_assets.lib.engine import LocalEngine, RayEngine
from curation_assets.lib.memory import MemoryBudget
from curation_assets.lib.similar import load_quantizer, search
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import (
    AUDIT_SHARD_COUNTS,
    BIAS_AUDIT,
    CLASSIFIER_SCORES,
    DEDUPLICATED_IMAGES,
    DUPLICATE_PAIRS,
    IMAGE_EMBEDDINGS,
    LABELS,
    N_CLUSTERINGS,
    QUARANTINE,
    RAW_IMAGES,
    SAFETY_CLASSIFIERS,
    SAMPLE_WEIGHTS,
    WEIGHT_PROBES,
    WEIGHT_SHARD_STATS,
    TableSpec,
    assignments_spec,
    centroids_spec,
)
from curation_assets.lib.tables.similar import IMAGE_UNIQUENESS, SIMILARITY_INDEX
from curation_assets.lib.vectors import embedding_matrix
from curation_assets.runner import step_errors
from curation_assets.tools.demo import build_demo_corpus, write_seed_labels
from curation_assets.tools.synthetic import clip_like_embeddings
from curation_assets_tests.defs.helpers import resources
from curation_assets_tests.lib.dedup.helpers import MODEL as DEDUP_MODEL
from curation_assets_tests.lib.dedup.helpers import add_shard, run_and_write
from curation_assets_tests.servers_ray import (  # noqa: F401
    RayCluster,
    ray_cluster,
    ray_two_nodes,
)
from curation_assets_tests.weights_inputs import write_weight_inputs

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
logger = logging.getLogger(__name__)

SHARDS = ["shard-000", "shard-001.tar", "shard-002.csv", "shard-003.parquet"]
#: Seconds after a kill when the test looks at the table: the failed attempt has ended (the
#: shards beside the killed one take ~2 s) and the step's retry (15 s later) has not started.
AFTER_KILL_S = 7.0
#: Columns that may differ between two runs on the same inputs (wall-clock stamps).
STAMPS = {"quarantined_at"}


def snapshot(store: DeltaStore, spec: TableSpec, **where: str) -> pl.DataFrame:
    """The table's rows in a canonical order, without timestamps."""
    df = store.read(spec)
    for column, value in where.items():
        df = df.filter(pl.col(column) == value)
    df = df.drop([c for c in df.columns if c in STAMPS])
    keys = [c for c in df.columns if df.schema[c] not in (pl.Float32, pl.Float64)]
    keys = [c for c in keys if not isinstance(df.schema[c], pl.List)]
    return df.sort(keys)


def assert_same(ray: pl.DataFrame, local: pl.DataFrame, atol: float = 1e-6) -> None:
    """Equal rows: exact for ids and labels, within ``atol`` for floats and vectors."""
    assert ray.columns == local.columns and ray.height == local.height
    for column in ray.columns:
        a, b = ray[column], local[column]
        if isinstance(a.dtype, pl.List):
            x = np.asarray(a.to_list(), dtype=np.float64)
            y = np.asarray(b.to_list(), dtype=np.float64)
            np.testing.assert_allclose(x, y, rtol=0, atol=atol, err_msg=column)
        elif a.dtype in (pl.Float32, pl.Float64):
            np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=0, atol=atol)
        else:
            assert a.to_list() == b.to_list(), column


def materialize(assets: list, instance, res: dict, *, config=None, run_config=None):
    """One run over the four shards (a partition range); the result, successful or not."""
    return dg.materialize(
        assets,
        instance=instance,
        resources=res,
        tags=range_tags(SHARDS) if any(a.partitions_def for a in assets) else None,
        run_config={**(run_config or {}), "ops": config or {}},
        raise_on_error=False,
    )


def shard_metadata(result, node: str) -> dict[str, dict[str, Any]]:
    """``{asset/shard: {key: value}}`` of a run's materializations of ``node``."""
    return {
        f"{m.asset_key.to_user_string()}/{m.partition}": {k: v.value for k, v in m.metadata.items()}
        for m in result.asset_materializations_for_node(node)
    }


class Killer(threading.Thread):
    """SIGKILLs, once, the Ray worker process whose task is shard ``key``.

    A Ray worker names itself after the task it runs (``ray::shard <key>``: the engine names
    each task ``shard <key>``), so the process is found in /proc while the task runs.
    """

    def __init__(
        self, key: str, *, after_kill: Callable[[], None] | None = None, timeout_s: float = 300.0
    ) -> None:
        super().__init__(daemon=True)
        self.after_kill = after_kill
        self.title = f"ray::shard {key}".encode()
        self.deadline = time.monotonic() + timeout_s
        self.killed: int | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        """Poll /proc until the task's worker shows up, then kill it."""
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            for proc in Path("/proc").glob("[0-9]*"):
                try:
                    title = (proc / "cmdline").read_bytes().replace(b"\0", b" ").strip()
                except OSError:
                    continue
                if title == self.title:
                    os.kill(int(proc.name), signal.SIGKILL)
                    self.killed = int(proc.name)
                    if self.after_kill is not None:
                        time.sleep(AFTER_KILL_S)
                        self.after_kill()
                    return
            time.sleep(0.01)


def killing(key: str, assets: list, instance, res: dict, *, after_kill=None):
    """Materialize while a :class:`Killer` kills shard ``key``'s worker; (result, killed pid).

    ``after_kill`` runs :data:`AFTER_KILL_S` after the kill, while the step waits for its retry.
    """
    killer = Killer(key, after_kill=after_kill)
    killer.start()
    try:
        result = materialize(assets, instance, res)
    finally:
        killer.stop.set()
        killer.join()
    assert killer.killed is not None, f"no worker ran shard {key}"
    return result, killer.killed


def gpu_work(key: str, progress: Callable[[str], None]) -> dict[str, Any]:
    """A work function that reports what Ray gave its task (importable by the workers)."""
    import ray

    progress("checking the GPU")
    return {"gpu_ids": ray.get_gpu_ids(), "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES")}


def shared_gpu_work(key: str, progress: Callable[[str], None]) -> dict[str, Any]:
    """A GPU task that holds its slot for a while (importable by the workers)."""
    import ray

    started = time.time()
    time.sleep(1.5)
    return {"gpu_ids": ray.get_gpu_ids(), "span": (started, time.time())}


def chatty_work(key: str, progress: Callable[[str], None]) -> str:
    """A work function that reports progress twice, a second apart (importable by the workers)."""
    progress(f"{key} half done")
    time.sleep(1.0)
    progress(f"{key} all done")
    return key


def oserror_work(key: str, progress: Callable[[str], None]) -> None:
    """A work function failing the way an unreachable bucket does (importable by the workers)."""
    raise OSError(5, f"storage gone while writing {key}")


def pool_work(key: str, progress: Callable[[str], None]) -> dict[str, Any]:
    """What pyarrow allocates with in the worker (importable by the workers)."""
    import pyarrow as pa

    return {
        "pool": pa.default_memory_pool().backend_name,
        "env": os.environ.get("ARROW_DEFAULT_MEMORY_POOL"),
    }


def test_a_ray_worker_allocates_with_the_package_arrow_pool(monkeypatch):
    """A worker started without the variable gets glibc's pool from the package's import.

    ``lib/memory.py:use_arrow_pool`` runs when a work unit's module imports
    ``curation_assets.lib``; without it pyarrow's wheels would use mimalloc there.
    """
    from curation_assets.lib.engine import RayEngine
    from curation_assets.lib.memory import ARROW_POOL, ARROW_POOL_ENV

    monkeypatch.delenv(ARROW_POOL_ENV, raising=False)  # the nodes start without it
    with ray_cluster(1) as cluster:
        results = list(RayEngine(cluster.address).map_shards(pool_work, ["a", "b"]))
    assert [r.value["pool"] for r in results] == [ARROW_POOL, ARROW_POOL]
    assert all(r.pid != os.getpid() for r in results)


def test_gpu_tasks_get_a_gpu_and_keep_their_worker_process():
    """On a node declaring a GPU, each embedding task gets it, and the worker is reused.

    Ray recycles the worker of a function declared with ``num_gpus`` after each call; the
    engine asks for the GPU per call and declares ``max_calls=0``, so a model cached in the
    worker serves every shard (``lib/engine`` docstring).
    Its own cluster, a single node declaring one (absent) GPU; it runs before the module's
    two-node cluster starts (the first test asking for ``demo``).
    """
    import ray

    from curation_assets.lib.engine import RayEngine

    with ray_cluster(1, gpus_per_node=1) as cluster:
        engine = RayEngine(cluster.address)
        results = list(engine.map_shards(gpu_work, [f"s{i}" for i in range(4)], wants_gpu=True))
        peak = engine.peak_in_flight
        cpu = list(engine.map_shards(gpu_work, ["c0", "c1"]))
        # half a GPU and half of the node's one CPU each, so that two fit at once
        halves = RayEngine(cluster.address, gpus_per_task=0.5, num_cpus=0.5)
        shared = list(halves.map_shards(shared_gpu_work, ["h0", "h1"], wants_gpu=True))
        # progress inside a task reaches the caller (the step's run log) while it runs
        heard: list[tuple[str, str, float]] = []
        chatty = RayEngine(cluster.address, progress_poll_s=0.2)
        told = chatty.map_shards(
            chatty_work, ["p0", "p1"], on_progress=lambda k, s: heard.append((k, s, time.time()))
        )
        finished = {r.key: time.time() for r in told}
        # a work's own OSError comes back as itself, naming the shard (Ray raises a class
        # derived from RayTaskError and OSError, without RayTaskError's pid attribute)
        with pytest.raises(OSError, match="storage gone while writing bad") as failed:
            list(engine.map_shards(oserror_work, ["bad"]))
        assert any("shard 'bad'" in note for note in failed.value.__notes__)
    assert not ray.is_initialized()
    assert [r.value["gpu_ids"] for r in results] == [[0]] * 4
    assert {r.value["cuda_visible"] for r in results} == {"0"}
    assert len({r.pid for r in results}) == 1  # one worker process ran all four GPU tasks
    assert [r.value["gpu_ids"] for r in cpu] == [[], []]  # not asked for: no GPU
    assert peak == 2  # one GPU slot: two tasks submitted at once (one running, one queued)
    # half a GPU each: both tasks ran at the same time on the one GPU, in two workers
    assert [r.value["gpu_ids"] for r in shared] == [[0], [0]]
    (a0, a1), (b0, b1) = (r.value["span"] for r in shared)
    assert a0 < b1 and b0 < a1, "the two half-GPU tasks did not overlap"
    assert halves.peak_in_flight == 2
    assert sorted((k, s) for k, s, _ in heard) == [
        ("p0", "p0 all done"),
        ("p0", "p0 half done"),
        ("p1", "p1 all done"),
        ("p1", "p1 half done"),
    ]
    # "half done" was heard while its task still ran (it sleeps 1 s after saying it), not
    # relayed with the result
    early = [finished[k] - t for k, s, t in heard if s.endswith("half done")]
    assert min(early) > 0.3, early


@pytest.fixture(scope="module")
def demo(tmp_path_factory, ray_two_nodes: RayCluster) -> Iterator[dict[str, Any]]:  # noqa: F811
    """The demo corpus ingested (locally), resources for both engines, the shared instance."""
    tmp = tmp_path_factory.mktemp("engine")
    corpus = build_demo_corpus(tmp / "src", n_base=40)
    local = {**resources(tmp, corpus.root, tiny_clip=False), "categories": Categories()}
    ray = {**local, "engine": Engine(address=ray_two_nodes.address)}
    store = DeltaStore(str(tmp / "delta"))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(SHARDS_PARTITION, SHARDS)
        assert materialize([ingest], instance, local).success
        yield {
            "instance": instance,
            "local": local,
            "ray": ray,
            "store": store,
            "corpus": corpus,
            "cluster": ray_two_nodes,
            "expected": {},
        }


def both(demo: dict, assets: list, tables: list[tuple[TableSpec, dict[str, str]]], node: str):
    """Materialize with the local engine, then with Ray; compare ``tables``; Ray's metadata."""
    store, instance = demo["store"], demo["instance"]
    local = materialize(assets, instance, demo["local"])
    assert local.success, step_errors(local)
    expected = {spec.name: snapshot(store, spec, **where) for spec, where in tables}
    assert expected[tables[0][0].name].height > 0
    ray = materialize(assets, instance, demo["ray"])
    assert ray.success, step_errors(ray)
    for spec, where in tables:
        assert_same(snapshot(store, spec, **where), expected[spec.name])
    demo["expected"].update(expected)
    local_meta = shard_metadata(local, node)
    assert {m["engine"] for m in local_meta.values()} == {"local"}
    ray_meta = shard_metadata(ray, node)
    assert {m["engine"] for m in ray_meta.values()} == {"ray"}
    assert all(m["worker_pid"] != os.getpid() for m in ray_meta.values())
    for key, meta in ray_meta.items():  # the same row counts and figures per shard
        same = {k: v for k, v in meta.items() if k.startswith(("dagster/row_count", "mean_"))}
        assert same == {k: v for k, v in local_meta[key].items() if k in same}
    # the checks pass with both engines
    assert all(e.passed for e in ray.get_asset_check_evaluations())
    return ray_meta


def test_per_shard_assets_on_ray_write_the_local_tables_on_both_nodes(demo):
    store = demo["store"]
    nodes: set[str] = set()
    embed = both(
        demo,
        [image_embeddings],
        [(IMAGE_EMBEDDINGS, {}), (QUARANTINE, {"stage": "embed"})],
        "image_embeddings",
    )
    nodes |= {m["ray_node_id"] for m in embed.values()}
    # one model load per Ray worker process, not per shard
    workers = {(m["ray_node_id"], m["worker_pid"]) for m in embed.values()}
    assert sum(m["model_loaded"] for m in embed.values()) == len(workers) < len(SHARDS)

    seed = pl.read_csv(write_seed_labels(demo["corpus"], n_pos=12, n_neg=30))
    raw = store.read(RAW_IMAGES, columns=["image_id", "source_uri"])
    labels = seed.join(raw, on="source_uri").select(
        "image_id",
        "category",
        label=pl.col("label").cast(pl.Int8),
        source=pl.lit("test"),
        labeled_at=pl.lit(datetime(2026, 1, 1, tzinfo=UTC)),
    )
    store.append(LABELS, labels)
    trained = materialize(
        [safety_classifiers],
        demo["instance"],
        demo["local"],
        config={"safety_classifiers": {"config": {"min_positives": 5, "n_splits": 3}}},
    )
    assert trained.success, step_errors(trained)
    assert store.read(SAFETY_CLASSIFIERS)["status"].to_list() == ["trained"]
    scores = both(demo, [classifier_scores], [(CLASSIFIER_SCORES, {})], "classifier_scores")
    nodes |= {m["ray_node_id"] for m in scores.values()}

    filtered = materialize([filter_shard], demo["instance"], demo["local"])
    assert filtered.success, step_errors(filtered)
    centroids = materialize(
        [cluster_centroids],
        demo["instance"],
        demo["local"],
        config={"cluster_centroids": {"config": {"k": 4}}},
    )
    assert centroids.success, step_errors(centroids)
    assigned = both(
        demo,
        [cluster_assignments],
        [(assignments_spec(c), {}) for c in range(N_CLUSTERINGS)],
        "cluster_assignments",
    )
    assert len(assigned) == N_CLUSTERINGS * len(SHARDS)
    nodes |= {m["ray_node_id"] for m in assigned.values()}
    assert nodes <= set(demo["cluster"].node_ids())
    assert len(nodes) == 2  # the work ran on both Ray nodes


def _similarity_tables(store: DeltaStore) -> tuple[pl.DataFrame, pl.DataFrame]:
    """similarity_index without its files' names and times; image_uniqueness without times."""
    index = store.read(SIMILARITY_INDEX).drop("file", "built_at").sort("shard")
    scores = store.read(IMAGE_UNIQUENESS).drop("scored_at").sort("image_id")
    return index, scores


def _timed(assets: list, instance, res: dict, name: str):
    t0 = time.perf_counter()
    result = materialize(assets, instance, res)
    assert result.success, step_errors(result)
    logger.info(
        "%s with the %s engine: %.1f s", name, res["engine"].address, time.perf_counter() - t0
    )
    return result


def test_similarity_steps_on_ray_write_the_local_tables_and_index_files(demo):
    """similarity_index and image_uniqueness: the same tables and search results on Ray."""
    store, instance = demo["store"], demo["instance"]
    if not store.exists(IMAGE_EMBEDDINGS.name):  # alone (-k): embed the shards locally first
        embedded = materialize([image_embeddings], instance, demo["local"])
        assert embedded.success, step_errors(embedded)
    trained = materialize([similarity_quantizer], instance, demo["local"])
    assert trained.success, step_errors(trained)
    quantizer = load_quantizer(store)
    assert quantizer is not None
    x = embedding_matrix(store.read(IMAGE_EMBEDDINGS).sort("image_id")["embedding"])
    runs, tables, hits = {}, {}, {}
    for engine in ("local", "ray"):
        res = demo[engine]
        index = _timed([similarity_index], instance, res, "similarity_index")
        scored = _timed([image_uniqueness], instance, res, "image_uniqueness")
        runs[engine] = {
            **shard_metadata(index, "similarity_index"),
            **shard_metadata(scored, "image_uniqueness"),
        }
        assert all(e.passed for r in (index, scored) for e in r.get_asset_check_evaluations())
        assert [len(r.get_asset_check_evaluations()) for r in (index, scored)] == [1, 1]
        tables[engine] = _similarity_tables(store)
        hits[engine] = search(store, x, 6, nprobe=quantizer.nlist, quantizer=quantizer)
    (local_index, local_scores), (ray_index, ray_scores) = tables["local"], tables["ray"]
    assert ray_index.height == len(SHARDS) and ray_index.equals(local_index)
    assert local_scores.height == x.shape[0]
    assert_same(ray_scores, local_scores)
    # the Ray run's files (new names: the local ones were superseded and removed) answer alike
    assert hits["ray"].image_ids == hits["local"].image_ids
    np.testing.assert_allclose(hits["ray"].similarity, hits["local"].similarity, atol=1e-6)
    assert hits["ray"].searched_shards == len(SHARDS)
    # the same metadata keys and figures per shard, plus where each shard ran
    local, ray = runs["local"], runs["ray"]
    assert len(local) == len(ray) == 2 * len(SHARDS)
    assert {m["engine"] for m in local.values()} == {"local"}
    assert {m["engine"] for m in ray.values()} == {"ray"}
    nodes = {m["ray_node_id"] for m in ray.values()}
    assert nodes <= set(demo["cluster"].node_ids())
    assert all(m["worker_pid"] != os.getpid() for m in ray.values())
    varying = {"file", "seconds", "task_seconds", "worker_pid", "worker_host", "engine"}
    for key, meta in ray.items():
        assert set(meta) - {"ray_node_id"} == set(local[key])
        for name, value in meta.items():
            if name not in varying | {"ray_node_id", "superseded_files_removed"}:
                assert value == local[key][name], (key, name)
        if key.startswith("image_uniqueness/"):  # thumbnails made in the step from the outcome
            thumbs = meta["most_and_least_unique"].count("data:image/jpeg;base64,")
            assert thumbs == local[key]["most_and_least_unique"].count("data:image/jpeg;base64,")
            assert thumbs == 8
    assert all(m["superseded_files_removed"] == 1 for k, m in ray.items() if "index/" in k)


def _embed_version(store: DeltaStore) -> int:
    return DeltaTable(store.uri(IMAGE_EMBEDDINGS.name)).version()


def _embed_commits_by(store: DeltaStore, pid: int, since: int) -> int:
    """Commits to image_embeddings after version ``since`` by process ``pid``."""
    history = DeltaTable(store.uri(IMAGE_EMBEDDINGS.name)).history()
    return sum(
        int(h["version"]) > since and str(h.get("curation.writer", "")).endswith(f":{pid}")
        for h in history
    )


def test_a_killed_worker_is_retried_by_ray_and_the_step_succeeds(demo):
    if IMAGE_EMBEDDINGS.name not in demo["expected"]:
        pytest.skip("needs the local tables of the first test")
    since = _embed_version(demo["store"])
    result, killed = killing(SHARDS[0], [image_embeddings], demo["instance"], demo["ray"])
    assert result.success, step_errors(result)
    meta = shard_metadata(result, "image_embeddings")[f"image_embeddings/{SHARDS[0]}"]
    assert meta["engine"] == "ray" and meta["worker_pid"] != killed  # a new worker redid it
    assert _embed_commits_by(demo["store"], killed, since) == 0
    assert_same(snapshot(demo["store"], IMAGE_EMBEDDINGS), demo["expected"]["image_embeddings"])


def test_a_worker_dying_past_rays_retries_fails_the_attempt_naming_the_shard(demo):
    """No Ray retry: the attempt fails naming the shard; Dagster's step retry converges.

    Between the failed attempt and the step's retry (15 s later), the killed shard still
    shows its last committed rows: nothing half-written is visible.
    """
    if IMAGE_EMBEDDINGS.name not in demo["expected"]:
        pytest.skip("needs the local tables of the first test")
    store = demo["store"]
    before = snapshot(store, IMAGE_EMBEDDINGS, shard=SHARDS[0])
    since = _embed_version(store)
    seen: list[pl.DataFrame] = []
    no_retry = {**demo["ray"], "engine": Engine(address=demo["cluster"].address, max_retries=0)}
    result, killed = killing(
        SHARDS[0],
        [image_embeddings],
        demo["instance"],
        no_retry,
        after_kill=lambda: seen.append(snapshot(store, IMAGE_EMBEDDINGS, shard=SHARDS[0])),
    )
    assert result.success, step_errors(result)  # the step's retry redid the run's shards
    (retry,) = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    error = str(getattr(retry.event_specific_data, "error", ""))  # with its causes
    assert f"shard '{SHARDS[0]}'" in error and "the Ray worker running its task died" in error
    assert "WorkerCrashedError" in error
    # the failed attempt reported the shards that finished beside the killed one, not that one
    first = result.all_events[: result.all_events.index(retry)]
    reported = {e.materialization.partition for e in first if e.is_step_materialization}
    assert SHARDS[0] not in reported and reported <= set(SHARDS[1:])
    # nothing half-written was visible between the attempts, and the dead worker committed nothing
    (between,) = seen
    assert_same(between, before, atol=0)
    assert _embed_commits_by(store, killed, since) == 0
    assert_same(snapshot(store, IMAGE_EMBEDDINGS), demo["expected"]["image_embeddings"])


WEIGHT_SHARDS = ("w-0", "w-1", "w-2", "w-3")
WEIGHT_TABLES = (SAMPLE_WEIGHTS, WEIGHT_SHARD_STATS, AUDIT_SHARD_COUNTS, BIAS_AUDIT)


def _weight_tables(store: DeltaStore) -> dict[str, pl.DataFrame]:
    """The weights stage's tables in a canonical order (probes without their fit time)."""
    out = {}
    for spec in WEIGHT_TABLES:
        df = store.read(spec)
        keys = ("shard", "image_id", "attribute", "value", "hit")
        out[spec.name] = df.sort([c for c in keys if c in df.columns])
    out[WEIGHT_PROBES.name] = store.read(WEIGHT_PROBES).drop("fitted_at")
    return out


def test_weights_on_ray_write_the_local_tables(tmp_path, ray_two_nodes: RayCluster):  # noqa: F811
    """weights_and_audit: the same tables with the Ray engine, one task per scored shard.

    Two roots get the same synthetic inputs; each is weighted with one engine, in full, then
    again after a fifth shard arrives (incremental: that shard alone is scored). Every table
    of the stage is equal after each run, bit for bit; the Ray runs' metadata says which nodes
    ran their tasks.
    """
    config = {"weights_and_audit": {"config": {"pca_dim": 4, "min_support": 10}}}
    metas: dict[str, list[dict[str, Any]]] = {"local": [], "ray": []}
    tables: dict[str, list[dict[str, pl.DataFrame]]] = {"local": [], "ray": []}
    with dg.instance_for_test() as instance:
        for name, address in (("local", "local"), ("ray", ray_two_nodes.address)):
            delta = DeltaStorage(root_uri=str(tmp_path / name / "delta"))
            store = delta.store()
            folder = tmp_path / name / "img"
            write_weight_inputs(store, folder, n=800, images=False, shards=WEIGHT_SHARDS)
            res = {
                "delta": delta,
                "embedder": ImageEmbedder(),
                "compute": Compute(),
                "engine": Engine(address=address),
            }
            for step in ("full", "incremental"):
                if step == "incremental":
                    write_weight_inputs(store, folder, n=200, seed=9, images=False, shards=("w-4",))
                t0 = time.perf_counter()
                result = materialize([weights_and_audit], instance, res, config=config)
                assert result.success, step_errors(result)
                logger.info(
                    "weights (%s) with the %s engine: %.1f s", step, name, time.perf_counter() - t0
                )
                blocking = {"weights_finite_positive", "weights_mean_one", "weights_within_bounds"}
                checks = result.get_asset_check_evaluations()
                assert all(e.passed for e in checks if e.check_name in blocking)
                (meta,) = [
                    {k: v.value for k, v in m.metadata.items()}
                    for m in result.asset_materializations_for_node("weights_and_audit")
                    if m.asset_key.to_user_string() == "sample_weights"
                ]
                metas[name].append(meta)
                tables[name].append(_weight_tables(store))
    for local, ray in zip(tables["local"], tables["ray"], strict=True):
        for table, frame in local.items():
            assert frame.height > 0 and frame.equals(ray[table]), table
    (lf, li), (rf, ri) = metas["local"], metas["ray"]
    assert (lf["mode"], li["mode"]) == (rf["mode"], ri["mode"]) == ("full", "incremental")
    assert (rf["shards_scored"], ri["shards_scored"]) == (4, 1)
    for key in ("probe_id", "scale", "kept_images", "weight_mean", "ess"):
        assert (lf[key], li[key]) == (rf[key], ri[key]), key
    # locally the small shards are one group: one task, in the step's process
    assert (lf["score_engine"], lf["score_tasks"]) == ("local", 1)
    assert "score_tasks_per_node" not in lf
    # on Ray one task per scored shard, each on a node of the cluster
    nodes = set(ray_two_nodes.node_ids())
    for meta, tasks in ((rf, 4), (ri, 1)):
        assert (meta["score_engine"], meta["score_tasks"]) == ("ray", tasks)
        per_node = meta["score_tasks_per_node"]
        logger.info("weights tasks per Ray node: %s", per_node)
        assert set(per_node) <= nodes and sum(per_node.values()) == tasks
        assert meta["score_ray_nodes"] == len(per_node)


def test_dedup_on_ray_full_and_one_pass_update_give_the_local_graph(
    tmp_path,
    ray_two_nodes: RayCluster,  # noqa: F811
):
    """run_dedup on Ray: the units (full) and an update's one-pass buckets, as the local engine.

    The update's new rows travel in each bucket task's arguments; both runs write the local
    engine's deduplicated_images and duplicate_pairs.
    """
    x, _ = clip_like_embeddings(4 * 150, 16, dup_fraction=0.3, seed=5)
    models = train_clusterings(x, 8, niter=5)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    budget = MemoryBudget(0.3)  # two buckets a clustering
    found: dict[str, dict[str, Any]] = {}
    engines = {"local": LocalEngine(), "ray": RayEngine(ray_two_nodes.address)}
    for name, engine in engines.items():
        store = DeltaStore(str(tmp_path / name))
        for c, model in enumerate(models):
            store.replace_table(centroids_spec(c), centroids_frame(model, DEDUP_MODEL, now))
        for s in range(3):
            add_shard(store, f"s{s}", x[s * 150 : (s + 1) * 150], start=100 * s)
        full = run_and_write(store, engine=engine, budget=budget)
        add_shard(store, "s3", x[450:], start=300)
        update = run_and_write(store, engine=engine, budget=budget, new_rows="one_pass")
        found[name] = {
            "full": full.stats,
            "update": update.stats,
            "images": store.read(DEDUPLICATED_IMAGES).sort("image_id"),
            "pairs": store.read(DUPLICATE_PAIRS).sort("image_id_a", "image_id_b"),
        }
    local, ray = found["local"], found["ray"]
    assert ray["full"]["search"] == "units" and ray["update"]["search"] == "new_rows"
    assert ray["full"]["units"] == sum(ray["full"]["buckets"]) > 2
    assert ray["update"]["units"] == ray["full"]["buckets"][0] == 2
    for step in ("full", "update"):
        assert ray[step]["engine"] == "ray" and ray[step]["unit_nodes"] >= 1
        assert local[step]["engine"] == "local"
    assert ray["update"]["new_pairs"] > 0
    assert local["images"].equals(ray["images"]) and local["pairs"].equals(ray["pairs"])
