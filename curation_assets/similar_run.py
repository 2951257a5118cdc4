"""The similarity stage in ``curation run``: quantizer when missing, then index + uniqueness.

Kept beside :mod:`curation_assets.runner` (which runs the other stages) so the runner stays
one screen per concern; it drives the same :class:`~curation_assets.runner.Runner`.
"""

from collections.abc import Sequence
from typing import TYPE_CHECKING

import dagster as dg

if TYPE_CHECKING:
    from curation_assets.runner import Runner

SIMILAR = [dg.AssetKey("similarity_index"), dg.AssetKey("image_uniqueness")]
"""The per-shard part of ``similarity_job``."""


def run_similarity(runner: "Runner", shards: Sequence[str]) -> list[str]:
    """Train the quantizer if missing, then index and score every shard not yet current.

    A shard is current when its ``image_uniqueness`` came after its ``similarity_index``,
    which came after its embeddings and the quantizer. Every shard is indexed before any is
    scored only within one run of ``similarity_job`` (up to ``shards_per_run`` shards), so
    a first run over more shards than that scores early shards against fewer images (see
    ``lib/similar/uniqueness.py``: scores are as of scoring).

    Returns:
        The shards whose similarity work is done.
    """
    from curation_assets.lib.similar import load_quantizer
    from curation_assets.lib.storage import DeltaStore

    fresh = runner.fresh
    if load_quantizer(DeltaStore(runner.delta_root)) is None:
        runner.echo("similarity quantizer:")
        if not runner.execute("similarity_quantizer_job", "similarity_quantizer"):
            return []

    def done(key: str) -> bool:
        return fresh.current(
            "similarity_index",
            key,
            [("image_embeddings", key), ("similarity_quantizer", None)],
        ) and fresh.current("image_uniqueness", key, [("similarity_index", key)])

    runner.echo("similarity index + uniqueness:")
    return runner.per_shard(
        shards,
        selection=SIMILAR,
        done=done,
        why="indexed and scored",
        job="similarity_job",
    )
