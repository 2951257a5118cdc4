"""``deduplicated_images``: one row per deduplicated image, written shard by shard.

A shard's rows are its ready images (:class:`~.readyids.ReadyIds`, when the run laid it out)
or its committed images (an old shard whose decisions changed), each with its decision in
the merged graph (an image on no pair is kept, alone in its group). Shards are written in
commits of at most :data:`SHARDS_PER_COMMIT` shards and :data:`ROWS_PER_COMMIT` rows, so the
ids and rows one commit holds are bounded whatever N is.

Memory: one commit's ids (Arrow strings) and decision rows, and the graph's rows of its shards.
"""

from collections.abc import Collection, Sequence

import polars as pl

from curation_assets.lib.dedup.readyids import ReadyIds
from curation_assets.lib.memory import shard_batches
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import DEDUPLICATED_IMAGES

#: Shards of deduplicated_images rewritten per Delta commit (their ids and decisions only).
SHARDS_PER_COMMIT = 256
#: Rows of deduplicated_images rewritten per Delta commit (a bigger shard alone): ~50 bytes of
#: id and decision a row as read back, so one commit holds ~100 MB at most, not every id (at
#: 9.2M images the 102 shards of one commit held 1.1 GB of ids as Python strings).
ROWS_PER_COMMIT = 2_000_000


def write_decisions(
    store: DeltaStore,
    shards: Sequence[str],
    ready: ReadyIds,
    members: pl.DataFrame,
    *,
    old: Collection[str],
    committed: int | None,
) -> None:
    """Replace the ``deduplicated_images`` rows of ``shards``.

    Args:
        store: Delta store.
        shards: The shards to rewrite; one neither ready nor in ``old`` loses its rows (it is
            gone, or redone but waiting).
        ready: The run's laid-out shards and their ids.
        members: ``duplicate_members`` rows with their decisions.
        old: Shards rewritten with their committed images (decisions changed, rows did not).
        committed: The committed ``deduplicated_images`` version those images are read at.
    """
    counts = (
        store.shard_row_counts(DEDUPLICATED_IMAGES.name, committed) if committed is not None else {}
    )
    sizes = {s: ready.get(s, counts.get(s, 0)) for s in shards}
    for group in shard_batches(sizes, shards, ROWS_PER_COMMIT, max_shards=SHARDS_PER_COMMIT):
        ids = ready.ids(group)
        again = [s for s in group if s in old]
        if again:
            rows = store.read(
                DEDUPLICATED_IMAGES, shards=again, columns=["image_id", "shard"], version=committed
            )
            ids.update({s: g["image_id"] for (s,), g in rows.group_by("shard")})
        part = members.filter(pl.col("shard").is_in(group))
        frames = [shard_decisions(s, ids[s], part) for s in group if s in ids]
        store.replace_rows(DEDUPLICATED_IMAGES, "shard", group, frames)


def shard_decisions(shard: str, ids: pl.Series, members: pl.DataFrame) -> pl.DataFrame:
    """``deduplicated_images`` rows of one shard: its graph rows' decisions, the rest kept."""
    base = ids.cast(pl.String).rename("image_id").to_frame().sort("image_id")
    graph = members.filter(pl.col("shard") == shard).select(
        "image_id", "kept", "duplicate_of", "similarity", "component_id"
    )
    rows = base.join(graph, on="image_id", how="left")
    return DEDUPLICATED_IMAGES.conform(
        rows.with_columns(
            shard=pl.lit(shard),
            kept=pl.col("kept").fill_null(True),
            component_id=pl.col("component_id").fill_null(pl.col("image_id")),
        )
    ).sort("image_id")
