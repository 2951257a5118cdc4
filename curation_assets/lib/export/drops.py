"""Export shards whose only change is kept images leaving: cost ∝ those images, not the shard.

An incremental dedup run flips a few hundred old kept images to removed, spread over nearly
every old shard; the weights stage deletes their ``sample_weights`` rows by tombstones. A plain
export would re-read each such shard's inputs whole and rewrite its files and Delta rows from
them (at 1M images: every shard, the batch's rows in memory). Here such a shard is
*drop-patched*:

* its files are republished from its own published files less the dropped images
  (:func:`~.shards.rewrite_shard_files`: the manifest filtered as it streams, the tars' other
  samples copied member by member; no source image is read again) — what a rewrite from the
  inputs writes, byte for byte;
* its ``curated_dataset`` rows are deleted in place by tombstones (merge-on-read,
  :mod:`curation_assets.lib.revisions`), every such shard's in one commit, after the files (a
  shard's folder may be newer than its rows, never older, as in :mod:`.run`).

A shard qualifies (:func:`drop_only`) when, since the last export commit, its
``filtered_images`` did not change, its ``deduplicated_images`` and ``sample_weights`` base
files are the committed ones, every decision changed since is kept → removed, every weight row
changed since is a tombstone, and the tombstoned images are exactly the flipped images the
last export listed; with WebDataset on, its last export must have had no failed image (a
failed row would be retried by a rewrite, not by a copy). A shard that would lose every row is
rewritten (removed) as before. Anything else is rewritten from its inputs.

Memory and reads: the change rows since the commit's versions, the last export's rows of the
flipped images (a key-filtered read), one streaming batch of a manifest and one tar member.
"""

from collections.abc import Mapping
from typing import Any

import polars as pl

from curation_assets.lib.commits import Commit
from curation_assets.lib.compaction import changes_since, left_since, same_base
from curation_assets.lib.export.shards import Out, rewrite_shard_files, shard_entry
from curation_assets.lib.revisions import DELETED
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import CURATED_DATASET, DEDUPLICATED_IMAGES, SAMPLE_WEIGHTS


def drop_only(
    store: DeltaStore, last: Commit, candidates: set[str], *, webdataset: bool
) -> tuple[dict[str, pl.DataFrame], set[str]]:
    """Which of ``candidates`` only lost exported images since ``last``, and which lost none.

    Args:
        store: The Delta store.
        last: The export's last commit (its input versions, output version and entries).
        candidates: Shards changed in ``deduplicated_images`` or ``sample_weights`` only (not
            in ``filtered_images``, not torn, files intact).
        webdataset: WebDataset export on (a shard with failures is not drop-patched).

    Returns:
        ``(drops, unchanged)``: shard → its last export's ``curated_dataset`` rows of the
        images that leave it; and the shards whose exported rows do not change at all (their
        decisions changed for images the export does not list).
    """
    names = (DEDUPLICATED_IMAGES.name, SAMPLE_WEIGHTS.name)
    v_dedup, v_weights = (last.inputs.get(n) for n in names)
    out_version = last.outputs.get(CURATED_DATASET.name)
    if v_dedup is None or v_weights is None or out_version is None or not candidates:
        return {}, set()
    previous: Mapping[str, Mapping[str, Any]] = last.summary.get("shards", {})
    ok = {
        s
        for s in candidates
        if s in previous and not (webdataset and previous[s].get("failures", 0))
    }
    for name, version in zip(names, (v_dedup, v_weights), strict=True):
        ok = same_base(store, name, version, ok)
    if not ok:
        return {}, set()
    shards = sorted(ok)
    left, bad = left_since(
        store,
        DEDUPLICATED_IMAGES,
        since=v_dedup,
        shards=shards,
        flag="kept",
        listed=lambda ids: store.read(
            CURATED_DATASET, shards=shards, version=out_version, keys=ids
        ),
    )
    tombs = changes_since(
        store, SAMPLE_WEIGHTS, since=v_weights, shards=shards, columns=["image_id", "shard"]
    )
    bad |= set(tombs.filter(~pl.col(DELETED))["shard"])  # a weight row changed otherwise
    drops: dict[str, pl.DataFrame] = {}
    unchanged: set[str] = set()
    for shard in shards:
        if shard in bad:
            continue
        mine = left.filter(pl.col("shard") == shard).sort("image_id")
        gone = set(tombs.filter(pl.col("shard") == shard)["image_id"])
        if gone != set(mine["image_id"]):  # weights and decisions disagree: a rewrite says how
            continue
        if not gone:
            unchanged.add(shard)
        elif len(gone) < int(previous[shard]["rows"]):  # a shard left empty is removed instead
            drops[shard] = mine
    return drops, unchanged


def export_drops(
    store: DeltaStore,
    out: Out,
    drops: Mapping[str, pl.DataFrame],
    *,
    shard_size: int,
    options: Mapping[str, str],
) -> dict[str, dict[str, Any]]:
    """Republish each shard of ``drops`` less its rows, then tombstone them in one commit.

    Returns:
        Shard → its commit entry (as :func:`~.run.export_shards` records them).

    Memory: a streaming batch of one manifest, one tar member, the dropped rows.
    """
    entries: dict[str, dict[str, Any]] = {}
    for key, rows in drops.items():
        files = rewrite_shard_files(
            out, key, set(rows["image_id"].to_list()), shard_size=shard_size, options=options
        )
        entries[key] = shard_entry(files["weight"], files)
    gone = pl.concat(list(drops.values())) if drops else CURATED_DATASET.empty()
    if gone.height:  # after every folder: a shard's files are never older than its rows
        store.append_changes(CURATED_DATASET, gone, deleted=True)
    return entries
