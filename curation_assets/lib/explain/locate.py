"""Finding a target (a path or an image id) in the ingest tables, shard first.

Ingest accounts for every enumerated input in exactly one of ``raw_images``, ``quarantine``
and ``exact_duplicates`` (all partitioned by shard), so those three tables say whether and
where a file was seen. What a lookup costs:

* **A path in a folder or tar shard** (``<source root>/<shard>/...``,
  ``<source root>/<shard>.tar#member``): the shard is the first path component under the
  source root, so each table is read in that one partition: cost ∝ one shard.
* **Any other path** (the images a manifest lists, e.g. ``_manifest_images/...``, or files
  outside the source root that a manifest may list): only manifest shards (``.csv`` /
  ``.parquet`` partitions) can hold it; their partitions are read with a ``source_uri``
  filter that also prunes files by min/max statistics: cost ∝ the manifest shards'
  ``source_uri`` column at most.
* **An image id** (sha256 hex, or a prefix of at least 8 characters): ids are content hashes,
  spread uniformly, so the min/max statistics of a file rarely exclude it; expect to read the
  ``image_id`` column of all three tables (~65 bytes per input, streamed by pyarrow, only
  matching rows kept). The partitions found are then the only ones later stages read.

Every read is recorded as a :class:`~curation_assets.lib.explain.snapshot.Source` (table,
version, files opened), so the trace shows what the lookup cost.
"""

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from curation_assets.lib.explain.snapshot import Filter, Snapshot, Source
from curation_assets.lib.shards import MANIFEST_SUFFIXES, SHARD_KEY_PATTERN
from curation_assets.lib.tables import DUPLICATE_FILES, QUARANTINE, RAW_IMAGES, TableSpec

IMAGE_ID = re.compile(r"^[0-9a-f]{8,64}$")
"""An image id or a prefix of one (at least 8 hex characters)."""

INGEST_TABLES: tuple[TableSpec, ...] = (RAW_IMAGES, QUARANTINE, DUPLICATE_FILES)


class TargetError(LookupError):
    """The target is unknown or ambiguous; the message says where it looked."""


@dataclass
class Found:
    """What the ingest tables hold about a target.

    Attributes:
        kind: ``path`` or ``image_id``.
        target: The target as given.
        uris: The source URIs looked for (a path's absolute and resolved forms).
        shards: Shards searched (None: every shard).
        how: How the shards were chosen, in words.
        raw: Matching ``raw_images`` rows.
        quarantine: Matching ``quarantine`` rows.
        duplicates: Matching ``exact_duplicates`` rows.
        sources: The reads made.
    """

    kind: str
    target: str
    uris: list[str]
    shards: list[str] | None
    how: str
    raw: pl.DataFrame
    quarantine: pl.DataFrame
    duplicates: pl.DataFrame
    sources: list[Source] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """True when no ingest table holds the target."""
        return self.raw.is_empty() and self.quarantine.is_empty() and self.duplicates.is_empty()


def path_forms(target: str) -> list[str]:
    """The source URIs a path may have been recorded under (absolute, resolved; ``#member``)."""
    head, sep, member = target.partition("#")
    absolute = os.path.abspath(os.path.expanduser(head))
    forms = [absolute, os.path.realpath(absolute)]
    return list(dict.fromkeys(f + sep + member for f in forms))


def layout_shard(uri: str, source_root: Path) -> str | None:
    """The shard a folder/tar path belongs to by layout: its first component under the root.

    None for paths outside the root, or under an entry discovery skips (``_x``, ``.x``) or
    that cannot be a shard key, e.g. the images a manifest lists under ``_manifest_images/``.
    """
    head = uri.partition("#")[0]
    try:
        rel = Path(head).relative_to(source_root)
    except ValueError:
        return None
    if not rel.parts:
        return None
    first = rel.parts[0]
    if first.startswith((".", "_")) or not SHARD_KEY_PATTERN.match(first):
        return None
    return first


def locate(snapshot: Snapshot, target: str, source_root: Path) -> Found:
    """Find ``target`` in the ingest tables of ``snapshot``.

    A target that is an existing path is a path; otherwise a hex string of 8..64 characters is
    an image id (or a prefix); anything else is a path that does not exist (it may still be
    recorded, e.g. a missing file a manifest listed).

    Raises:
        TargetError: If an id prefix matches several images.
    """
    head = target.partition("#")[0]
    if not os.path.exists(os.path.expanduser(head)) and IMAGE_ID.match(target):
        return _by_id(snapshot, target)
    return _by_path(snapshot, target, source_root.resolve())


def _by_path(snapshot: Snapshot, target: str, root: Path) -> Found:
    uris = path_forms(target)
    layout = {s for u in uris if (s := layout_shard(u, root)) is not None}
    if layout:
        shards = sorted(layout)
        how = f"shard {', '.join(shards)}: the path's first folder under the source root {root}"
    else:
        known: set[str] = set()
        for spec in INGEST_TABLES:
            known |= snapshot.shards(spec)
        shards = sorted(s for s in known if s.lower().endswith(MANIFEST_SUFFIXES))
        where = (
            f"under the source root {root} but in no folder or tar shard"
            if _inside(uris[0], root)
            else f"outside the source root {root}"
        )
        how = (
            f"the path is {where}; only a manifest can list it: searched the {len(shards)} "
            "manifest shard(s) "
            f"{', '.join(shards) or '(none ingested)'}"
        )
    found = _read(snapshot, [[("source_uri", "in", uris)]], shards, f"source_uri of {target}")
    return Found("path", target, uris, shards, how, *found)


def _inside(uri: str, root: Path) -> bool:
    try:
        Path(uri.partition("#")[0]).relative_to(root)
    except ValueError:
        return False
    return True


def _by_id(snapshot: Snapshot, target: str) -> Found:
    if len(target) == 64:
        where: list[Filter] = [("image_id", "=", target)]
    else:  # hex ids sort below "g": the prefix's range, which file statistics can prune
        where = [("image_id", ">=", target), ("image_id", "<", target + "g")]
    raw, quarantine, duplicates, sources = _read(snapshot, [where], None, f"image_id {target}")
    ids = set(raw["image_id"]) | set(duplicates["image_id"])
    ids |= {i for i in quarantine["image_id"] if i is not None}
    if len(ids) > 1:
        listed = ", ".join(sorted(ids)[:10])
        msg = f"image id prefix {target!r} matches {len(ids)} images ({listed}); give more of it"
        raise TargetError(msg)
    how = "image_id looked up in every shard of raw_images, quarantine and exact_duplicates"
    return Found("image_id", target, [], None, how, raw, quarantine, duplicates, sources)


def _read(
    snapshot: Snapshot, where: list[list[Filter]], shards: list[str] | None, scope: str
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, list[Source]]:
    frames, sources = [], []
    for spec in INGEST_TABLES:
        df, src = snapshot.read(spec, shards=shards, where=where, scope=scope)
        frames.append(df)
        sources.append(src)
    return frames[0], frames[1], frames[2], sources
