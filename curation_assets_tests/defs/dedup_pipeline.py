"""The demo pipeline the cluster and dedup asset tests share (real EfficientNet-Lite0 embeddings).

Four shards filtered (all kept); centroids trained on three; three assigned and deduplicated,
the fourth waits. Built once per test package by the ``pipeline`` fixture (conftest.py).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg

from curation_assets.defs.classify import classifier_scores
from curation_assets.defs.cluster import cluster_assignments, cluster_centroids
from curation_assets.defs.dedup import deduplicate
from curation_assets.defs.filter import filter_shard
from curation_assets.defs.resources import Categories
from curation_assets.lib.storage import DeltaStore
from curation_assets.runner import step_errors
from curation_assets.tools.demo import build_demo_corpus
from curation_assets_tests.defs.helpers import materialize_shard, resources

SHARDS = ["shard-000", "shard-001.tar", "shard-002.csv", "shard-003.parquet"]


def run(assets, instance, res, *, partition_key=None, config=None):
    """Materialize ``assets`` and assert success (with the step errors when it fails)."""
    result = dg.materialize(
        assets,
        partition_key=partition_key,
        instance=instance,
        resources=res,
        raise_on_error=False,
        run_config=dg.RunConfig(ops=config or {}),
    )
    assert result.success, step_errors(result)
    return result


def prepare_shard(instance, res, shard):
    """Ingest, embed, score and filter one shard."""
    assert materialize_shard(instance, res, shard).success
    run([classifier_scores, filter_shard], instance, res, partition_key=shard)


def assign(instance, res, shard):
    """Assign one shard in every clustering."""
    return run([cluster_assignments], instance, res, partition_key=shard)


def dedup(instance, res, **config):
    """Deduplicate with ``config`` (none: the defaults)."""
    return run(
        [deduplicate], instance, res, config={"deduplicate": {"config": config}} if config else None
    )


@contextmanager
def build_pipeline(tmp: Path) -> Iterator[dict[str, Any]]:
    """Centroids on three shards, a fourth filtered after training; three deduplicated."""
    corpus = build_demo_corpus(tmp / "src", n_base=40)
    res = resources(tmp, corpus.root, tiny_clip=False)
    res["categories"] = Categories()  # no labels → no classifier → every image passes
    store = DeltaStore(str(tmp / "delta"))
    with dg.instance_for_test() as instance:
        for shard in SHARDS[:3]:
            prepare_shard(instance, res, shard)
        centroids = run(
            [cluster_centroids], instance, res, config={"cluster_centroids": {"config": {"k": 4}}}
        )
        prepare_shard(instance, res, SHARDS[3])  # filtered after training, not yet assigned
        assignments = {shard: assign(instance, res, shard) for shard in SHARDS[:3]}
        first = dedup(instance, res)
        yield {
            "instance": instance,
            "res": res,
            "store": store,
            "corpus": corpus,
            "centroids": centroids,
            "assignments": assignments,
            "first": first,
        }
