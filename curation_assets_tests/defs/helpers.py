"""Helpers for asset tests: resources in tmp_path and partition-aware materialization."""

from pathlib import Path

import dagster as dg

from curation_assets.defs.embed import image_embeddings
from curation_assets.defs.ingest import ingest
from curation_assets.defs.partitions import SHARDS_PARTITION
from curation_assets.defs.resources import (
    Compute,
    DeltaStorage,
    Engine,
    ImageEmbedder,
    ShardSource,
)
from curation_assets_tests.conftest import TINY_CLIP_CONFIG


def resources(
    tmp_path: Path, source: Path, *, tiny_clip: bool = True, engine: str = "local"
) -> dict:
    """Resources rooted in ``tmp_path``; the tiny open_clip model unless told otherwise.

    ``engine`` is the engine address (``local``, or a Ray cluster's ``host:port``).
    """
    embedder = (
        ImageEmbedder(
            backend="open_clip",
            model_name="tiny",
            pretrained="random",
            model_config_path=str(TINY_CLIP_CONFIG),
        )
        if tiny_clip
        else ImageEmbedder()
    )
    return {
        "delta": DeltaStorage(root_uri=str(tmp_path / "delta")),
        "shard_source": ShardSource(root=str(source), min_age_s=0),
        "embedder": embedder,
        "compute": Compute(),
        "engine": Engine(address=engine),
    }


def materialize_shard(
    instance: dg.DagsterInstance,
    res: dict,
    shard: str,
    *,
    embed: bool = True,
    ingest_config: dict | None = None,
) -> dg.ExecuteInProcessResult:
    """Register ``shard`` (if new) and materialize ingest (+ embeddings) for it."""
    if not instance.has_dynamic_partition(SHARDS_PARTITION, shard):
        instance.add_dynamic_partitions(SHARDS_PARTITION, [shard])
    assets = [ingest, image_embeddings] if embed else [ingest]
    run_config = {"ops": {"ingest": {"config": ingest_config}}} if ingest_config else None
    return dg.materialize(
        assets,
        partition_key=shard,
        instance=instance,
        resources=res,
        raise_on_error=False,
        run_config=run_config,
    )


def check_results(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    """``{check_name: passed}`` of a run."""
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
