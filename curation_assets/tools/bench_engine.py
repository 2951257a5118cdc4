"""Time the per-shard steps on the local engine and on a Ray cluster (issue 14).

On the demo corpus (four shards), ingested once, each step that runs on the engine
(image_embeddings, classifier_scores, cluster_assignments) is materialized over all shards in
one run with the local engine, then with the Ray engine at ``--address``, on the same inputs
(the global steps between them, safety_classifiers from the demo's seed labels, filter_shard
and cluster_centroids, run once, locally). For each step and engine it prints the step's wall
time, the sum of its shard tasks' times, the busiest node's sum (the critical path when the
nodes run in parallel), the orchestration overhead (step − sum, and step − busiest node) and
the shards each node ran.

Run: ``curation bench engine --address 127.0.0.1:6379 [--n-base 360]``
(the cluster must see this checkout on its ``PYTHONPATH``).
"""

import json
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl

from curation_assets.defs.classify import classifier_scores, safety_classifiers
from curation_assets.defs.cluster import cluster_assignments, cluster_centroids
from curation_assets.defs.embed import image_embeddings
from curation_assets.defs.filter import filter_shard
from curation_assets.defs.ingest import ingest
from curation_assets.defs.partitions import SHARDS_PARTITION, range_tags
from curation_assets.defs.resources import (
    Categories,
    Compute,
    DeltaStorage,
    Engine,
    ImageEmbedder,
    ShardSource,
)
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import LABELS, RAW_IMAGES
from curation_assets.runner import step_errors, step_seconds
from curation_assets.tools.demo import build_demo_corpus, write_seed_labels


def _run(assets: list, instance: Any, res: dict, shards: list[str], ops: dict | None = None):
    partitioned = any(a.partitions_def for a in assets)
    result = dg.materialize(
        assets,
        instance=instance,
        resources=res,
        tags=range_tags(shards) if partitioned else None,
        run_config={"ops": ops or {}},
        raise_on_error=False,
    )
    if not result.success:
        raise RuntimeError(f"{[a.key for a in assets]} failed: {step_errors(result)}")
    return result


def figures(result: Any, node: str) -> dict[str, Any]:
    """Step seconds, task seconds, overhead and per-node shard counts of one run of ``node``."""
    step = step_seconds(result)[node]
    tasks: dict[str, tuple[str, float]] = {}  # one task per shard (a multi-asset repeats it)
    for m in result.asset_materializations_for_node(node):
        meta = {k: v.value for k, v in m.metadata.items()}
        where = meta.get("ray_node_id") or f"local:{meta['worker_pid']}"
        tasks[str(m.partition)] = (str(where)[:12], float(meta["task_seconds"]))
    per_node: dict[str, float] = defaultdict(float)
    for where, seconds in tasks.values():
        per_node[where] += seconds
    total = sum(per_node.values())
    return {
        "step_s": round(step, 2),
        "tasks_sum_s": round(total, 2),
        "busiest_node_s": round(max(per_node.values()), 2),
        "overhead_vs_sum_s": round(step - total, 2),
        "overhead_vs_busiest_s": round(step - max(per_node.values()), 2),
        "shards_per_node": dict(Counter(where for where, _ in tasks.values())),
    }


def bench(address: str, home: Path, n_base: int) -> dict[str, dict[str, Any]]:
    """Run the comparison under ``home``; ``{step/engine: figures}``."""
    corpus = build_demo_corpus(home / "src", n_base=n_base)
    shards = corpus.shards
    local = {
        "delta": DeltaStorage(root_uri=str(home / "delta")),
        "shard_source": ShardSource(root=str(corpus.root), min_age_s=0),
        "embedder": ImageEmbedder(),
        "compute": Compute(),
        "categories": Categories(),
        "engine": Engine(),
    }
    ray = {**local, "engine": Engine(address=address)}
    store = DeltaStore(str(home / "delta"))
    out: dict[str, dict[str, Any]] = {}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(SHARDS_PARTITION, shards)
        _run([ingest], instance, local, shards)

        def both(asset: Any, node: str) -> None:
            for name, res in (("local", local), ("ray", ray)):
                out[f"{node}/{name}"] = figures(_run([asset], instance, res, shards), node)
                print(node, name, json.dumps(out[f"{node}/{name}"]), flush=True)  # noqa: T201

        both(image_embeddings, "image_embeddings")
        seed = pl.read_csv(write_seed_labels(corpus))
        raw = store.read(RAW_IMAGES, columns=["image_id", "source_uri"])
        store.append(
            LABELS,
            seed.join(raw, on="source_uri").select(
                "image_id",
                "category",
                label=pl.col("label").cast(pl.Int8),
                source=pl.lit("bench"),
                labeled_at=pl.lit(datetime.now(UTC)),
            ),
        )
        _run([safety_classifiers], instance, local, shards)
        both(classifier_scores, "classifier_scores")
        _run([filter_shard], instance, local, shards)
        _run([cluster_centroids], instance, local, shards)
        both(cluster_assignments, "cluster_assignments")
    return out
